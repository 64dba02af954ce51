"""A slow plugin beside a healthy endpoint (issue #15 item 5), measured the
way a new user would try it: no CPU pinning, the gateway's defaults.

One gateway, one echo server (`wsgate echo`). `/healthy` has no message
plugin; `/slow` runs `test-faults` (fail open), whose `slow` answer spends
20 ms of CPU per call, well inside its 100 ms deadline. Each round measures
the healthy endpoint's round trip (`wsgate-bench load`, 1 connection, 1
message in flight) alone, then beside 8 connections sending `slow` over and
over (`wsgate-bench repeat`). Prints each round and the medians, as JSON
lines and a markdown table. Run it with `scripts/bench-slow-plugin`, which
builds what it needs; `--wsgate` and `--bench` measure other builds (the
configuration uses no key a gateway without offloading would refuse).
"""
import os
import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def cpu_busy(seconds: float = 1.0) -> float:
    """The machine's CPU use (0..1) over `seconds`, all cores."""
    def sample():
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return values[3] + values[4], sum(values)
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def quiet_machine(limit: float = 60.0) -> float:
    """Wait (up to `limit` s) for the machine to be at least 85 % idle; the
    last CPU use seen, reported beside the figures."""
    deadline = time.monotonic() + limit
    busy = cpu_busy()
    while busy > 0.15 and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


CONFIG = """
[gateway]
listen = "127.0.0.1:{port}"

[[plugin]]
name = "static-router"
version = "1.0.0"
path = "{plugins}/static_router.wasm"

[[plugin]]
name = "faults"
version = "1.0.0"
path = "{plugins}/test_faults.wasm"
grants = ["log", "clocks", "state"]

[[endpoint]]
path = "/healthy"
allowed-upstreams = ["ws://127.0.0.1:{echo}"]
upgrade = [{{ plugin = "static-router@1.0.0", config = {{ url = "ws://127.0.0.1:{echo}/" }} }}]

[[endpoint]]
path = "/slow"
allowed-upstreams = ["ws://127.0.0.1:{echo}"]
upgrade = [{{ plugin = "static-router@1.0.0", config = {{ url = "ws://127.0.0.1:{echo}/" }} }}]
client-messages = [{{ plugin = "faults@1.0.0", fail = "open" }}]
"""


def healthy(bench: Path, port: int, seconds: float) -> dict:
    out = subprocess.run(
        [bench, "load", "--url", f"ws://127.0.0.1:{port}/healthy", "--connections", "1",
         "--in-flight", "1", "--duration", str(seconds), "--warmup", "1"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def beside(bench: Path, port: int, seconds: float, clients: int) -> dict:
    slow = subprocess.Popen(
        [bench, "repeat", "--url", f"ws://127.0.0.1:{port}/slow", "--connections",
         str(clients), "--text", "slow"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert slow.stdout is not None and slow.stdin is not None
    opened = json.loads(slow.stdout.readline())
    assert opened.get("open") == clients, opened
    started = time.monotonic()
    result = healthy(bench, port, seconds)
    slow.stdin.close()
    tail = json.loads(slow.stdout.read().strip().splitlines()[-1])
    slow.wait(timeout=60)
    result["slow_round_trips_per_s"] = round(tail["round_trips"] / (time.monotonic() - started), 1)
    result["slow_failed_connections"] = tail["failed_connections"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wsgate", type=Path, default=TARGET / "dist/wsgate")
    parser.add_argument("--bench", type=Path, default=TARGET / "dist/wsgate-bench")
    parser.add_argument("--plugins", type=Path,
                        default=ROOT / "plugins/target/wasm32-wasip2/release")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    echo_port, port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="wsgate-slow-plugin-"))
    config = work / "host-config.toml"
    config.write_text(CONFIG.format(port=port, echo=echo_port, plugins=args.plugins.resolve()))
    log = open(work / "gateway.log", "w")
    echo = subprocess.Popen([args.wsgate, "echo", "--listen", f"127.0.0.1:{echo_port}"],
                            stderr=subprocess.DEVNULL)
    gateway = subprocess.Popen([args.wsgate, "run", "--config", config], stderr=log)
    rows = []
    try:
        wait_port(echo_port, echo)
        wait_port(port, gateway)
        for round_no in range(args.rounds):
            for case in ("alone", "beside"):
                busy = quiet_machine()
                if case == "alone":
                    result = healthy(args.bench, port, args.seconds)
                else:
                    result = beside(args.bench, port, args.seconds, args.clients)
                result.update(label=args.label, round=round_no, case=case,
                              cpu_busy_before=round(busy, 2))
                print(json.dumps(result), flush=True)
                rows.append(result)
    finally:
        gateway.terminate()
        echo.terminate()
        gateway.wait(timeout=30)
        echo.wait(timeout=30)

    print(f"\n| {args.label or 'build'} | p50 ms | p99 ms | max ms | healthy msg/s | slow round trips/s |")
    print("|---|---|---|---|---|---|")
    for case in ("alone", "beside"):
        of = [r for r in rows if r["case"] == case]
        med = lambda key: statistics.median(r[key] for r in of)
        slow = f"{med('slow_round_trips_per_s'):.0f}" if case == "beside" else "-"
        print(f"| {case} | {med('p50_us') / 1000:.2f} | {med('p99_us') / 1000:.2f} | "
              f"{med('max_us') / 1000:.1f} | {med('rate'):.0f} | {slow} |")
    alone = statistics.median(r["p99_us"] for r in rows if r["case"] == "alone")
    near = statistics.median(r["p99_us"] for r in rows if r["case"] == "beside")
    print(f"\np99 beside / p99 alone = {near / max(1, alone):.2f} (target: at most 2)")


if __name__ == "__main__":
    main()

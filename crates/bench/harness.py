"""The benchmark harness: wsgate side by side with nginx and HAProxy in front
of the same echo server, driven by `wsgate-bench`. Run it with
`scripts/bench` (which builds and installs what it needs).

Fairness: the proxy under test runs alone on one core (taskset), the load
generator and the echo server on the other; each run waits for a quiet
machine; rounds alternate the order of targets; figures are medians of the
rounds; CPU time is the proxy process's own (utime + stime, /proc).
Writes target/bench/results.csv (every run), summary.md (medians and
ratios) and chart.png.
"""
import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
# The `dist` profile (whole-program optimisation); `--profile debug` (the CI
# smoke run) sets these to the debug builds.
WSGATE = TARGET / "dist/wsgate"
BENCH = TARGET / "dist/wsgate-bench"
PLUGINS = ROOT / "plugins/target/wasm32-wasip2/release"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def quiet_machine(limit: float = 30.0) -> bool:
    """Wait until the machine is at least 90 % idle over half a second."""
    def sample():
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return values[3] + values[4], sum(values)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        idle0, total0 = sample()
        time.sleep(0.5)
        idle1, total1 = sample()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= 0.90:
            return True
    return False


def pinned(core: str, args: list, **kw) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", core, *map(str, args)], **kw)


GATEWAY = """
[gateway]
listen = "127.0.0.1:{port}"
read-buffer-size = "1KiB"
handshake-timeout = "10s"

[[plugin]]
name = "static-router"
version = "1.0.0"
path = "{plugins}/static_router.wasm"

[[plugin]]
name = "passthrough"
version = "1.0.0"
path = "{plugins}/passthrough.wasm"
memory-limit = "64MiB"

[[plugin]]
name = "size-limit"
version = "1.0.0"
path = "{plugins}/size_limit.wasm"
memory-limit = "64MiB"
grants = ["log"]

[[plugin]]
name = "json-mask"
version = "1.0.0"
path = "{plugins}/json_mask.wasm"
memory-limit = "64MiB"

[[plugin]]
name = "ip-filter"
version = "1.0.0"
path = "{plugins}/ip_filter.wasm"
grants = ["log"]

[[plugin]]
name = "header-rewrite"
version = "1.0.0"
path = "{plugins}/header_rewrite.wasm"
grants = ["state"]

[[remote-host]]
address = "127.0.0.1:{echo}"
max-connections = -1

[[endpoint]]
path = "/"
match = "prefix"
monitor = "{monitor}"
permessage-deflate = "{deflate}"
max-message-size = "1MiB"
allowed-upstreams = ["ws://127.0.0.1:{echo}"]
{chains}
"""
ROUTER = """
[[endpoint.upgrade]]
plugin = "static-router@1.0.0"
config = {{ url = "ws://127.0.0.1:{echo}/" }}
"""
PASSTHROUGH = """
[[endpoint.client-messages]]
plugin = "passthrough@1.0.0"
[[endpoint.upstream-messages]]
plugin = "passthrough@1.0.0"
"""
CHAIN3 = """
[[endpoint.upgrade]]
plugin = "ip-filter@1.0.0"
config = {{ allow = ["127.0.0.0/8"] }}
[[endpoint.upgrade]]
plugin = "header-rewrite@1.0.0"
config = {{ set = {{ "x-connection" = "${{connection-id}}" }} }}
""" + ROUTER + "".join(f"""
[[endpoint.{chain}]]
plugin = "{plugin}"
{config}""" for chain in ("client-messages", "upstream-messages") for plugin, config in (
    ("passthrough@1.0.0", ""),
    ("size-limit@1.0.0", 'config = {{ "max-bytes" = 1048576 }}'),
    ("json-mask@1.0.0", 'config = {{ fields = ["password"] }}'),
))

NGINX = """
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
error_log {dir}/nginx-error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-tmp;
    proxy_temp_path {dir}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{echo};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_buffer_size 128k;
            proxy_buffers 4 128k;
            proxy_busy_buffers_size 256k;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""
HAPROXY = """
global
    nbthread 1
    maxconn 9900
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend ws
    bind 127.0.0.1:{port}
    default_backend echo
backend echo
    server echo 127.0.0.1:{echo}
"""

# An OTLP/HTTP sink for the traced targets: answers every export 200 and
# counts the bytes, so the gateway's export costs what it would with a
# collector.
OTLP_SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


class Target:
    """A proxy (or none) in front of the echo server."""

    def __init__(self, name: str, out: Path, echo: int, proxy_core: str, load_core: str = ""):
        self.name, self.out, self.echo, self.core = name, out, echo, proxy_core
        self.load_core = load_core or proxy_core
        self.proc = self.sink = None
        self.port = echo

    def start(self) -> None:
        if self.name == "direct":
            return
        self.port = free_port()
        log = open(self.out / f"{self.name}.log", "w")
        if self.name == "nginx":
            (self.out / "nginx-tmp").mkdir(exist_ok=True)
            conf = self.out / "nginx.conf"
            conf.write_text(NGINX.format(dir=self.out, port=self.port, echo=self.echo))
            self.proc = pinned(self.core, ["nginx", "-c", conf, "-e", self.out / "nginx-error.log"], stdout=log, stderr=log)
        elif self.name == "haproxy":
            conf = self.out / "haproxy.cfg"
            conf.write_text(HAPROXY.format(port=self.port, echo=self.echo))
            self.proc = pinned(self.core, ["haproxy", "-f", conf], stdout=log, stderr=log)
        else:
            # wsgate+passthrough+shadow-R: the passthrough gateway with the
            # same configuration in its shadow, sampling R of the connections.
            # wsgate+passthrough+trace-R: traced ([tracing]), R of the
            # messages sampled, exported to an OTLP sink on the load's core.
            # wsgate+passthrough+monitor-LEVEL: the endpoint's traffic
            # monitor at LEVEL (metadata, full: history in memory).
            # wsgate+passthrough+workers-N: N I/O workers ([gateway] workers),
            # the gateway on every core (shared with the load and the echo server).
            base, _, workers = self.name.partition("+workers-")
            base, _, trace = base.partition("+trace-")
            base, _, shadow = base.partition("+shadow-")
            base, _, monitor = base.partition("+monitor-")
            chains = {"wsgate": ROUTER, "wsgate+passthrough": ROUTER + PASSTHROUGH, "wsgate+3-plugin-chains": CHAIN3,
                      "wsgate+deflate": ROUTER}[base]
            conf = self.out / f"{self.name}.toml"
            text = GATEWAY.format(port=self.port, echo=self.echo, plugins=PLUGINS,
                                  deflate="client" if base == "wsgate+deflate" else "off",
                                  monitor=monitor or "off",
                                  chains=chains.format(echo=self.echo))
            if workers:
                text = text.replace("[gateway]\n", f"[gateway]\nworkers = {int(workers)}\n", 1)
                self.core = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
            admin = free_port() if shadow else None
            if admin:
                text += f'\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
            if trace:
                sink = free_port()
                self.sink = pinned(self.load_core, [sys.executable, "-c", OTLP_SINK, str(sink)],
                                   stdout=log, stderr=log)
                wait_port(sink, self.sink)
                text += (f'\n[tracing]\notlp-endpoint = "http://127.0.0.1:{sink}/v1/traces"\n'
                         f'sample = {trace}\n')
            conf.write_text(text)
            self.proc = pinned(self.core, [WSGATE, "run", "--config", conf], stdout=log, stderr=log,
                               env={**os.environ, "RUST_LOG": "warn"})
            if admin:
                wait_port(admin, self.proc)
                subprocess.run([WSGATE, "deploy", "--shadow", "--sample", shadow, "--config", conf],
                               check=True, stdout=log, stderr=log)
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        # After the gateway: its last spans are sent at shutdown.
        if self.sink:
            self.sink.terminate()
            self.sink.wait(15)
            self.sink = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None


def bench(core: str, *args) -> dict:
    out = subprocess.run(["taskset", "-c", core, BENCH, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_quiet(workload: str):
    """W7-<pattern>-<connections>: (pattern, connections)."""
    _, pattern, connections = workload.split("-")
    if pattern not in ("spread", "burst", "broadcast"):
        raise ValueError(workload)
    return pattern, int(connections)


def run_quiet(workload: str, target: Target, core: str, seconds: float) -> dict:
    """W7: N connections, one 256 B message per connection per second, spread
    evenly, in aligned bursts, or broadcast by the upstream. The proxy's CPU
    time is read when the generator opens and closes its measured window (not
    over the N upgrades before it), its RSS before the connections open and
    when the window closes."""
    pattern, connections = parse_quiet(workload)
    pid = target.pid
    before = rss_kib(pid) if pid else 0
    common = ["--url", target.url, "--connections", connections, "--duration", seconds, "--warmup", 2, "--marks"]
    if target.name.endswith("+deflate"):
        # Offered by the client and agreed: the echoes come back compressed
        # (counted, not timed); what this target measures is memory.
        common.append("--deflate")
    if pattern == "broadcast":
        args = ["listen", *common]
    else:
        args = ["quiet", *common, "--size", 256, "--period", 1, "--pattern", pattern]
    proc = subprocess.Popen(["taskset", "-c", core, BENCH, *map(str, args)], stdout=subprocess.PIPE, text=True)
    marks, result = {}, None
    try:
        for line in proc.stdout:
            value = json.loads(line)
            if "mark" in value:
                marks[value["mark"]] = (cpu_seconds(pid) if pid else 0.0, rss_kib(pid) if pid else 0)
            else:
                result = value
    finally:
        if proc.poll() is None and result is None:
            proc.kill()
    if proc.wait() != 0 or result is None or len(marks) != 2:
        raise RuntimeError(f"{workload} on {target.name}: the generator failed")
    if pid:
        cpu = marks["stop"][0] - marks["measure"][0]
        count = result["messages"]
        result["proxy_cpu_us_per_msg"] = cpu * 1e6 / count if count else None
        result["kib_per_connection"] = (marks["stop"][1] - before) / connections
    return result


def run_workload(workload: str, target: Target, core: str, seconds: float) -> dict:
    pid = target.pid
    cpu0 = cpu_seconds(pid) if pid else 0.0
    if workload == "W1":
        r = bench(core, "load", "--url", target.url, "--connections", 64, "--size", 32, "--rate", 20000, "--duration", seconds)
    elif workload == "W2":
        r = bench(core, "load", "--url", target.url, "--connections", 64, "--size", 32, "--in-flight", 1, "--duration", seconds)
    elif workload == "W3":
        r = bench(core, "load", "--url", target.url, "--connections", 8, "--size", 65536, "--in-flight", 1, "--duration", seconds)
    elif workload == "W4":
        r = bench(core, "load", "--url", target.url, "--connections", 1, "--size", 32, "--in-flight", 1, "--duration", seconds)
    elif workload in MEMORY:
        # W5b: each connection echoes one message before it idles.
        echo_first = ["--echo-first"] if workload == "W5b" else []

        def open_idle(count: int) -> subprocess.Popen:
            idle = subprocess.Popen(["taskset", "-c", core, BENCH, "idle", "--url", target.url,
                                     "--connections", str(count), *echo_first],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            json.loads(idle.stdout.readline())
            time.sleep(1.0)  # let the proxy settle after the last upgrade
            return idle

        # With --memory-base, that many connections are opened first and
        # the growth is counted over the rest: what the proxy frees of its
        # start-up while connections arrive (an allocator returning it
        # late) is not subtracted from their cost.
        held = [open_idle(MEMORY_BASE)] if MEMORY_BASE else []
        connections = MEMORY_CONNECTIONS - MEMORY_BASE
        before = rss_kib(pid) if pid else 0
        held.append(open_idle(connections))
        after = rss_kib(pid) if pid else 0
        for idle in held:
            idle.stdin.close()
        for idle in held:
            idle.wait(60)
        r = {"connections": connections, "kib_per_connection": (after - before) / connections if pid else None}
    elif workload == "W6":
        r = bench(core, "upgrades", "--url", target.url, "--concurrency", 16, "--duration", seconds)
    elif workload.startswith("W7-"):
        return run_quiet(workload, target, core, seconds)
    else:
        raise ValueError(workload)
    if pid and workload not in MEMORY:
        cpu = cpu_seconds(pid) - cpu0
        count = r.get("messages") or r.get("upgrades") or 0
        # A message is counted once but crosses the proxy twice (there and back).
        r["proxy_cpu_us_per_msg"] = cpu * 1e6 / count if count else None
    return r


# Workloads measuring the proxy's memory, each on a fresh proxy process.
MEMORY = ("W5", "W5b")
# Idle connections the memory workloads open, and how many of them come
# before the first reading (--memory-base).
MEMORY_CONNECTIONS = 9000
MEMORY_BASE = 0
QUIET = [f"W7-{pattern}-{n}" for pattern in ("spread", "burst", "broadcast") for n in (1000, 8000)]


def fresh_process(workload: str) -> bool:
    return workload in MEMORY or workload.startswith("W7-")

PRIMARY = {
    "W1": ("proxy_cpu_us_per_msg", "CPU µs per message (proxy)"),
    "W2": ("rate", "messages/s"),
    "W3": ("rate", "messages/s"),
    "W4": ("p99_us", "p99 µs"),
    "W5": ("kib_per_connection", "KiB per idle connection"),
    "W5b": ("kib_per_connection", "KiB per connection idle after one echo"),
    "W6": ("rate", "upgrades/s"),
    **{w: ("proxy_cpu_us_per_msg", "CPU µs per message (proxy)") for w in QUIET},
}
EXTRA = {"W1": ["p50_us", "p99_us", "rate"], "W2": ["proxy_cpu_us_per_msg", "p99_us"], "W3": ["proxy_cpu_us_per_msg"],
         "W4": ["p50_us"], "W5": [], "W5b": [], "W6": ["p99_us"],
         **{w: ["p50_us", "p99_us", "p999_us", "kib_per_connection", "rate"] for w in QUIET}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5,W5b,W6," + ",".join(QUIET),
                        help="W1..W6, W7-{spread,burst,broadcast}-N, or W7 for the six of the table")
    parser.add_argument("--echo-core", choices=("load", "proxy"), default="load",
                        help="where the echo server runs: on the load generator's core or the proxy's")
    parser.add_argument("--memory-base", type=int, default=0,
                        help=f"W5/W5b: open this many of the {MEMORY_CONNECTIONS} idle connections before the "
                             "first memory reading, and count the growth per connection over the rest")
    parser.add_argument("--echo-binary",
                        help="the wsgate binary that runs the echo servers (default: the profile's, the one "
                             "under test); give one build's for an A/B of two builds, so the baseline's "
                             "upstream is the same in both")
    parser.add_argument("--targets", default="direct,nginx,haproxy,wsgate,wsgate+passthrough,wsgate+3-plugin-chains")
    parser.add_argument("--out", default=str(ROOT / "target/bench"))
    parser.add_argument("--profile", choices=("dist", "release", "debug"), default="dist",
                        help="which builds to run: dist (scripts/bench builds it), release (one you built, "
                             "for quick iterations), debug (the CI smoke run; figures not comparable)")
    args = parser.parse_args()
    global WSGATE, BENCH, MEMORY_BASE
    MEMORY_BASE = args.memory_base
    WSGATE, BENCH = TARGET / args.profile / "wsgate", TARGET / args.profile / "wsgate-bench"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.sched_getaffinity(0)
    proxy_core = str(max(cores))
    load_core = ",".join(str(c) for c in sorted(cores) if str(c) != proxy_core) or proxy_core
    echo_core = proxy_core if args.echo_core == "proxy" else load_core
    echo_port, broadcast_port = free_port(), free_port()
    echo_binary = Path(args.echo_binary) if args.echo_binary else WSGATE
    echo = pinned(echo_core, [echo_binary, "echo", "--listen", f"127.0.0.1:{echo_port}"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The broadcast workloads' upstream: one 256 B message to every connection each second.
    broadcast = pinned(echo_core, [echo_binary, "echo", "--listen", f"127.0.0.1:{broadcast_port}",
                                   "--broadcast-every-ms", 1000, "--broadcast-size", 256],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(echo_port, echo)
    wait_port(broadcast_port, broadcast)
    workloads = [w for item in args.workloads.split(",") for w in (QUIET if item == "W7" else [item])]
    names = args.targets.split(",")
    rows = []
    try:
        for round_ in range(1, args.rounds + 1):
            order = names if round_ % 2 else list(reversed(names))
            for name in order:
                target = Target(name, out, echo_port, proxy_core, load_core)
                target.start()
                try:
                    for index, workload in enumerate(workloads):
                        upstream = broadcast_port if workload.startswith("W7-broadcast") else echo_port
                        if (fresh_process(workload) and index > 0) or upstream != target.echo:
                            # RSS growth is measured on a fresh process: memory
                            # freed by an earlier workload would be reused unseen.
                            target.stop()
                            target.echo = upstream
                            target.port = upstream
                            target.start()
                        quiet = quiet_machine()
                        result = run_workload(workload, target, load_core, args.seconds)
                        row = {"round": round_, "workload": workload, "target": name, "quiet": quiet, **result}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                finally:
                    target.stop()
    finally:
        for server in (echo, broadcast):
            server.terminate()
            server.wait(10)

    keys = sorted({k for row in rows for k in row})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    def median(workload, target, key):
        values = [r[key] for r in rows if r["workload"] == workload and r["target"] == target and r.get(key) is not None]
        return statistics.median(values) if values else None

    lines = [f"Medians of {args.rounds} rounds, {args.seconds:g} s each; ratios to nginx in the same run; "
             f"echo server on the {args.echo_core} core; {args.profile} builds.", ""]
    lines.append("| workload | figure | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for workload in workloads:
        key, label = PRIMARY[workload]
        for k, l in [(key, label)] + [(e, e) for e in EXTRA[workload]]:
            base = median(workload, "nginx", k)
            cells = []
            for name in names:
                value = median(workload, name, k)
                if value is None:
                    cells.append("—")
                elif base and k == key:
                    cells.append(f"{value:,.1f} ({value / base:.2f}x)")
                else:
                    cells.append(f"{value:,.1f}")
            lines.append(f"| {workload} | {l} | " + " | ".join(cells) + " |")
    summary = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(summary)
    print(summary)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 4))
        for ax, workload in zip(axes if len(workloads) > 1 else [axes], workloads):
            key, label = PRIMARY[workload]
            values = [median(workload, n, key) or 0 for n in names]
            ax.bar(range(len(names)), values)
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{workload}: {label}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "chart.png", dpi=110)
    except ImportError:
        print("matplotlib not installed: no chart", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

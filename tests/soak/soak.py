"""Soak: many WebSocket connections through the gateway for a long time,
with mixed traffic (small JSON, binary up to 64 KiB, pings, compressed and
plain clients) and random abrupt disconnects on both sides (TCP aborted
without a close frame). Samples the gateway's resident memory and open file
descriptors, writes them to CSV, and says whether they stayed flat.

   python3 soak.py --gateway target/dist/wsgate --out target/soak \
       [--connections 1000] [--duration 600]
"""
import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import WebSocketException

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[gateway]
listen = "127.0.0.1:{gateway}"
read-buffer-size = "1KiB"
# Every soak client comes from 127.0.0.1 and they all connect at once.
max-pending-upgrades-per-ip = 4096

[[plugin]]
name = "static-router"
version = "1.0.0"
path = "{root}/plugins/target/wasm32-wasip2/release/static_router.wasm"

[[plugin]]
name = "passthrough"
version = "1.0.0"
path = "{root}/plugins/target/wasm32-wasip2/release/passthrough.wasm"

[[plugin]]
name = "json-mask"
version = "1.0.0"
path = "{root}/plugins/target/wasm32-wasip2/release/json_mask.wasm"

[[remote-host]]
address = "127.0.0.1:{upstream}"
max-connections = -1

# The monitor's memory ring is sized to fill within the first minute, so
# what the soak watches after that is the gateway, not the ring filling up.
[monitor]
memory-connections = 200
memory-frames = 100

[[endpoint]]
path = "/soak"
monitor = "metadata"
max-message-size = "1MiB"
permessage-deflate = "both"
allowed-upstreams = ["ws://127.0.0.1:{upstream}"]
client-messages = [{{ plugin = "json-mask@1.0.0", config = {{ fields = ["password"] }} }}, {{ plugin = "passthrough@1.0.0" }}]
upstream-messages = [{{ plugin = "passthrough@1.0.0" }}]

[[endpoint.upgrade]]
plugin = "static-router@1.0.0"
config = {{ url = "ws://127.0.0.1:{upstream}/" }}

[admin]
listen = "127.0.0.1:{admin}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


def abort(ws) -> None:
    """Drop the TCP connection without a close frame."""
    ws.transport.abort()


async def upstream_handler(ws, tally: Tally, rng: random.Random) -> None:
    try:
        async for message in ws:
            if rng.random() < 0.003:
                tally.add("upstream aborts")
                abort(ws)
                return
            await ws.send(message)
    except WebSocketException:
        pass


def message(rng: random.Random):
    kind = rng.random()
    if kind < 0.6:
        return json.dumps({"user": "u%d" % rng.randrange(1000), "password": "secret", "n": rng.random()})
    if kind < 0.9:
        return rng.randbytes(rng.randrange(1, 64 * 1024))
    return ("text " * rng.randrange(1, 2000)).strip()


async def client(url: str, stop: asyncio.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            compression = "deflate" if rng.random() < 0.5 else None
            async with connect(url, compression=compression, max_size=None, open_timeout=30) as ws:
                tally.add("connections")
                for _ in range(rng.randrange(1, 60)):
                    if stop.is_set():
                        break
                    if rng.random() < 0.05:
                        await (await ws.ping())
                        tally.add("pings")
                        continue
                    sent = message(rng)
                    await ws.send(sent)
                    echoed = await asyncio.wait_for(ws.recv(), 30)
                    if isinstance(sent, str) and '"password"' in sent:
                        ok = '"password":"***"' in echoed.replace(" ", "")
                    else:
                        ok = echoed == sent
                    tally.add("messages" if ok else "wrong echoes")
                    await asyncio.sleep(rng.uniform(0.05, 0.6))
                if rng.random() < 0.25 and not stop.is_set():
                    tally.add("client aborts")
                    abort(ws)
        except (WebSocketException, OSError, asyncio.TimeoutError) as error:
            tally.add("ended by " + type(error).__name__)
            await asyncio.sleep(rng.uniform(0.0, 0.2))


def sample(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def active(admin: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("wsgate_connections_active "):
                return int(float(line.split()[1]))
    return -1


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--interval", type=float, default=10)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tally = Tally()
    rng = random.Random(7)
    upstream = await serve(lambda ws: upstream_handler(ws, tally, rng), "127.0.0.1", 0,
                           compression="deflate", max_size=None)
    up_port = upstream.sockets[0].getsockname()[1]
    gw_port, admin_port = free_port(), free_port()
    config = out / "gateway.toml"
    config.write_text(CONFIG.format(gateway=gw_port, upstream=up_port, admin=admin_port, root=ROOT))
    log = open(out / "gateway.log", "w")
    gateway = subprocess.Popen([args.gateway, "run", "--config", str(config)], stdout=log, stderr=log)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", gw_port), timeout=1).close()
            break
        except OSError:
            await asyncio.sleep(0.1)
    start_rss, start_fds = sample(gateway.pid)

    stop = asyncio.Event()
    url = f"ws://127.0.0.1:{gw_port}/soak"
    clients = [asyncio.create_task(client(url, stop, tally, i)) for i in range(args.connections)]
    rows = [("seconds", "rss_kib", "fds", "active_connections")]
    rows.append((0, start_rss, start_fds, 0))
    began = time.monotonic()
    while (elapsed := time.monotonic() - began) < args.duration:
        await asyncio.sleep(min(args.interval, args.duration - elapsed))
        rss, fds = sample(gateway.pid)
        rows.append((round(time.monotonic() - began), rss, fds, active(admin_port)))
        print("t=%4ds rss=%6.1f MiB fds=%5d active=%5d %s" % (rows[-1][0], rss / 1024, fds, rows[-1][3],
              json.dumps(tally.counts, sort_keys=True)), flush=True)
    stop.set()
    await asyncio.wait(clients, timeout=60)
    for _ in range(600):
        if active(admin_port) == 0:
            break
        await asyncio.sleep(0.1)
    end_rss, end_fds = sample(gateway.pid)
    rows.append((round(time.monotonic() - began), end_rss, end_fds, active(admin_port)))
    gateway.terminate()
    gateway.wait(30)
    upstream.close()

    with open(out / "soak.csv", "w") as f:
        for row in rows:
            f.write(",".join(map(str, row)) + "\n")
    data = rows[1:]
    loaded = data[1:-1] or data
    # The first fifth is warm-up (pools, buffers and the monitor's ring
    # filling); flat means the second fifth and the last agree.
    fifth = max(1, len(loaded) // 5)
    first = loaded[fifth:2 * fifth] or loaded[:fifth]
    last = loaded[-fifth:]
    avg = lambda rs, i: sum(r[i] for r in rs) / len(rs)
    growth = avg(last, 1) / avg(first, 1)
    summary = {
        "connections": args.connections,
        "duration_s": args.duration,
        "counts": tally.counts,
        "rss_mib": {"idle_start": round(start_rss / 1024, 1), "second_fifth": round(avg(first, 1) / 1024, 1),
                    "last_fifth": round(avg(last, 1) / 1024, 1), "max": round(max(r[1] for r in data) / 1024, 1),
                    "after_all_closed": round(end_rss / 1024, 1)},
        "rss_last_over_second_fifth": round(growth, 3),
        "fds": {"idle_start": start_fds, "min_loaded": min(r[2] for r in loaded),
                "max_loaded": max(r[2] for r in loaded), "after_all_closed": end_fds},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    flat = growth < 1.10 and end_fds <= start_fds + 2 and tally.counts.get("wrong echoes", 0) == 0
    print("RSS and file descriptors held flat" if flat else "NOT FLAT (or wrong echoes)")
    return 0 if flat else 1


sys.exit(asyncio.run(main()))

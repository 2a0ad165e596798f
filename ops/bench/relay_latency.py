"""Relay latency benchmark: added per-frame latency of voicelog vs. a direct connection vs. nginx.

Realistic load: each session sends a 20 ms pcm16 24 kHz frame (as an `input_audio_buffer.append` event)
every 20 ms and the stand-in, in echo mode, sends every frame straight back, so each session also
receives the same rate. For each path (direct to the stand-in, through nginx as a plain WebSocket proxy,
through voicelog) and each concurrency it prints the round-trip p50/p99 and the latency added over the
direct path, plus the proxy's CPU seconds per session-minute. Figures are printed, never asserted.

    .venv/bin/python ops/bench/relay_latency.py [--sessions 1,50,200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop
from websockets.asyncio.client import connect

FRAME_MS = 20
FRAME_BYTES = 24000 * FRAME_MS // 1000 * 2
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_processes(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM them all (voicelog drains), give each `grace_s` to exit, then SIGKILL what is left."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


WARMUP_FRAMES = 2000 // FRAME_MS  # a session's first 2 s: its own set-up, and the other sessions' starting


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


@dataclass
class Result:
    rtts_ms: list[float]
    frames_sent: int
    frames_lost: int
    cpu_s: float
    steady_ms: list[float]  # only frames sent after each session's first WARMUP_FRAMES

    def pct(self, q: float) -> float:
        return percentile(self.rtts_ms, q)

    def steady_pct(self, q: float) -> float:
        return percentile(self.steady_ms, q)


async def one_session(url: str, seconds: float, rtts: list[float], counts: list[int], start_delay: float,
                      steady: list[float] | None = None) -> None:
    await asyncio.sleep(start_delay)
    audio = base64.b64encode(os.urandom(FRAME_BYTES)).decode()
    sent_at: dict[int, float] = {}
    async with connect(url, compression=None, max_size=8 * 1024 * 1024) as ws:
        async def reader() -> None:
            async for message in ws:
                now = time.perf_counter()
                seq = int(message[42:50])  # '{"type":"input_audio_buffer.append","id":"NNNNNNNN",...'
                sent = sent_at.pop(seq, None)
                if sent is not None:
                    rtts.append((now - sent) * 1000)
                    if steady is not None and seq >= WARMUP_FRAMES:
                        steady.append(rtts[-1])

        reading = asyncio.create_task(reader())
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        n = int(seconds * 1000 / FRAME_MS)
        for seq in range(n):
            delay = t0 + seq * FRAME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[seq] = time.perf_counter()
            await ws.send(f'{{"type":"input_audio_buffer.append","id":"{seq:08d}","audio":"{audio}"}}')
        await asyncio.sleep(0.5)
        counts[0] += n
        counts[1] += len(sent_at)
        reading.cancel()


def run_load(url: str, sessions: int, seconds: float, proxy: psutil.Process | None) -> Result:
    async def main() -> Result:
        rtts: list[float] = []
        steady: list[float] = []
        counts = [0, 0]
        cpu0 = proxy.cpu_times() if proxy else None
        await asyncio.gather(*(one_session(url, seconds, rtts, counts, i * FRAME_MS / 1000 / max(1, sessions),
                                           steady) for i in range(sessions)))
        cpu = 0.0
        if proxy and cpu0:
            cpu1 = proxy.cpu_times()
            cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            for child in proxy.children(recursive=True):
                cpu += sum(child.cpu_times()[:2])
        return Result(rtts, counts[0], counts[1], cpu, steady)

    return uvloop.run(main())


NGINX_CONF = """
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 600s;
            proxy_buffering off;
        }}
    }}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,50,200")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    counts = [int(x) for x in args.sessions.split(",")]
    work = Path(tempfile.mkdtemp(prefix="voicelog-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    voicelog = [sys.executable, "-m", "app.cli_main"]
    env = {**os.environ, "VOICELOG_DATA_DIR": str(work / "data"), "VOICELOG_STANDIN_ENABLED": "false",
           "VOICELOG_DEMO_RESOURCE": "false", "VOICELOG_LOG_LEVEL": "WARNING"}
    try:
        standin_port = free_port()
        procs.append(subprocess.Popen([*voicelog, "standin", "--port", str(standin_port)], env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(standin_port)
        subprocess.run([*voicelog, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
        subprocess.run([*voicelog, "resources", "add", "bench", "--region", "eastus", "--upstream",
                        f"ws://127.0.0.1:{standin_port}", "--tenant", "bench"], env=env, cwd=ROOT, check=True,
                       capture_output=True)
        relay_port = free_port()
        relay = subprocess.Popen([*voicelog, "serve", "--port", str(relay_port)], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(relay)
        wait_port(relay_port)

        nginx_bin = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        nginx_port = free_port()
        nginx: subprocess.Popen[bytes] | None = None
        if nginx_bin:
            conf = work / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=work, port=nginx_port, upstream=standin_port))
            nginx = subprocess.Popen([nginx_bin, "-c", str(conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(nginx)
            wait_port(nginx_port)

        query = "/voice-live/realtime?api-version=2026-07-15&x-standin-mode=echo"
        paths = {
            "direct": (f"ws://127.0.0.1:{standin_port}{query}", None),
            "nginx": (f"ws://127.0.0.1:{nginx_port}{query}", psutil.Process(nginx.pid) if nginx else None),
            "voicelog": (f"ws://127.0.0.1:{relay_port}/resources/bench{query}", psutil.Process(relay.pid)),
        }
        print(f"relay latency: {args.seconds:.0f} s per run, 20 ms pcm16 24 kHz frames each way, "
              f"{os.cpu_count()} cores, one voicelog process")
        print(f"{'sessions':>8} {'path':>9} {'rtt p50':>8} {'rtt p99':>8} {'added p50':>10} {'added p99':>10}"
              f" {'lost':>5} {'cpu s/session-min':>18}")
        for n in counts:
            direct: Result | None = None
            for name, (url, proc) in paths.items():
                if name == "nginx" and nginx is None:
                    print(f"{n:>8} {name:>9}  (nginx not installed)")
                    continue
                result = run_load(url, n, args.seconds, proc)
                if name == "direct":
                    direct = result
                added50 = result.pct(0.5) - direct.pct(0.5) if direct else float("nan")
                added99 = result.pct(0.99) - direct.pct(0.99) if direct else float("nan")
                cpu = result.cpu_s / (n * args.seconds / 60) if proc else float("nan")
                print(f"{n:>8} {name:>9} {result.pct(0.5):>7.2f}ms {result.pct(0.99):>7.2f}ms"
                      f" {added50 if name != 'direct' else 0:>9.2f}ms {added99 if name != 'direct' else 0:>9.2f}ms"
                      f" {result.frames_lost:>5} {cpu:>18.3f}", flush=True)
                time.sleep(1)
    finally:
        stop_processes(procs, 15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

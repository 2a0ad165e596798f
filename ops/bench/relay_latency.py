"""Relay latency benchmark: added per-frame latency of voicelog's two data planes vs. a direct connection vs. nginx.

Realistic load: each session sends a 20 ms pcm16 24 kHz frame (as an `input_audio_buffer.append` event)
every 20 ms and the stand-in, in echo mode, sends every frame straight back, so each session also
receives the same rate.

The apparatus (load generator and echo upstream) is, by default, `picows_apparatus.py`: both on picows'
compiled framing, driven from callbacks and timers. At 400 sessions the pure-Python `websockets` apparatus
(the `websockets` client here and `voicelog standin` in echo mode) took more than one of the machine's two
cores by itself, so the relay and nginx were measured on a saturated machine and the figures at 400 were
the apparatus's. `--apparatus websockets` (or `VOICELOG_BENCH_APPARATUS=websockets`, which the scripts that
import this load read too: relay_candidates, recording_overhead, scale_out) selects the old one; both send
the same frames on the same schedule and count the same way. For each concurrency it measures, in this order:

- `direct`: straight to the stand-in, the baseline every "added" figure is taken against;
- `nginx`: nginx as a plain WebSocket proxy, the anchor the voicelog figures are compared with;
- `voicelog-asgi`: voicelog serve with `VOICELOG_RELAY_DATA_PLANE=asgi` (uvicorn's WebSocket protocol, ASGI,
  the `websockets` client);
- `voicelog`: voicelog serve with `VOICELOG_RELAY_DATA_PLANE=direct` (the default: socket to socket in asyncio
  protocol callbacks).

The stand-in and nginx run for the whole benchmark. Each voicelog variant has its own data dir
(`<tmp>/asgi`, `<tmp>/direct`, migrated and given the resource `bench` once) and its process runs only for
its own measurement: started, its port and `/readyz` awaited, warmed up with one unmeasured 0.5 s session,
measured, stopped with SIGTERM; so only one voicelog process is ever up, and each measurement has a fresh one.

For each path it prints the round-trip p50/p99, the latency added over the direct path, frames lost and the
proxy's CPU seconds per session-minute (the process and its children), over the whole run and in the steady
state (`STEADY_CPU_FROM_S`); for each voicelog measurement also
the event loop lag voicelog reported during it (`voicelog_event_loop_lag_seconds` from `/metrics`, a
100 ms timer, scraped before and after the run): timer firings more than 10 ms and 50 ms late out of all,
and the largest lag to the histogram's bucket resolution ('<=25ms'). After the table, a ratios block: for
each concurrency, each voicelog variant's CPU per session-minute divided by nginx's from the same run, and
its added p99 next to nginx's. Figures are printed, never asserted.

    .venv/bin/python ops/bench/relay_latency.py [--sessions 1,50,200,400] [--seconds 10] [--planes asgi,direct]
        [--workers 2]   # N worker processes per voicelog, each variant on a fresh PostgreSQL database
        [--apparatus picows|websockets]   # default: $VOICELOG_BENCH_APPARATUS, else picows
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop
from websockets.asyncio.client import connect

FRAME_MS = 20
FRAME_BYTES = 24000 * FRAME_MS // 1000 * 2
ROOT = Path(__file__).resolve().parents[2]
VOICELOG = [sys.executable, "-m", "app.cli_main"]
QUERY = "/voice-live/realtime?api-version=2026-07-15&x-standin-mode=echo"
PLANES = ("asgi", "direct")
PATH_NAME = {"asgi": "voicelog-asgi", "direct": "voicelog"}  # the table's name for each data plane
APPARATUSES = ("picows", "websockets")
APPARATUS = os.environ.get("VOICELOG_BENCH_APPARATUS", "picows")
"""Which load generator and echo upstream `one_session`, `run_load`, `warm_up` and `start_standin` use; read
here so the scripts importing them switch with the variable; `--apparatus` sets it for this script."""
if APPARATUS not in APPARATUSES:
    raise SystemExit(f"VOICELOG_BENCH_APPARATUS takes {' or '.join(APPARATUSES)}; got {APPARATUS!r}")
PICOWS_APPARATUS = Path(__file__).with_name("picows_apparatus.py")


def parse_planes(value: str) -> list[str]:
    """`--planes asgi,direct`: which voicelog data planes to run, in the order given."""
    planes = [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in planes if p not in PLANES]
    if unknown or not planes:
        raise argparse.ArgumentTypeError(f"--planes takes a list of {', '.join(PLANES)}; got {value!r}")
    return planes


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
            proc.wait()


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def wait_ready(port: int, timeout: float = 20) -> None:
    """Until voicelog's `/readyz` answers 200 (relay up, resources loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"voicelog on port {port} did not become ready")


def voicelog_env(work: Path, plane: str | None, **extra: str) -> dict[str, str]:
    """The environment of one voicelog variant: its own data dir `work/<plane>` and its data plane (None: the
    stand-in's, data dir `work/standin`)."""
    env = {**os.environ, "VOICELOG_DATA_DIR": str(work / (plane or "standin")), "VOICELOG_STANDIN_ENABLED": "false",
           "VOICELOG_DEMO_RESOURCE": "false", "VOICELOG_LOG_LEVEL": "WARNING",
           # Every bench session comes from 127.0.0.1, as through a proxy on the host: the per-address bounds
           # would refuse a burst of 400 handshakes. Capacity is measured here, not admission: no session limit.
           "VOICELOG_SERVER__CONNECTION_LIMIT_EXEMPT": '["127.0.0.1/32"]', "VOICELOG_RELAY_MAX_SESSIONS": "100000",
           "VOICELOG_RELAY_BUSY_LOOP_LAG_S": "3600", **extra}
    if plane is not None:
        env["VOICELOG_RELAY_DATA_PLANE"] = plane
    return env


def prepare_voicelog(env: dict[str, str], upstream_port: int, resources: dict[str, str], root: Path = ROOT) -> None:
    """`db upgrade`, then `resources add <name> --tenant <tenant>` for each, all pointing at the stand-in. `root`:
    the checkout whose code runs (`python -m app.cli_main` imports from its working directory)."""
    subprocess.run([*VOICELOG, "db", "upgrade"], env=env, cwd=root, check=True, capture_output=True)
    for name, tenant in resources.items():
        subprocess.run([*VOICELOG, "resources", "add", name, "--region", "eastus", "--upstream",
                        f"ws://127.0.0.1:{upstream_port}", "--tenant", tenant], env=env, cwd=root, check=True,
                       capture_output=True)


def start_voicelog(env: dict[str, str], port: int, root: Path = ROOT) -> subprocess.Popen[bytes]:
    """`serve` on `port` from the checkout `root`; returns once it is ready, plus a second to let its start-up
    work settle."""
    proc = subprocess.Popen([*VOICELOG, "serve", "--port", str(port)], env=env, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        wait_ready(port)
    except BaseException:
        stop_processes([proc], 5)
        raise
    time.sleep(1)
    return proc


def scrape_metrics(port: int) -> str:
    """voicelog's `/metrics` (Prometheus text; served without authentication)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def loop_lag_buckets(port: int) -> dict[float, float]:
    """voicelog's `voicelog_event_loop_lag_seconds` histogram: cumulative counts by upper bound, summed over
    its workers (with several, each sample has a `worker` label)."""
    buckets: dict[float, float] = {}
    pattern = (r'^voicelog_event_loop_lag_seconds_bucket\{(?:worker="[^"]*",)?le="([^"]+)"(?:,worker="[^"]*")?\} '
               r'([0-9.e+]+)$')
    for le, n in re.findall(pattern, scrape_metrics(port), re.MULTILINE):
        buckets[float(le)] = buckets.get(float(le), 0.0) + float(n)
    return buckets


def late_share(before: dict[float, float], after: dict[float, float], bound: float) -> str:
    """Timer firings between the two scrapes that were later than `bound`, as 'n/total'."""
    if not after:
        return "n/a"
    total = after[math.inf] - before.get(math.inf, 0.0)
    within = after[bound] - before.get(bound, 0.0)
    return f"{total - within:.0f}/{total:.0f}"


def worst_lag(before: dict[float, float], after: dict[float, float]) -> str:
    """The bucket the latest timer firing between the two scrapes fell into, e.g. '<=25ms' or '>1000ms'."""
    if not after:
        return "n/a"
    total = after[math.inf] - before.get(math.inf, 0.0)
    bounds = sorted(after)
    for i, bound in enumerate(bounds):
        if after[bound] - before.get(bound, 0.0) >= total:
            if math.isinf(bound):
                return f">{bounds[i - 1] * 1000:.0f}ms"
            return f"<={bound * 1000:g}ms"
    return "n/a"


WARMUP_FRAMES = 2000 // FRAME_MS  # a session's first 2 s: its own set-up, and the other sessions' starting
STEADY_CPU_FROM_S = 4.0
"""The steady-state CPU window opens this long after the load starts (every session started, and up to 100
recordings per worker: a worker starts at most 50 a second; `steady_from` for more) and closes 0.5 s before the
first session's last frame, so neither the starting burst nor the sessions' ends (recordings' final seals, rows
closed) are in it. Calls last minutes, not the run's seconds: the whole-run figure overweights what each session
costs once."""


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
    steady_cpu_s: float = math.nan  # CPU seconds within the steady window (STEADY_CPU_FROM_S)
    steady_window_s: float = math.nan

    def cpu_per_session_min(self, sessions: int, seconds: float) -> float:
        return self.cpu_s / (sessions * seconds / 60)

    def steady_cpu_per_session_min(self, sessions: int) -> float:
        return self.steady_cpu_rate * 60 / sessions

    @property
    def steady_cpu_rate(self) -> float:
        """CPU seconds per second within the steady window."""
        return self.steady_cpu_s / self.steady_window_s

    def pct(self, q: float) -> float:
        return percentile(self.rtts_ms, q)

    def steady_pct(self, q: float) -> float:
        return percentile(self.steady_ms, q)


async def one_session(url: str, seconds: float, rtts: list[float], counts: list[int], start_delay: float,
                      steady: list[float] | None = None) -> None:
    """One session of the load on the chosen apparatus: after `start_delay`, a frame every FRAME_MS for
    `seconds`, each echo's round trip in ms into `rtts` (and `steady` after WARMUP_FRAMES); 0.5 s after the last
    frame, frames sent into counts[0] and those still unanswered into counts[1]; then a normal close."""
    if APPARATUS == "picows":
        import picows_apparatus  # here, not at the top: it takes the load's constants from this module

        await picows_apparatus.run_session(url, seconds, rtts, counts, start_delay, steady)
    else:
        await websockets_session(url, seconds, rtts, counts, start_delay, steady)


async def websockets_session(url: str, seconds: float, rtts: list[float], counts: list[int], start_delay: float,
                             steady: list[float] | None = None) -> None:
    """`one_session` on the `websockets` client (pure-Python framing, a reader task per session)."""
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


def cpu_by_pid(proc: psutil.Process) -> dict[int, float]:
    """User + system CPU seconds of `proc` and each of its (recursive) children, by pid."""
    result: dict[int, float] = {}
    for p in (proc, *proc.children(recursive=True)):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        result[p.pid] = times.user + times.system
    return result


def warm_up(url: str) -> None:
    """One short session through a freshly started relay, not measured: its first connection's one-off work
    (lazy imports, first upstream connection) is then not in the first measured run's p99."""
    uvloop.run(one_session(url, 0.5, [], [0, 0], 0.0))


def steady_from(sessions: int, workers: int) -> float:
    """When the steady window may open with `sessions` recorded over `workers`: every recording started (each
    worker starts at most 50 a second), with a second to spare."""
    return max(STEADY_CPU_FROM_S, sessions / (50 * max(1, workers)) + 1)


def divide(numerator: float, denominator: float) -> float:
    """numerator / denominator, or nan where there is no denominator (CPU times tick in 10 ms)."""
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


def run_load(url: str, sessions: int, seconds: float, proxy: psutil.Process | None,
             steady_from_s: float = STEADY_CPU_FROM_S) -> Result:
    async def main() -> Result:
        rtts: list[float] = []
        steady: list[float] = []
        counts = [0, 0]
        cpu0 = cpu_by_pid(proxy) if proxy else {}
        window = [math.nan, math.nan]  # steady CPU seconds, window length

        async def steady_window() -> None:
            if proxy is None or seconds - 0.5 - steady_from_s < 2:
                return  # too short a run for a window
            loop = asyncio.get_running_loop()
            start = loop.time()
            await asyncio.sleep(steady_from_s)
            opened, before = loop.time(), await asyncio.to_thread(cpu_by_pid, proxy)
            await asyncio.sleep(start + seconds - 0.5 - loop.time())
            after = await asyncio.to_thread(cpu_by_pid, proxy)
            window[:] = [sum(t - before.get(pid, 0.0) for pid, t in after.items()), loop.time() - opened]

        await asyncio.gather(steady_window(), *(one_session(url, seconds, rtts, counts,
                                                            i * FRAME_MS / 1000 / max(1, sessions), steady)
                                                for i in range(sessions)))
        cpu = 0.0
        if proxy:  # only what each process (e.g. nginx's worker, a child of its master) spent during this run
            cpu = sum(t - cpu0.get(pid, 0.0) for pid, t in cpu_by_pid(proxy).items())
        return Result(rtts, counts[0], counts[1], cpu, steady, window[0], window[1])

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


@dataclass
class Row:
    result: Result
    cpu_per_session_min: float  # nan for the direct path
    added99: float


def times_nginx(ratio: float) -> str:
    """A ratio against nginx's CPU as the table prints it: n/a where there is none (nginx's CPU read 0, or the run
    was too short for a steady window)."""
    return "n/a" if math.isnan(ratio) else f"x{ratio:.2f}"


def print_ratios(rows: dict[tuple[int, str], Row], counts: list[int], planes: list[str], have_nginx: bool) -> None:
    """Each voicelog variant against nginx measured in the same run: CPU ratio, and added p99 side by side."""
    print()
    print("ratios (anchor: nginx in this run; cpu = CPU s per session-minute, added = p99 over direct)")
    if not have_nginx:
        print("  n/a: nginx is not installed, so this run has no anchor")
        return
    print(f"{'sessions':>8} {'path':>13} {'cpu / nginx cpu':>16} {'steady cpu / nginx':>19} {'added p99':>10}"
          f" {'nginx added p99':>16}")
    for n in counts:
        nginx = rows.get((n, "nginx"))
        for plane in planes:
            name = PATH_NAME[plane]
            row = rows.get((n, name))
            if row is None or nginx is None:
                continue
            # CPU times tick in 10 ms: a short run at one session can leave nginx at 0, then there is no ratio
            ratio = times_nginx(divide(row.cpu_per_session_min, nginx.cpu_per_session_min))
            steady = times_nginx(divide(row.result.steady_cpu_rate, nginx.result.steady_cpu_rate))
            print(f"{n:>8} {name:>13} {ratio:>16} {steady:>19} {row.added99:>8.2f}ms"
                  f" {nginx.added99:>14.2f}ms", flush=True)


def start_standin(work: Path, procs: list[subprocess.Popen[bytes]]) -> int:
    """The echoing upstream every bench relays to, on a free port (added to `procs` to be stopped): picows'
    echo, or `voicelog standin` (echo mode per session, by the URL's `x-standin-mode=echo`)."""
    port = free_port()
    if APPARATUS == "picows":
        command = [sys.executable, str(PICOWS_APPARATUS), "echo", "--port", str(port)]
    else:
        command = [*VOICELOG, "standin", "--port", str(port)]
    procs.append(subprocess.Popen(command, env=voicelog_env(work, None), cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_port(port)
    return port


def start_nginx(work: Path, upstream_port: int, procs: list[subprocess.Popen[bytes]]
                ) -> tuple[subprocess.Popen[bytes], int] | None:
    """nginx as a plain WebSocket proxy to `upstream_port`, the anchor of every ratio, and its port; None when
    nginx is not installed."""
    nginx_bin = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not nginx_bin:
        return None
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=port, upstream=upstream_port))
    nginx = subprocess.Popen([nginx_bin, "-c", str(conf), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(nginx)
    wait_port(port)
    return nginx, port


def main() -> None:
    global APPARATUS  # the module's switch that one_session and start_standin read; --apparatus sets it
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,50,200,400")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--planes", type=parse_planes, default=list(PLANES),
                        help="voicelog data planes to measure, comma-separated (default asgi,direct)")
    parser.add_argument("--workers", type=int, default=1,
                        help="voicelog worker processes (VOICELOG_WORKERS); more than 1 runs each variant on its "
                        "own fresh PostgreSQL database at 127.0.0.1:5432 (SQLite takes one worker)")
    parser.add_argument("--apparatus", choices=APPARATUSES, default=APPARATUS,
                        help="load generator and echo upstream: picows (compiled framing) or websockets "
                        "(default: $VOICELOG_BENCH_APPARATUS, else picows)")
    args = parser.parse_args()
    APPARATUS = args.apparatus
    counts = [int(x) for x in args.sessions.split(",")]
    planes: list[str] = args.planes
    work = Path(tempfile.mkdtemp(prefix="voicelog-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        standin_port = start_standin(work, procs)
        envs = {plane: voicelog_env(work, plane, **postgres_env(work, plane, args.workers)) for plane in planes}
        for env in envs.values():
            prepare_voicelog(env, standin_port, {"bench": "bench"})
        nginx, nginx_port = start_nginx(work, standin_port, procs) or (None, 0)

        print(f"relay latency: {args.seconds:.0f} s per run, 20 ms pcm16 24 kHz frames each way, "
              f"{os.cpu_count()} cores; voicelog data planes: {', '.join(planes)}, "
              f"{args.workers} worker process(es) each, "
              f"started for its own runs only; apparatus: {APPARATUS}")
        print(f"{'sessions':>8} {'path':>13} {'rtt p50':>8} {'rtt p99':>8} {'added p50':>10} {'added p99':>10}"
              f" {'lost':>5} {'cpu s/session-min':>18} {'steady cpu':>11} {'loop >10 ms':>12} {'loop >50 ms':>12}"
              f" {'loop max':>9}")
        rows: dict[tuple[int, str], Row] = {}
        for n in counts:
            direct: Result | None = None
            for name in ("direct", "nginx", *(PATH_NAME[p] for p in planes)):
                lag = ""
                relay: subprocess.Popen[bytes] | None = None
                if name == "direct":
                    url, proc = f"ws://127.0.0.1:{standin_port}{QUERY}", None
                elif name == "nginx":
                    if nginx is None:
                        print(f"{n:>8} {name:>13}  (nginx not installed)")
                        continue
                    url, proc = f"ws://127.0.0.1:{nginx_port}{QUERY}", psutil.Process(nginx.pid)
                else:
                    plane = next(p for p in planes if PATH_NAME[p] == name)
                    relay_port = free_port()
                    relay = start_voicelog(envs[plane], relay_port)
                    procs.append(relay)
                    url, proc = f"ws://127.0.0.1:{relay_port}/resources/bench{QUERY}", psutil.Process(relay.pid)
                    warm_up(url)
                    lag_before = loop_lag_buckets(relay_port)
                result = run_load(url, n, args.seconds, proc)
                if relay is not None:
                    lag_after = loop_lag_buckets(relay_port)
                    lag = (f" {late_share(lag_before, lag_after, 0.01):>12}"
                           f" {late_share(lag_before, lag_after, 0.05):>12} {worst_lag(lag_before, lag_after):>9}")
                    stop_processes([relay], 15)
                    procs.remove(relay)
                if name == "direct":
                    direct = result
                added50 = result.pct(0.5) - direct.pct(0.5) if direct else math.nan
                added99 = result.pct(0.99) - direct.pct(0.99) if direct else math.nan
                cpu = result.cpu_per_session_min(n, args.seconds) if proc else math.nan
                rows[(n, name)] = Row(result, cpu, added99)
                print(f"{n:>8} {name:>13} {result.pct(0.5):>7.2f}ms {result.pct(0.99):>7.2f}ms"
                      f" {added50:>8.2f}ms {added99:>8.2f}ms"
                      f" {result.frames_lost:>5} {cpu:>18.3f}"
                      f" {result.steady_cpu_per_session_min(n) if proc else math.nan:>11.3f}{lag}", flush=True)
                time.sleep(1)
        print_ratios(rows, counts, planes, nginx is not None)
    finally:
        stop_processes(procs, 15)
        shutil.rmtree(work, ignore_errors=True)
        if args.workers > 1:
            for plane in planes:
                drop_database(bench_database(plane))


def bench_database(plane: str) -> str:
    return f"voicelog_bench_relay_{plane}_{os.getpid()}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_env(work: Path, plane: str, workers: int) -> dict[str, str]:
    """With several workers: a fresh PostgreSQL database for this variant and the settings a non-embedded
    deployment needs (as in scale_out.py). One worker keeps the embedded SQLite default."""
    if workers <= 1:
        return {}
    import psycopg

    name = bench_database(plane)
    drop_database(name)
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    home = work / plane
    return {"VOICELOG_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
            "VOICELOG_REGIONS": json.dumps([{"name": "eastus", "blob_backend": "local",
                                             "blob_path": str(home / "blobs")}]),
            "VOICELOG_ADMIN_TOKEN": secrets.token_urlsafe(16), "VOICELOG_IDENTITY__DEV_ISSUER_ENABLED": "true",
            "VOICELOG_IDENTITY__DEV_ISSUER_KEY_DIR": str(home / "dev-issuer"),
            "VOICELOG_VAULT__LOCAL_KEYRING_DIR": str(home / "keyring"),
            "VOICELOG_VAULT__LOCAL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
            "VOICELOG_WORKERS": str(workers)}


if __name__ == "__main__":
    main()

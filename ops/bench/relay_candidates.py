"""Relay candidates: voicelog's direct data plane against minimal relays on WebSocket libraries and nginx, one run.

Issue 17 asks for the data plane's candidates to be measured against each other in one run. Each candidate
relay carries the same load as in `relay_latency.py` (whose load generator, stand-in, nginx set-up and
measurement functions this script imports): every session sends a 20 ms pcm16 24 kHz frame (as an
`input_audio_buffer.append` event) every 20 ms, the stand-in in echo mode sends it straight back. For each
session count, in this order:

- `direct`: straight to the stand-in, the baseline every "added" figure is taken against;
- `nginx`: nginx as a plain WebSocket proxy (one worker process), the anchor of the ratios block;
- `voicelog`: `voicelog serve` with `VOICELOG_RELAY_DATA_PLANE=direct` (one process, SQLite);
- the minimal relays in `ops/bench/candidates/` (see `_common.py` there: accept on `/resources/<name>/...`,
  one upstream WebSocket per session, frames relayed both ways byte-identical, close propagated; no
  recording, admission or metrics), each one process on uvloop:
  `websockets` (pure-Python framing both sides), `aiohttp` (its compiled frame reader both sides),
  `picows` (Cython framing both sides, callbacks only), `granian` (Rust server side over RSGI, aiohttp client
  to the upstream; skipped if granian is not installed).

Every relay (voicelog and the candidates) is started fresh for its own measurement, its port awaited, warmed up
with one unmeasured 0.5 s session, measured, and stopped; only one relay is ever up. nginx and the stand-in run
throughout. For each it prints the round-trip p50/p99, the latency added over `direct`, frames lost and the
relay's CPU seconds per session-minute (the process and its children, during the measured run only) and its CPU
seconds per second while idle just before (voicelog's timers and housekeeping are part of its figure; the
minimal relays have none, which weighs most at 50 sessions); then a ratios block: each relay's CPU per
session-minute divided by nginx's from the same run, its added p50/p99 beside nginx's. Figures are printed,
never asserted; run it on an otherwise idle machine (the load generator, the stand-in and the relay share the
cores).

    .venv/bin/python ops/bench/relay_candidates.py [--sessions 50,200] [--seconds 10]
        [--candidates voicelog,websockets,aiohttp,picows,granian]   # also: picows-uvloop

The default (2 session counts, 7 paths each, 10 s runs) takes about 4-5 minutes. The candidates' libraries are
in the `bench` extra: `.venv/bin/pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import psutil
from relay_latency import (
    QUERY,
    Result,
    cpu_by_pid,
    free_port,
    prepare_voicelog,
    run_load,
    start_nginx,
    start_standin,
    start_voicelog,
    stop_processes,
    voicelog_env,
    wait_port,
    warm_up,
)

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES_DIR = Path(__file__).resolve().parent / "candidates"
# name -> (script in ops/bench/candidates/, the module it needs, its extra arguments); voicelog is started by
# relay_latency's helpers
SCRIPTS: dict[str, tuple[str, str, list[str]]] = {
    "websockets": ("websockets_relay.py", "websockets", []),
    "aiohttp": ("aiohttp_relay.py", "aiohttp", []),
    "picows": ("picows_relay.py", "picows", []),
    "granian": ("granian_relay.py", "granian", []),
    # not in the default run: picows' framing on uvloop's transports (as voicelog's direct plane uses), without
    # aiofastnet, to tell the framing's share from the transport's
    "picows-uvloop": ("picows_relay.py", "picows", ["--no-aiofastnet"]),
}
CANDIDATES = ("voicelog", *SCRIPTS)
DEFAULT_CANDIDATES = ["voicelog", "websockets", "aiohttp", "picows", "granian"]
IDLE_S = 2.0  # how long each proxy's idle CPU is measured, after its warm-up and before its measured run
RELAY_PATH = "/resources/bench"  # every relay is reached as voicelog is: /resources/<name> + the stand-in's path


def parse_candidates(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--candidates takes a list of {', '.join(CANDIDATES)}; got {value!r}")
    return names


def start_candidate(name: str, port: int, standin_port: int, log: Path) -> subprocess.Popen[bytes]:
    """One candidate relay on `port`, relaying to the stand-in, its output to `log` (a file, never a pipe that
    could fill and stall it); returns once its port is open."""
    script, _, extra = SCRIPTS[name]
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, str(CANDIDATES_DIR / script), "--port", str(port),
                                 "--upstream", f"ws://127.0.0.1:{standin_port}", *extra], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
    except BaseException:
        stop_processes([proc], 5)
        raise
    return proc


def warm_up_until_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """`warm_up` (one unmeasured 0.5 s session), retried while the relay is still starting (granian's port opens
    before its worker has loaded the app)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            warm_up(url)
            return
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def failure_text(proc: subprocess.Popen[bytes] | None, error: BaseException, log: Path) -> str:
    """The error and, if the relay died, the last line of its output."""
    text = (f"{type(error).__name__}: {error}".splitlines() or [""])[0][:100]
    if proc is not None and proc.poll() is not None:
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        text += f" (relay exited {proc.returncode}{': ' + lines[-1][:200] if lines else ''})"
    return text


def print_ratios(rows: dict[tuple[int, str], tuple[float, float, float]], counts: list[int],
                 names: list[str]) -> None:
    """Each relay against nginx from the same run: CPU ratio, added p50/p99 beside nginx's."""
    print()
    print("ratios (anchor: nginx in this run; cpu = CPU s per session-minute, added = over direct)")
    print(f"{'sessions':>8} {'relay':>13} {'cpu / nginx cpu':>16} {'added p50':>10} {'added p99':>10}"
          f" {'nginx added p50':>16} {'nginx added p99':>16}")
    for n in counts:
        nginx = rows.get((n, "nginx"))
        if nginx is None:
            print(f"{n:>8}  n/a: no nginx figure at this count, so no anchor")
            continue
        for name in names:
            row = rows.get((n, name))
            if row is None:
                continue
            cpu, added50, added99 = row
            # CPU times tick in 10 ms: a very short run can leave nginx at 0, then there is no ratio
            ratio = f"x{cpu / nginx[0]:.2f}" if nginx[0] else "n/a (nginx 0)"
            print(f"{n:>8} {name:>13} {ratio:>16} {added50:>8.2f}ms {added99:>8.2f}ms"
                  f" {nginx[1]:>14.2f}ms {nginx[2]:>14.2f}ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="50,200", help="session counts, comma-separated (default 50,200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured run (default 10)")
    parser.add_argument("--candidates", type=parse_candidates, default=DEFAULT_CANDIDATES,
                        help=f"relays to measure besides direct and nginx, of {', '.join(CANDIDATES)} "
                        f"(default {','.join(DEFAULT_CANDIDATES)})")
    args = parser.parse_args()
    counts = [int(x) for x in args.sessions.split(",")]
    names: list[str] = []
    for name in args.candidates:
        if name in SCRIPTS and importlib.util.find_spec(SCRIPTS[name][1]) is None:
            print(f"{name}: not installed (`.venv/bin/pip install -e '.[bench]'`), skipped")
        else:
            names.append(name)
    work = Path(tempfile.mkdtemp(prefix="voicelog-bench-candidates-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        standin_port = start_standin(work, procs)
        env = voicelog_env(work, "direct")
        if "voicelog" in names:
            prepare_voicelog(env, standin_port, {"bench": "bench"})
        nginx, nginx_port = start_nginx(work, standin_port, procs) or (None, 0)

        print(f"relay candidates: {args.seconds:g} s per run, 20 ms pcm16 24 kHz frames each way, "
              f"{os.cpu_count()} cores, load {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
              f"relays: {', '.join(names)}, one process each, started for its own run only")
        print(f"{'sessions':>8} {'relay':>13} {'rtt p50':>8} {'rtt p99':>8} {'added p50':>10} {'added p99':>10}"
              f" {'lost':>6} {'cpu s/session-min':>18} {'idle cpu s/s':>13}")
        rows: dict[tuple[int, str], tuple[float, float, float]] = {}
        for n in counts:
            direct: Result | None = None
            for name in ("direct", "nginx", *names):
                relay: subprocess.Popen[bytes] | None = None
                log = work / f"{name}-{n}.log"
                try:
                    if name == "direct":
                        url, proc = f"ws://127.0.0.1:{standin_port}{QUERY}", None
                    elif name == "nginx":
                        if nginx is None:
                            print(f"{n:>8} {name:>13}  (nginx not installed)")
                            continue
                        url, proc = f"ws://127.0.0.1:{nginx_port}{QUERY}", psutil.Process(nginx.pid)
                    else:
                        port = free_port()
                        if name == "voicelog":
                            relay = start_voicelog(env, port)
                        else:
                            relay = start_candidate(name, port, standin_port, log)
                        procs.append(relay)
                        url, proc = f"ws://127.0.0.1:{port}{RELAY_PATH}{QUERY}", psutil.Process(relay.pid)
                        warm_up_until_ready(url, relay)
                    idle = math.nan
                    if proc is not None:  # what the proxy spends with no session (timers, housekeeping)
                        before = sum(cpu_by_pid(proc).values())
                        time.sleep(IDLE_S)
                        idle = (sum(cpu_by_pid(proc).values()) - before) / IDLE_S
                    result = run_load(url, n, args.seconds, proc)
                except Exception as error:
                    print(f"{n:>8} {name:>13}  failed: {failure_text(relay, error, log)}", flush=True)
                    if os.environ.get("BENCH_TRACEBACK"):
                        traceback.print_exc()
                    continue
                finally:
                    if relay is not None:
                        stop_processes([relay], 15)
                        procs.remove(relay)
                if name == "direct":
                    direct = result
                added50 = result.pct(0.5) - direct.pct(0.5) if direct else math.nan
                added99 = result.pct(0.99) - direct.pct(0.99) if direct else math.nan
                cpu = result.cpu_per_session_min(n, args.seconds) if proc else math.nan
                if proc:
                    rows[(n, name)] = (cpu, added50, added99)
                print(f"{n:>8} {name:>13} {result.pct(0.5):>7.2f}ms {result.pct(0.99):>7.2f}ms"
                      f" {added50:>8.2f}ms {added99:>8.2f}ms {result.frames_lost:>6} {cpu:>18.3f} {idle:>13.4f}",
                      flush=True)
                time.sleep(1)
        print_ratios(rows, counts, names)
    finally:
        stop_processes(procs, 15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

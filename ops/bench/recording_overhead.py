"""Recording overhead: N real-time sessions through voicelog, recording off vs on, per relay data plane, in one run.

Each session sends a 20 ms pcm16 24 kHz frame every 20 ms and the stand-in echoes it, so both
directions carry real-time audio. For each data plane chosen with `--planes` (default `asgi,direct`, in that
order; `VOICELOG_RELAY_DATA_PLANE`), a voicelog process with its own data dir (`<tmp>/asgi`, `<tmp>/direct`)
serves two resources: one without consent (pure relay) and one under an active consent (every frame
recorded, sealed, stored in the local store). That process runs only for its plane's two measurements:
started, its port and `/readyz` awaited, the consent given, `plain` then `recorded` measured (each after an
unmeasured 0.5 s warm-up session), stopped with SIGTERM; the stand-in runs throughout, so only one voicelog
process is ever up.

For each plane and mode it prints round-trip p50/p99, the p99 of the steady state (frames sent after each
session's first 2 s, so the burst of sessions starting is left out), the relay's CPU seconds per
session-minute over the whole run and in the steady state (`steady_from`: every recording started, none
ended; calls last minutes, and the whole-run figure overweights what a session costs once), the recorder's
backlog (bytes held in memory) during the run, which must not grow, the relay
process's peak RSS, and how often its event loop was more than 10 ms and 50 ms late
(`voicelog_event_loop_lag_seconds` from `/metrics`, a 100 ms timer). Then, per plane, what recording adds
(p99, steady p99, CPU ratio), the backlog 3 s after the run (which must be back to 0) and the bytes sealed in
the local store (the warm-up session's 0.5 s included), per recorded session-minute beside the raw pcm16 audio's
size; and, with both planes, the direct plane against the asgi one per mode
(CPU ratio, p99 and steady p99 difference). Figures are printed, never asserted.

With `--baseline <checkout>` (e.g. `git worktree add /tmp/vl-base <commit>`), that checkout's code is
measured too, in the same run and with the same stand-in, before this one's: each of its planes is printed as
`base-<plane>`, and then this checkout against it per plane and mode (CPU ratio, p99 difference, and what
recording adds in each). The baseline runs on this checkout's interpreter and packages.

    .venv/bin/python ops/bench/recording_overhead.py [--sessions 200] [--seconds 20] [--planes asgi,direct]
                                                     [--baseline /tmp/vl-base] [--workers 2]

`--watch-every S` reads the backlog and RSS every S seconds instead of 0.5 (each read scrapes `/metrics`, a
render on every worker's event loop: a longer interval measures the relay as a production scrape interval leaves
it, the peak backlog more coarsely).

With `--workers N` (N > 1) each voicelog runs N worker processes on its own fresh PostgreSQL database at
127.0.0.1:5432 (as `relay_latency.py --workers`); the backlog is summed over the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from relay_latency import (
    PLANES,
    QUERY,
    ROOT,
    VOICELOG,
    Result,
    bench_database,
    divide,
    drop_database,
    free_port,
    late_share,
    loop_lag_buckets,
    parse_planes,
    postgres_env,
    prepare_voicelog,
    run_load,
    scrape_metrics,
    start_standin,
    start_voicelog,
    steady_from,
    stop_processes,
    voicelog_env,
    warm_up,
)

MODES = ("plain", "recorded")
WARM_UP_S = 0.5  # `warm_up`'s unmeasured session, recorded too
RAW_PCM_PER_MINUTE = 24_000 * 2 * 2 * 60  # pcm16 at 24 kHz, both directions, one minute


def http(method: str, url: str, token: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - loopback only
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        result: dict[str, object] = json.loads(response.read() or b"{}")
        return result


def backlog_bytes(port: int) -> float:
    """Bytes the recorder holds in memory, summed over the workers (each worker's sample has a `worker` label
    when there are several)."""
    found = re.findall(r"^voicelog_recorder_backlog_bytes(?:\{[^}]*\})? ([0-9.e+]+)$", scrape_metrics(port),
                       re.MULTILINE)
    return sum(float(value) for value in found) if found else float("nan")


def rss(process: psutil.Process) -> float:
    """Resident memory of voicelog: the process and, with several workers, every worker under it."""
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += each.memory_info().rss
    return total


def give_consent(env: dict[str, str], port: int, root: Path = ROOT) -> None:
    """A ticket for the resource `recorded` and the customer admin's consent to it, as the API takes them."""
    def token(subject: str, role: str, tenant: str | None = None) -> str:
        extra = ["--tenant", tenant] if tenant else []
        out = subprocess.run([*VOICELOG, "dev", "token", "--as", subject, "--role", role, *extra], env=env,
                             cwd=root, check=True, capture_output=True, text=True)
        return out.stdout.strip().splitlines()[-1]

    base = f"http://127.0.0.1:{port}"
    ticket = http("POST", f"{base}/tickets", token("ticketing", "ticketing"),
                  {"resource": "recorded", "external_ref": "INC-BENCH"})
    http("POST", f"{base}/customer/resources/recorded/consents", token("admin", "customer_admin", "bench-tenant"),
         {"ticket_id": ticket["id"]})
    time.sleep(1.5)  # the consent cache reloads every 0.5 s


def measure_plane(plane: str, env: dict[str, str], port: int, work: Path,
                  args: argparse.Namespace, root: Path = ROOT) -> dict[str, Result]:
    """Start this plane's voicelog (from the checkout `root`), give the consent, measure `plain` then
    `recorded`, stop it. `plane` is the variant's label and its data dir's name."""
    relay = start_voicelog(env, port, root)
    try:
        give_consent(env, port, root)
        process = psutil.Process(relay.pid)
        results: dict[str, Result] = {}
        for mode in MODES:
            url = f"ws://127.0.0.1:{port}/resources/{mode}{QUERY}"
            warm_up(url)
            peak = [0.0, 0.0]  # recorder backlog, relay RSS
            stop = threading.Event()

            def watch(peak: list[float] = peak, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], backlog_bytes(port))
                    peak[1] = max(peak[1], rss(process))
                    stop.wait(args.watch_every)

            watcher = threading.Thread(target=watch, daemon=True)
            lag_before = loop_lag_buckets(port)
            watcher.start()
            result = run_load(url, args.sessions, args.seconds, process, steady_from(args.sessions, args.workers))
            stop.set()
            watcher.join()
            lag_after = loop_lag_buckets(port)
            results[mode] = result
            cpu = result.cpu_per_session_min(args.sessions, args.seconds)
            print(f"{plane:>6} {mode:>9} {result.pct(0.5):>7.2f}ms {result.pct(0.99):>7.2f}ms "
                  f"{result.steady_pct(0.99):>8.2f}ms {cpu:>18.3f} "
                  f"{result.steady_cpu_per_session_min(args.sessions):>11.3f} {peak[0] / 1024:>9.0f} KiB "
                  f"{peak[1] / 2**20:>10.0f} MiB {late_share(lag_before, lag_after, 0.01):>13} "
                  f"{late_share(lag_before, lag_after, 0.05):>13}", flush=True)
            time.sleep(3)
        plain, recorded = results["plain"], results["recorded"]
        cpu_ratio = divide(recorded.cpu_s, plain.cpu_s)
        steady_ratio = divide(recorded.steady_cpu_rate, plain.steady_cpu_rate)
        time.sleep(3)  # the last sessions' final segments are appended within a tick or two of their end
        stored = sum(p.stat().st_size for p in (work / plane / "blobs").rglob("*") if p.is_file())
        backlog_after = backlog_bytes(port)
        recorded_minutes = (args.sessions * args.seconds + WARM_UP_S) / 60
        print(f"{plane:>6} recording adds: p99 {recorded.pct(0.99) - plain.pct(0.99):+.2f} ms, steady p99 "
              f"{recorded.steady_pct(0.99) - plain.steady_pct(0.99):+.2f} ms, "
              f"CPU x{cpu_ratio:.2f} ({(cpu_ratio - 1) * 100:+.0f}%), steady CPU x{steady_ratio:.2f} "
              f"({(steady_ratio - 1) * 100:+.0f}%); "
              f"backlog after the run: {backlog_after / 1024:.0f} KiB; "
              f"stored: {stored / 1024 / 1024:.1f} MiB sealed in the local store, "
              f"{stored / recorded_minutes / 2**20:.2f} MiB per recorded session-minute (the raw pcm16 audio both "
              f"ways: {RAW_PCM_PER_MINUTE / 2**20:.2f} MiB; the frames carry it base64 in JSON events)", flush=True)
        return results
    finally:
        stop_processes([relay], 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--planes", type=parse_planes, default=list(PLANES),
                        help="voicelog data planes to measure, comma-separated (default asgi,direct)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. a git worktree of an earlier commit) measured in the same run")
    parser.add_argument("--watch-every", type=float, default=0.5,
                        help="seconds between reads of the backlog and RSS during a run (default 0.5); each read is "
                        "a /metrics scrape, which every worker renders on its event loop (about 6 ms), so 0.5 s "
                        "adds a little to the p99 of both modes that a production scrape every 15-30 s does not")
    parser.add_argument("--workers", type=int, default=1,
                        help="voicelog worker processes (VOICELOG_WORKERS); more than 1 runs each variant on its "
                        "own fresh PostgreSQL database at 127.0.0.1:5432 (SQLite takes one worker)")
    args = parser.parse_args()
    planes: list[str] = args.planes
    # (label, data plane, checkout): the baseline's variants first, then this checkout's.
    variants = [(f"base-{p}", p, args.baseline.resolve()) for p in planes] if args.baseline else []
    variants += [(p, p, ROOT) for p in planes]
    work = Path(tempfile.mkdtemp(prefix="voicelog-recbench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        standin_port = start_standin(work, procs)
        setups: dict[str, tuple[dict[str, str], int]] = {}
        for label, plane, root in variants:
            port = free_port()
            env = voicelog_env(work, plane, VOICELOG_PORT=str(port), VOICELOG_CONSENT_REFRESH_S="0.5",
                               VOICELOG_DATA_DIR=str(work / label), **postgres_env(work, label, args.workers))
            prepare_voicelog(env, standin_port, dict.fromkeys(MODES, "bench-tenant"), root)
            setups[label] = (env, port)

        print(f"recording overhead: {args.sessions} sessions x {args.seconds:.0f} s, 20 ms pcm16 24 kHz frames "
              f"each way, {os.cpu_count()} cores; data planes: {', '.join(planes)}, one voicelog of {args.workers} "
              f"worker process(es) each, "
              f"started for its own runs only" + (f"; baseline: {args.baseline}" if args.baseline else ""))
        print(f"{'plane':>6} {'mode':>9} {'rtt p50':>8} {'rtt p99':>8} {'steady p99':>10} {'cpu s/session-min':>18} "
              f"{'steady cpu':>11} {'backlog max':>12} {'relay RSS max':>14} {'loop >10 ms':>13} {'loop >50 ms':>13}")
        results: dict[str, dict[str, Result]] = {}
        for label, _, root in variants:
            env, port = setups[label]
            results[label] = measure_plane(label, env, port, work, args, root)
        if "asgi" in results and "direct" in results:
            print("direct data plane against asgi:")
            for mode in MODES:
                old, new = results["asgi"][mode], results["direct"][mode]
                ratio = divide(new.cpu_s, old.cpu_s)
                print(f"  {mode:>9}: CPU x{ratio:.2f}, p99 {new.pct(0.99) - old.pct(0.99):+.2f} ms, steady p99 "
                      f"{new.steady_pct(0.99) - old.steady_pct(0.99):+.2f} ms", flush=True)
        for plane in planes if args.baseline else []:
            base, this = results[f"base-{plane}"], results[plane]
            print(f"{plane} against base-{plane}:")
            for mode in MODES:
                old, new = base[mode], this[mode]
                ratio = divide(new.cpu_s, old.cpu_s)
                steady = divide(new.steady_cpu_rate, old.steady_cpu_rate)
                print(f"  {mode:>9}: CPU x{ratio:.2f}, steady CPU x{steady:.2f}, p99 "
                      f"{new.pct(0.99) - old.pct(0.99):+.2f} ms, steady p99 "
                      f"{new.steady_pct(0.99) - old.steady_pct(0.99):+.2f} ms", flush=True)
            for name, result in (("base", base), ("this", this)):
                plain, recorded = result["plain"], result["recorded"]
                added = divide(recorded.cpu_s, plain.cpu_s)
                steady_added = divide(recorded.steady_cpu_rate, plain.steady_cpu_rate)
                print(f"  recording adds ({name}): CPU {(added - 1) * 100:+.0f}%, steady CPU "
                      f"{(steady_added - 1) * 100:+.0f}%, p99 "
                      f"{recorded.pct(0.99) - plain.pct(0.99):+.2f} ms, steady p99 "
                      f"{recorded.steady_pct(0.99) - plain.steady_pct(0.99):+.2f} ms", flush=True)
    finally:
        stop_processes(procs, 30)
        shutil.rmtree(work, ignore_errors=True)
        if args.workers > 1:
            for label, _, _ in variants:
                drop_database(bench_database(label))


if __name__ == "__main__":
    main()

"""What a Prometheus scrape costs the calls a pod relays: N real-time sessions through one voicelog of several
worker processes, with /metrics scraped every `--every` seconds and without, per checkout, in one run.

A scrape reaches one worker through the shared port, and that worker answers for every worker of the pod
(app/server/merged_metrics.py); whatever it does on its event loop meanwhile delays the frames of every call it
relays. For each checkout (`--baseline <checkout>` first, e.g. `git worktree add /tmp/vl-base <commit>`, then this
one) a voicelog of `--workers` workers runs on its own fresh PostgreSQL database; the stand-in echoes each frame.
It prints, per checkout and mode (`quiet`: no scrape during the run; `scraped`: a scrape every `--every` s), the
round-trip p50/p99 and the steady p99 (as relay_latency.py), the scrapes' wall time (p50 and max), the
exposition's size, the workers the scrapes left out (`voicelog_metrics_worker_unreachable`) and the scrapes that
failed; then what scraping adds to the p99 per checkout, and this checkout's scrape time against the
baseline's. Figures are printed, never asserted. Run it with nothing else on the machine.

    .venv/bin/python ops/bench/metrics_scrape.py [--sessions 200] [--seconds 15] [--workers 2] [--every 0.5]
                                                 [--baseline /tmp/vl-base]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from relay_latency import (
    QUERY,
    ROOT,
    Result,
    bench_database,
    drop_database,
    free_port,
    postgres_env,
    prepare_voicelog,
    run_load,
    start_standin,
    start_voicelog,
    stop_processes,
    voicelog_env,
    warm_up,
)

MODES = ("quiet", "scraped")


UNREACHABLE = "voicelog_metrics_worker_unreachable{"


def scrape(port: int) -> tuple[float, int, int]:
    """One /metrics scrape: its wall time in ms, the exposition's size in bytes, and how many workers it left out
    (a scrape that left a worker out did less work: it is counted, so a fast one is not taken for a cheap one)."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    took = (time.perf_counter() - started) * 1000
    left_out = sum(float(line.rsplit(" ", 1)[1]) > 0 for line in body.splitlines() if line.startswith(UNREACHABLE))
    return took, len(body), left_out


def scrape_until(port: int, every: float, stop: threading.Event, times: list[float], tally: list[int]) -> None:
    """Scrape every `every` s until `stop`: each wall time into `times`; into `tally` the last size, the workers
    left out and the scrapes that failed (each counted, never ending the loop)."""
    while not stop.wait(every):
        try:
            took, tally[0], left_out = scrape(port)
        except OSError:
            tally[2] += 1
            continue
        times.append(took)
        tally[1] += left_out


def measure(label: str, env: dict[str, str], root: Path, args: argparse.Namespace
            ) -> dict[str, tuple[Result, list[float], int]]:
    port = free_port()
    relay = start_voicelog(env, port, root)
    try:
        url = f"ws://127.0.0.1:{port}/resources/bench{QUERY}"
        results: dict[str, tuple[Result, list[float], int]] = {}
        for mode in MODES:
            warm_up(url)
            times: list[float] = []
            tally = [0, 0, 0]  # size, workers left out, failed scrapes
            stop = threading.Event()
            scraper = threading.Thread(target=scrape_until, args=(port, args.every, stop, times, tally), daemon=True)
            if mode == "scraped":
                scraper.start()
            try:
                result = run_load(url, args.sessions, args.seconds, None)
            finally:
                stop.set()
                if mode == "scraped":
                    scraper.join()
            results[mode] = (result, times, tally[0])
            scrapes = (f"{statistics.median(times):>9.2f}ms {max(times):>8.2f}ms {tally[0] / 1024:>7.0f} KiB"
                       f" {tally[1]:>9} {tally[2]:>7}" if times else f"{'-':>11} {'-':>10} {'-':>11} {'-':>9} {'-':>7}")
            print(f"{label:>6} {mode:>8} {result.pct(0.5):>7.2f}ms {result.pct(0.99):>7.2f}ms "
                  f"{result.steady_pct(0.99):>8.2f}ms {scrapes}", flush=True)
            time.sleep(2)
        return results
    finally:
        stop_processes([relay], 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the voicelog (at least 2)")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between scrapes in the scraped mode")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. a git worktree of an earlier commit) measured in the same run")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers must be at least 2: one worker answers a scrape with its own registry only")
    variants = [("base", args.baseline.resolve())] if args.baseline else []
    variants.append(("this", ROOT))
    work = Path(tempfile.mkdtemp(prefix="voicelog-scrapebench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        standin_port = start_standin(work, procs)
        envs = {}
        for label, root in variants:
            envs[label] = voicelog_env(work, "direct", VOICELOG_DATA_DIR=str(work / label),
                                       **postgres_env(work, label, args.workers))
            prepare_voicelog(envs[label], standin_port, {"bench": "bench"}, root)
        print(f"metrics scrape: {args.sessions} sessions x {args.seconds:.0f} s, 20 ms pcm16 24 kHz frames each way, "
              f"{os.cpu_count()} cores; one voicelog of {args.workers} workers per checkout, /metrics every "
              f"{args.every} s in the scraped mode" + (f"; baseline: {args.baseline}" if args.baseline else ""))
        print(f"{'':>6} {'mode':>8} {'rtt p50':>8} {'rtt p99':>8} {'steady p99':>10} {'scrape p50':>11} "
              f"{'scrape max':>10} {'exposition':>11} {'left out':>9} {'failed':>7}")
        results = {label: measure(label, envs[label], root, args) for label, root in variants}
        for label, by_mode in results.items():
            (quiet, _, _), (scraped, _, _) = by_mode["quiet"], by_mode["scraped"]
            print(f"{label}: scraping adds p99 {scraped.pct(0.99) - quiet.pct(0.99):+.2f} ms, steady p99 "
                  f"{scraped.steady_pct(0.99) - quiet.steady_pct(0.99):+.2f} ms")
        old, new = results["base"]["scraped"][1] if "base" in results else [], results["this"]["scraped"][1]
        if old and new:  # a mode whose scrapes all failed has no times to compare
            print(f"this against base: scrape p50 x{statistics.median(new) / statistics.median(old):.2f}, "
                  f"max x{max(new) / max(old):.2f}")
    finally:
        stop_processes(procs, 30)
        shutil.rmtree(work, ignore_errors=True)
        for label, _ in variants:
            drop_database(bench_database(label))


if __name__ == "__main__":
    main()

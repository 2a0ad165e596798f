"""Recording overhead: N real-time sessions through one relay, recording off vs on, in one run.

Each session sends a 20 ms pcm16 24 kHz frame every 20 ms and the stand-in echoes it, so both
directions carry real-time audio. The same relay process serves two resources: one without consent
(pure relay) and one under an active consent (every frame recorded, sealed, stored in the local
store). Prints round-trip p50/p99, the p99 of the steady state (frames sent after each session's first
2 s, so the burst of sessions starting is left out), the latency recording adds, the relay's CPU seconds
per session-minute for each, the ratio, and the recorder's backlog (bytes held in memory) during and after
the run, which must not grow, the relay process's peak RSS, and how often its event loop was more than
10 ms and 50 ms late (`voicelog_event_loop_lag_seconds`, a 100 ms timer). Figures are printed, never
asserted.

    .venv/bin/python ops/bench/recording_overhead.py [--sessions 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from relay_latency import ROOT, Result, free_port, run_load, stop_processes, wait_port


def http(method: str, url: str, token: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - loopback only
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        result: dict[str, object] = json.loads(response.read() or b"{}")
        return result


def backlog_bytes(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^voicelog_recorder_backlog_bytes ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def loop_lag_buckets(port: int) -> dict[float, float]:
    """The relay's `voicelog_event_loop_lag_seconds` histogram: cumulative counts by upper bound."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {float(le): float(n) for le, n in
            re.findall(r'^voicelog_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', text, re.MULTILINE)}


def late_share(before: dict[float, float], after: dict[float, float], bound: float) -> str:
    """Timer firings during the run that were later than `bound`, as 'n/total'."""
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    within = after[bound] - before.get(bound, 0.0)
    return f"{total - within:.0f}/{total:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="voicelog-recbench-"))
    voicelog = [sys.executable, "-m", "app.cli_main"]
    relay_port, standin_port = free_port(), free_port()
    env = {**os.environ, "VOICELOG_DATA_DIR": str(work / "data"), "VOICELOG_STANDIN_ENABLED": "false",
           "VOICELOG_DEMO_RESOURCE": "false", "VOICELOG_LOG_LEVEL": "WARNING", "VOICELOG_PORT": str(relay_port),
           "VOICELOG_CONSENT_REFRESH_S": "0.5"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([*voicelog, "standin", "--port", str(standin_port)], env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(standin_port)
        subprocess.run([*voicelog, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
        for name in ("plain", "recorded"):
            subprocess.run([*voicelog, "resources", "add", name, "--region", "eastus", "--upstream",
                            f"ws://127.0.0.1:{standin_port}", "--tenant", "bench-tenant"],
                           env=env, cwd=ROOT, check=True, capture_output=True)
        relay = subprocess.Popen([*voicelog, "serve", "--port", str(relay_port)], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(relay)
        wait_port(relay_port)

        def token(subject: str, role: str, tenant: str | None = None) -> str:
            extra = ["--tenant", tenant] if tenant else []
            out = subprocess.run([*voicelog, "dev", "token", "--as", subject, "--role", role, *extra], env=env,
                                 cwd=ROOT, check=True, capture_output=True, text=True)
            return out.stdout.strip().splitlines()[-1]

        base = f"http://127.0.0.1:{relay_port}"
        ticket = http("POST", f"{base}/tickets", token("ticketing", "ticketing"),
                      {"resource": "recorded", "external_ref": "INC-BENCH"})
        http("POST", f"{base}/customer/resources/recorded/consents", token("admin", "customer_admin", "bench-tenant"),
             {"ticket_id": ticket["id"]})
        time.sleep(1.5)  # the consent cache reloads every 0.5 s

        process = psutil.Process(relay.pid)
        query = "/voice-live/realtime?api-version=2026-07-15&x-standin-mode=echo"
        print(f"recording overhead: {args.sessions} sessions x {args.seconds:.0f} s, 20 ms pcm16 24 kHz frames "
              f"each way, {os.cpu_count()} cores")
        print(f"{'mode':>9} {'rtt p50':>8} {'rtt p99':>8} {'steady p99':>10} {'cpu s/session-min':>18} "
              f"{'backlog max':>12} {'relay RSS max':>14} {'loop >10 ms':>13} {'loop >50 ms':>13}")
        results: dict[str, Result] = {}
        for mode in ("plain", "recorded"):
            peak = [0.0, 0.0]  # recorder backlog, relay RSS
            stop = threading.Event()

            def watch(peak: list[float] = peak, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], backlog_bytes(relay_port))
                    peak[1] = max(peak[1], process.memory_info().rss)
                    stop.wait(0.5)

            watcher = threading.Thread(target=watch, daemon=True)
            lag_before = loop_lag_buckets(relay_port)
            watcher.start()
            result = run_load(f"ws://127.0.0.1:{relay_port}/resources/{mode}{query}", args.sessions, args.seconds,
                              process)
            stop.set()
            watcher.join()
            lag_after = loop_lag_buckets(relay_port)
            results[mode] = result
            cpu = result.cpu_s / (args.sessions * args.seconds / 60)
            print(f"{mode:>9} {result.pct(0.5):>7.2f}ms {result.pct(0.99):>7.2f}ms {result.steady_pct(0.99):>8.2f}ms "
                  f"{cpu:>18.3f} {peak[0] / 1024:>9.0f} KiB {peak[1] / 2**20:>10.0f} MiB "
                  f"{late_share(lag_before, lag_after, 0.01):>13} {late_share(lag_before, lag_after, 0.05):>13}",
                  flush=True)
            time.sleep(3)
        plain, recorded = results["plain"], results["recorded"]
        print(f"recording adds: p99 {recorded.pct(0.99) - plain.pct(0.99):+.2f} ms, steady p99 "
              f"{recorded.steady_pct(0.99) - plain.steady_pct(0.99):+.2f} ms, "
              f"CPU x{recorded.cpu_s / plain.cpu_s:.2f} ({(recorded.cpu_s / plain.cpu_s - 1) * 100:+.0f}%); "
              f"backlog after the run: {backlog_bytes(relay_port) / 1024:.0f} KiB")
        stored = sum(p.stat().st_size for p in (work / "data" / "blobs").rglob("*") if p.is_file())
        print(f"stored: {stored / 1024 / 1024:.1f} MiB sealed in the local store")
    finally:
        stop_processes(procs, 30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

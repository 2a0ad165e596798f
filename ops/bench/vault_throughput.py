"""Vault throughput: sealing and opening segments vs raw AES-256-GCM on the same bytes, in the same run.

    .venv/bin/python ops/bench/vault_throughput.py [--seconds 3]

Two segment sizes: 2 s of 24 kHz mono PCM16 (96,000 bytes, what the sealer emits every couple of seconds)
and 256 KiB. Raw and vault alternate batch by batch, so both see the same machine load.
Target: sealing >= 90% of raw AES-GCM, overhead <= 40 bytes per segment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.vault.datakey import DataKey
from app.vault.segments import HEADER_SIZE, SegmentReader, SegmentWriter

PCM_2S = 2 * 24_000 * 2
SIZES = [("2 s PCM16 @ 24 kHz", PCM_2S), ("256 KiB", 256 * 1024)]
REGION, REQUEST_ID = "eastus", "Xq3vN0b1T2r5aUeZkJmP8w"


def bench(size: int, seconds: float) -> dict[str, float]:
    """Alternate raw and vault on batches of 16 segments until `seconds` pass; MB/s from the totals,
    ratio as the median of per-batch ratios (robust to other load on a shared machine)."""
    payload = os.urandom(size)
    dek = DataKey.generate()
    raw = AESGCM(os.urandom(32))
    nonce, aad = os.urandom(12), os.urandom(36)  # the vault's AAD for a 22-char request ID is 36 bytes
    batch = 16
    writer = SegmentWriter(dek, region=REGION, request_id=REQUEST_ID)
    stream = bytearray(writer.header)
    for _ in range(batch):
        stream += writer.seal(payload)
    sealed_raw = raw.encrypt(nonce, payload, aad)
    sealing = SegmentWriter(dek, region=REGION, request_id=REQUEST_ID)

    def raw_seal() -> None:
        for _ in range(batch):
            raw.encrypt(nonce, payload, aad)

    def vault_seal() -> None:
        for _ in range(batch):
            sealing.seal(payload)

    def raw_open() -> None:
        kept = [raw.decrypt(nonce, sealed_raw, aad) for _ in range(batch)]  # keep them, as a reader does
        del kept

    def vault_open() -> None:
        SegmentReader(dek, region=REGION, request_id=REQUEST_ID).feed(stream)

    pairs: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "seal": (raw_seal, vault_seal), "open": (raw_open, vault_open)}
    result: dict[str, float] = {}
    for name, (baseline, ours) in pairs.items():
        totals, ratios = [0.0, 0.0], []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            baseline()
            t1 = time.perf_counter()
            ours()
            t2 = time.perf_counter()
            totals[0] += t1 - t0
            totals[1] += t2 - t1
            ratios.append((t1 - t0) / (t2 - t1))
        result[f"raw_{name}"] = len(ratios) * batch * size / totals[0] / 1e6
        result[name] = len(ratios) * batch * size / totals[1] / 1e6
        result[f"{name}_ratio"] = statistics.median(ratios)
    result["overhead"] = float(len(SegmentWriter(dek, region=REGION, request_id=REQUEST_ID).seal(payload)) - size)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent on each measurement")
    args = parser.parse_args()

    print(f"vault throughput, MB/s = 10^6 bytes/s, {args.seconds:.1f} s per measurement, raw and vault "
          f"interleaved; ratio = median per-batch vault/raw speed; stream header {HEADER_SIZE} bytes per recording")
    header = (f"{'segment':<20} {'bytes':>7} | {'seal':>8} {'raw enc':>8} {'ratio':>6} | "
              f"{'open':>8} {'raw dec':>8} {'ratio':>6} | {'overhead/segment':>16}")
    print(header)
    print("-" * len(header))
    verdicts = []
    for label, size in SIZES:
        r = bench(size, args.seconds)
        seal_ratio, open_ratio = r["seal_ratio"], r["open_ratio"]
        print(f"{label:<20} {size:>7} | {r['seal']:>8.0f} {r['raw_seal']:>8.0f} {seal_ratio:>6.1%} | "
              f"{r['open']:>8.0f} {r['raw_open']:>8.0f} {open_ratio:>6.1%} | {int(r['overhead']):>10} bytes")
        verdicts.append(seal_ratio >= 0.90 and r["overhead"] <= 40)
    print("targets (seal >= 90% of raw, overhead <= 40 bytes):", "met" if all(verdicts) else "NOT met")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""How much does checking a latent cache's shards by size and mtime save over hashing every shard at every run?

One process, one cache written by `LatentCacheBuilder.write_shard` (what a build runs) into a temporary folder under
benchmarks/.cache/: `--shards` shards of `--shard_size` clips of ViT-L-shaped float16 latents (8 steps x 256 tokens
x 1024 dims, 4,194,304 B per clip), random values. Both sides check the same shards with the code a run calls before
it encodes anything, `LatentCacheBuilder.prepare`:
- full (`--verify_cache full`, what every run did before): every shard hashed again (SHA-256);
- changed (the default): each shard's record read and the file's size and mtime compared with it; nothing hashed.
The full side runs twice: cold, after each file's pages are dropped from the page cache (an fsync, then
`posix_fadvise(DONTNEED)`: read from the disk, as a cache of terabytes is, since no page cache holds it), and warm,
from the page cache (SHA-256's speed on this CPU, with the copy out of the page cache). SHA-256 of bytes already in
memory, and a cold read of the files without hashing (the disk's speed), are timed on their own too: whichever of the
two is slower bounds the full check. Each is extrapolated to a float16 cache of SurgVU at 4 fps (840 h: 1,512,000
clips x 4,194,304 B = 6.34 TB, 11,813 shards of the default 128 clips): full by bytes, changed by shards. Medians of
`--repeats` rounds, each round a cold read, cold full, warm full, changed.
Last line: `full / changed: N.Nx` (the cold full check's time over the changed check's, on the same shards).
"""

import argparse
import csv
import hashlib
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_utils import load
from dataset_surgvu.latent_cache import LatentCacheBuilder, LatentCacheKey, bytes_per_clip


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENT_SHAPE = (8, 256, 1024)  # ViT-L at 256 px, 8-frame clips of 2-frame steps
SURGVU_CLIPS = 840 * 3600 * 4 // 8  # 840 h at 4 fps, 8 frames per clip (README, "What a full SurgVU run costs")
DEFAULT_SHARD_SIZE = 128  # --cache_shard_size


def drop_pages(paths: list[Path]) -> None:
    """Evicts the files' pages from the page cache, so the next read comes from the disk."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # only clean pages can be dropped
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def read_all(paths: list[Path]) -> int:
    """Reads the files through, as `file_sha256` does, without hashing; the bytes read."""
    buffer, total = bytearray(1 << 24), 0
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                total += count
    return total


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard_size", type=int, default=32, help="clips per shard (the default run's is 128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=os.path.join(REPO_ROOT, "benchmarks", ".cache"))
    parser.add_argument("--csv", default=os.path.join(REPO_ROOT, "benchmarks", "results", "cache_verify.csv"))
    args = parser.parse_args()
    print(load())

    per_clip = bytes_per_clip(LATENT_SHAPE, "float16")
    key = LatentCacheKey(encoder_hash="benchmark", preprocessing={"latent_shape": list(LATENT_SHAPE)},
                         dataset_fingerprint="benchmark", precision="float16")
    generator = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.cache_dir, prefix="verify-") as directory:
        builder = LatentCacheBuilder(directory, key, args.shards * args.shard_size, args.shard_size)
        started = time.perf_counter()
        for shard in range(args.shards):
            builder.write_shard(shard, torch.randn(args.shard_size, *LATENT_SHAPE, generator=generator))
        write = time.perf_counter() - started
        paths = sorted(Path(directory).glob("shard-*.safetensors"))
        size = sum(path.stat().st_size for path in paths)
        print(f"cache: {len(paths)} shards of {args.shard_size} clips x {per_clip:,} B, {size / 1e9:.3f} GB on disk "
              f"in {directory} (written and hashed once in {write:.1f}s)")

        times = {"read_cold": [], "full_cold": [], "full_warm": [], "changed": []}
        for _ in range(args.repeats):
            drop_pages(paths)
            seconds, read = timed(lambda: read_all(paths))
            assert read == size
            times["read_cold"].append(seconds)
            drop_pages(paths)
            for side, verify in (("full_cold", "full"), ("full_warm", "full"), ("changed", "changed")):
                seconds, pending = timed(lambda: builder.prepare(verify=verify))
                assert pending == [], f"{side}: shards {pending} did not verify"
                times[side].append(seconds)

    block = torch.randint(0, 256, (256 * 2**20,), dtype=torch.uint8, generator=generator).numpy().tobytes()
    memory = statistics.median(timed(lambda: hashlib.sha256(block).digest())[0] for _ in range(args.repeats))
    median = {side: statistics.median(values) for side, values in times.items()}
    rates = {"sha256 in memory": len(block) / memory, "read, cold (no hashing)": size / median["read_cold"],
             "full, warm": size / median["full_warm"], "full, cold": size / median["full_cold"]}
    for name, rate in rates.items():
        print(f"{name}: {rate / 1e9:.2f} GB/s")
    print(f"changed: {median['changed'] * 1e3:.2f} ms for {len(paths)} shards "
          f"({median['changed'] / len(paths) * 1e6:.0f} us per shard)")

    total = SURGVU_CLIPS * per_clip
    shards = math.ceil(SURGVU_CLIPS / DEFAULT_SHARD_SIZE)
    print(f"SurgVU at 4 fps, float16: {SURGVU_CLIPS:,} clips x {per_clip:,} B = {total / 1e12:.2f} TB in {shards:,} "
          f"shards of {DEFAULT_SHARD_SIZE} clips")
    full_cold_at_scale, full_warm_at_scale = total / rates["full, cold"], total / rates["full, warm"]
    changed_at_scale = median["changed"] / len(paths) * shards
    print(f"  full re-hash: {total / 1e12:.2f} TB / {rates['full, cold'] / 1e9:.2f} GB/s = "
          f"{full_cold_at_scale / 3600:.2f} h (from the page cache, the CPU's bound: "
          f"{full_warm_at_scale / 3600:.2f} h) per run and process")
    print(f"  size and mtime: {shards:,} shards x {median['changed'] / len(paths) * 1e6:.0f} us = "
          f"{changed_at_scale:.2f} s per run")
    print(f"  saved per run: {(full_cold_at_scale - changed_at_scale) / 3600:.2f} h "
          f"(extrapolated ratio {full_cold_at_scale / changed_at_scale:,.0f}x)")

    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "seconds", "bytes", "shards", "shard_size", "repeats"])
        for side, seconds in median.items():
            writer.writerow([side, f"{seconds:.6f}", size, len(paths), args.shard_size, args.repeats])
        writer.writerow(["sha256_in_memory", f"{memory:.6f}", len(block), "", "", args.repeats])
    print(f"full / changed: {median['full_cold'] / median['changed']:.1f}x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Write a small synthetic sample in the MM-OR layout (JPEG frames, timestamp lists, label files), seeded.

    python scripts/make_synthetic_mmor.py --out data/mmor_synthetic
    python scripts/make_synthetic_mmor.py --out /tmp/m --width 320 --height 240 --seed 3

The folder loads with `dataset_mmor.load_mmor(DIR)`; `DIR/synthetic_manifest.json` holds the clean labels.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

from dataset_mmor.synthetic import make_synthetic_mmor


__all__ = ["make_synthetic_mmor", "main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder (plays MM-OR_data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    started = time.perf_counter()
    manifest = make_synthetic_mmor(args.out, seed=args.seed, width=args.width, height=args.height)
    takes = manifest["takes"]
    logging.info(
        "%d takes, %d timepoints, %d breach timepoints, in %.1fs -> %s",
        len(takes), sum(t["timepoints"] for t in takes.values()), sum(sum(t["breach"]) for t in takes.values()),
        time.perf_counter() - started, args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

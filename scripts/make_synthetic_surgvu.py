#!/usr/bin/env python
"""Write a small synthetic dataset in the SurgVU layout (videos, noisy labels, __MACOSX junk), deterministic by seed.

    python scripts/make_synthetic_surgvu.py --out data/surgvu_synthetic
    python scripts/make_synthetic_surgvu.py --out /tmp/s --num_cases 3 --width 640 --height 360 --fps 30 --seconds 20

The folder loads with `dataset_surgvu.load_surgvu(DIR)`; `DIR/synthetic_manifest.json` holds the clean labels.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

from dataset_surgvu.synthetic import make_synthetic_surgvu


__all__ = ["make_synthetic_surgvu", "main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder (surgvu24/, labels/, __MACOSX/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_cases", type=int, default=6)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--fps", type=float, default=60)
    parser.add_argument("--seconds", type=float, default=80.0, help="mean length of a case")
    parser.add_argument("--two_part_every", type=int, default=2, help="every n-th case has two parts (0: none)")
    parser.add_argument("--start_frame", type=int, default=0, help="first presentation timestamp, in frames")
    parser.add_argument("--preset", default="ultrafast", help="libx264 preset (veryfast and slower add B-frames)")
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval (default: x264's)")
    parser.add_argument("--no_corrupt_video", action="store_true", help="do not add a truncated video")
    parser.add_argument("--no_unlabeled_case", action="store_true", help="give every case labels")
    parser.add_argument("--num_workers", type=int, default=None, help="processes (default: up to 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    started = time.perf_counter()
    manifest = make_synthetic_surgvu(
        args.out,
        seed=args.seed,
        num_cases=args.num_cases,
        width=args.width,
        height=args.height,
        fps=args.fps if args.fps != int(args.fps) else int(args.fps),
        seconds=args.seconds,
        two_part_every=args.two_part_every,
        start_frame=args.start_frame,
        preset=args.preset,
        gop=args.gop,
        corrupt_video=not args.no_corrupt_video,
        unlabeled_case=not args.no_unlabeled_case,
        num_workers=args.num_workers,
    )
    num_parts = sum(len(case["parts"]) for case in manifest["cases"].values())
    logging.info(
        "%d cases, %d videos, label noise %s, in %.1fs -> %s",
        len(manifest["cases"]), num_parts, manifest["noise"], time.perf_counter() - started, args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Rollout error of a world model on SurgVU clips, next to the copy-the-last-latent baseline.

    python scripts/evaluate_rollout.py --model outputs/surgical_wm/best --data_root /data/surgvu [--split validation]

From the first step of each clip the model imagines the remaining steps under the clip's actions; the error is the
L1 distance to the latents of the real frames (the target encoder's), per horizon and overall. The baseline
repeats the first latent ("nothing moves"). The model is loaded with `AutoModel.from_pretrained(...,
trust_remote_code=True)`, as a Hub user would.
"""

import argparse
import os
import sys

import torch
from torch.utils.data import DataLoader

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a world model directory or Hub id")
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--labels_dir", default=None)
    parser.add_argument("--split", default="validation", choices=["train", "validation"])
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--frames_per_clip", type=int, default=8)
    parser.add_argument("--validation_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42, help="the split seed used for training")
    parser.add_argument("--dataset_cache_dir", default=None)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_clips", type=int, default=None)
    args = parser.parse_args(argv)

    from transformers import AutoModel

    from dataset_surgvu import ClipTransform, load_surgvu

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    dataset = load_surgvu(args.data_root, args.labels_dir, fps=args.fps, frames_per_clip=args.frames_per_clip,
                          validation_fraction=args.validation_fraction, seed=args.seed,
                          cache_dir=args.dataset_cache_dir)[args.split]
    if args.max_clips is not None:
        dataset = dataset.select(range(min(args.max_clips, len(dataset))))
    if len(dataset) == 0:
        print(f"error: no {args.split} clips in {args.data_root}", file=sys.stderr)
        return 2
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    loader = DataLoader([transform(dataset[i]) for i in range(len(dataset))], batch_size=args.batch_size,
                        collate_fn=lambda items: {k: torch.stack([item[k] for item in items])
                                                  for k in ("pixel_values_videos", "actions")})
    model_error, baseline_error, clips = None, None, 0
    with torch.no_grad():
        for batch in loader:
            errors, baseline_errors = model.rollout_error(batch["pixel_values_videos"], batch["actions"])  # (B, S - 1)
            per_horizon, per_horizon_baseline = errors.sum(0), baseline_errors.sum(0)
            model_error = per_horizon if model_error is None else model_error + per_horizon
            baseline_error = per_horizon_baseline if baseline_error is None else baseline_error + per_horizon_baseline
            clips += errors.shape[0]
    model_error, baseline_error = model_error / clips, baseline_error / clips
    print(f"{clips} {args.split} clips, rollout of {len(model_error)} steps from 1 context step")
    print("horizon  world model  copy-last")
    for horizon, (ours, baseline) in enumerate(zip(model_error.tolist(), baseline_error.tolist()), start=1):
        print(f"{horizon:>7}  {ours:11.4f}  {baseline:9.4f}")
    ours, baseline = model_error.mean().item(), baseline_error.mean().item()
    print(f"rollout error: {ours:.4f} (world model) vs {baseline:.4f} (copy-last baseline), ratio {ours / baseline:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Rollout error of a world model on SurgVU clips, next to the copy-the-context-latent baseline.

    python scripts/evaluate_rollout.py --model outputs/surgical_wm/best --data_root /data/surgvu [--split validation]

From the first step of each clip the model imagines the remaining steps under the clip's actions; the error is the
L1 distance to the latents of the real frames (the target encoder's), per horizon and overall. The baseline
repeats the first (context) latent: "nothing moves". The model is loaded with `AutoModel.from_pretrained(...,
trust_remote_code=True)`, as a Hub user would. The data options are the training script's (same defaults, same
split seed), so the validation split here is the one training held out. Clips are streamed, never all decoded.
"""

import sys
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from transformers import HfArgumentParser

from train_hf import DataArguments, available_cores, load_dataset_splits


@dataclass
class EvaluationArguments:
    model: str = field(metadata={"help": "A world model directory or Hub id."})
    split: str = field(default="validation", metadata={"help": "train or validation."})
    batch_size: int = field(default=8, metadata={"help": "Clips per forward pass."})
    max_clips: int | None = field(default=None, metadata={"help": "Evaluate the first N clips of the split only."})


def main(argv=None) -> int:
    parser = HfArgumentParser((EvaluationArguments, DataArguments), description=__doc__.splitlines()[0])
    args, data_args = parser.parse_args_into_dataclasses(args=argv)
    if args.split not in ("train", "validation"):
        parser.error(f"--split must be train or validation, got {args.split}")

    from transformers import AutoModel

    from dataset_surgvu import ClipTransform, SurgVUClips

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).eval()
    split = load_dataset_splits(data_args)[args.split]
    if args.max_clips is not None:
        split = split.select(range(min(args.max_clips, len(split))))
    if len(split) == 0:
        print(f"error: no {args.split} clips in {data_args.data_root}", file=sys.stderr)
        return 2
    clips = SurgVUClips(split, ClipTransform(crop_size=model.config.encoder_config.crop_size))
    loader = DataLoader(clips, batch_size=args.batch_size, num_workers=min(data_args.num_workers, available_cores()))
    model_error, baseline_error, count = 0.0, 0.0, 0
    with torch.no_grad():
        for batch in loader:
            errors, baseline_errors = model.rollout_error(batch["pixel_values_videos"], batch["actions"])  # (B, S - 1)
            model_error = model_error + errors.sum(0)
            baseline_error = baseline_error + baseline_errors.sum(0)
            count += errors.shape[0]
    model_error, baseline_error = model_error / count, baseline_error / count
    print(f"{count} {args.split} clips, rollout of {len(model_error)} steps from 1 context step")
    print("horizon  world model  copy-context")
    for horizon, (ours, baseline) in enumerate(zip(model_error.tolist(), baseline_error.tolist()), start=1):
        print(f"{horizon:>7}  {ours:11.4f}  {baseline:12.4f}")
    ours, baseline = model_error.mean().item(), baseline_error.mean().item()
    print(f"rollout error: {ours:.4f} (world model) vs {baseline:.4f} (copy-context baseline), "
          f"ratio {ours / baseline:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

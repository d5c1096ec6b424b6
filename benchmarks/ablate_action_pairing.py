#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Which labels should a transition take as its action? Scores world models trained with each `action_pairing` on the
validation clips of their latent cache: teacher-forced latent L1 with the clip's own actions (overall, for step 2
from step 1 alone, and at the transitions where the labels change or not), the rollout L1 at horizon 4 from the
first step, and the error with another clip's actions over the error with its own (the clips' labels rolled by one
over the split).

    python benchmarks/ablate_action_pairing.py --data_root demo_output/surgvu \
        --dataset_cache_dir demo_output/arrow-cache --cache_dir demo_output/run/latent_cache \
        --runs current-0=runs/current-0/final next-0=runs/next-0/final

Each model is scored on the same clips; the changes are those of the per-step labels, whatever the pairing. Prints a
Markdown table, one row per run.
"""

import argparse

import torch
from torch.utils.data import DataLoader

from dataset_surgvu import collate_clips
from dataset_surgvu.latent_cache import LatentCache, LatentClips
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.arguments import DataArguments
from training_surgical_wm.data import load_dataset_splits


ROLLOUT_HORIZON = 4


def validation_clips(args) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation split's cached latents `(C, S, N, D)` and per-step labels `(C, S, A)`, in split order."""
    data_args = DataArguments(data_root=args.data_root, dataset_cache_dir=args.dataset_cache_dir, num_workers=0)
    split = load_dataset_splits(data_args)["validation"]
    clips = LatentClips(split, LatentCache(f"{args.cache_dir}/validation"))
    batches = [batch for batch in DataLoader(clips, batch_size=16, collate_fn=collate_clips) if "latents" in batch]
    return (torch.cat([batch["latents"].float() for batch in batches]),
            torch.cat([batch["actions"].float() for batch in batches]))


@torch.no_grad()
def scores(model: SurgicalWorldModel, latents: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    changed = (labels[:, 1:] != labels[:, :-1]).any(-1)  # (C, S - 1): the labels change over the transition

    def teacher_forced(step_labels: torch.Tensor) -> torch.Tensor:
        predicted = model.predict(latents[:, :-1], model.transition_actions(step_labels))
        return (predicted - latents[:, 1:]).abs().mean((2, 3))  # (C, S - 1)

    own, swapped = teacher_forced(labels), teacher_forced(labels.roll(1, dims=0))
    imagined = model.rollout(latents[:, :1], model.transition_actions(labels), steps=ROLLOUT_HORIZON)
    rollout = (imagined[:, -1] - latents[:, ROLLOUT_HORIZON]).abs().mean().item()
    return {
        "own": own.mean().item(), "own_first": own[:, 0].mean().item(), "own_change": own[changed].mean().item(), "own_same": own[~changed].mean().item(),
        "rollout": rollout, "ratio": (swapped.mean() / own.mean()).item(),
        "ratio_change": (swapped[changed].mean() / own[changed].mean()).item(),
        "ratio_same": (swapped[~changed].mean() / own[~changed].mean()).item(),
        "changes": changed.float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--dataset_cache_dir", default=None)
    parser.add_argument("--cache_dir", required=True, help="the latent cache the runs trained from (its validation/)")
    parser.add_argument("--runs", nargs="+", required=True, help="name=export directory, one per run")
    args = parser.parse_args()
    latents, labels = validation_clips(args)
    print(f"{len(latents)} validation clips of {latents.shape[1]} steps")
    print("| run | pairing | TF L1 own | step 2 | at changes | elsewhere | rollout L1 h4 | swapped/own | at changes | "
          "elsewhere |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        name, path = run.split("=", 1)
        model = SurgicalWorldModel.from_pretrained(path).eval()
        row = scores(model, latents, labels)
        print(f"| {name} | {model.config.action_pairing} | {row['own']:.4f} | {row['own_first']:.4f} | "
              f"{row['own_change']:.4f} | {row['own_same']:.4f} | {row['rollout']:.4f} | {row['ratio']:.3f} | "
              f"{row['ratio_change']:.3f} | {row['ratio_same']:.3f} |", flush=True)
    print(f"transitions where the labels change: {row['changes']:.1%}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Which labels should a transition take as its action, and which training levers make the predictor use them?
Scores world models trained with each `action_pairing`, or with each action lever of their config, on one split's
clips of their latent cache (`--split`, default `test`, the split that chose nothing): teacher-forced latent L1 with
the clip's own actions (overall, for step 2 from step 1 alone, and at the transitions where the labels change or
not), the rollout L1 at horizon 4 from the first step, and the error with another clip's actions over the error with
its own (each clip takes the labels of a clip of another case, drawn by `--seed`, as the evaluation draws them).

    python benchmarks/ablate_action_pairing.py --data_root demo_output/surgvu \
        --dataset_cache_dir demo_output/arrow-cache --cache_dir demo_output/run/latent_cache \
        --runs current-0=runs/current-0/final next-0=runs/next-0/final

Each model is scored on the same clips; the changes are those of the per-step labels, whatever the pairing. Prints a
Markdown table, one row per run, whose `levers` column lists the action levers a run's config sets away from their
defaults.
"""

import argparse
import os

import torch
from torch.utils.data import DataLoader

from dataset_surgvu import collate_clips
from configuration_surgical_wm import SurgicalWorldModelConfig
from dataset_surgvu.latent_cache import LatentCache, LatentCacheError, LatentClips, latent_cache_dir
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.arguments import DataArguments
from training_surgical_wm.data import load_dataset_splits
from training_surgical_wm.evaluation import swap_partners


ROLLOUT_HORIZON = 4
# The config fields that decide how much the predictor leans on its actions, named in the `levers` column when a run
# sets them away from their defaults.
LEVERS = ("action_contrastive_weight", "action_dropout", "action_change_weight", "action_conditioning",
          "rollout_steps", "rollout_loss_weight", "use_mask_aux", "mask_ratio", "lambda_mask")


def split_clips(args) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The split's cached latents `(C, S, N, D)`, per-step labels `(C, S, A)` and case ids, in split order."""
    data_args = DataArguments(data_root=args.data_root, dataset_cache_dir=args.dataset_cache_dir, num_workers=0)
    splits = load_dataset_splits(data_args)
    if args.split not in splits or len(splits[args.split]) == 0:
        raise SystemExit(f"error: {args.data_root} has no {args.split!r} clips")
    split = splits[args.split]
    directory = latent_cache_dir(args.cache_dir, args.split, split._fingerprint)
    try:
        clips = LatentClips(split, LatentCache(directory))
    except LatentCacheError as error:
        raise SystemExit(f"error: no latent cache of the builder's {args.split!r} clips ({error}): build it with "
                         "scripts/cache_latents.py and the runs' options, without --clip_stride") from None
    batches = [batch for batch in DataLoader(clips, batch_size=16, collate_fn=collate_clips) if "latents" in batch]
    if not batches:
        raise SystemExit(f"error: {directory} holds no cached latents of the {args.split!r} clips")
    cases = splits[args.split]["case_id"]
    return (torch.cat([batch["latents"].float() for batch in batches]),
            torch.cat([batch["actions"].float() for batch in batches]),
            [cases[int(row)] for batch in batches for row in batch["sample_id"]])


@torch.no_grad()
def scores(model: SurgicalWorldModel, latents: torch.Tensor, labels: torch.Tensor,
           partners: torch.Tensor) -> dict[str, float]:
    """The scores of one model; clip c is also scored with the labels of clip `partners[c]`."""
    changed = (labels[:, 1:] != labels[:, :-1]).any(-1)  # (C, S - 1): the labels change over the transition
    groups = {}  # (C, S - 1) per action group of the spec ("task", "USM1", ...): its labels change
    for dim, name in enumerate(getattr(model.config, "action_spec", None) or []):
        group = name.split("/", 1)[0]
        step_change = labels[:, 1:, dim] != labels[:, :-1, dim]
        groups[group] = groups[group] | step_change if group in groups else step_change

    def teacher_forced(step_labels: torch.Tensor) -> torch.Tensor:
        predicted = model.predict(latents[:, :-1], model.transition_actions(step_labels))
        return (predicted - latents[:, 1:]).abs().mean((2, 3))  # (C, S - 1)

    own, swapped = teacher_forced(labels), teacher_forced(labels[partners])
    imagined = model.rollout(latents[:, :1], model.transition_actions(labels), steps=ROLLOUT_HORIZON)
    rollout = (imagined[:, -1] - latents[:, ROLLOUT_HORIZON]).abs().mean().item()
    return {
        "own": own.mean().item(), "own_first": own[:, 0].mean().item(), "own_change": own[changed].mean().item(),
        "own_same": own[~changed].mean().item(),
        "rollout": rollout, "ratio": (swapped.mean() / own.mean()).item(),
        "ratio_change": (swapped[changed].mean() / own[changed].mean()).item(),
        "ratio_same": (swapped[~changed].mean() / own[~changed].mean()).item(),
        "changes": changed.float().mean().item(),
        # Where the task changes, and where only the tools do: the task brings its own anatomy into view.
        **{key: value for name, mask in (("task", groups.get("task")),
                                         ("tools", None if "task" not in groups else changed & ~groups["task"]))
           if mask is not None and mask.any()
           for key, value in ((f"{name}_changes", int(mask.sum())), (f"own_{name}_change", own[mask].mean().item()),
                              (f"ratio_{name}_change", (swapped[mask].mean() / own[mask].mean()).item()))},
    }


def levers(config: SurgicalWorldModelConfig) -> str:
    """The action levers that `config` sets away from their defaults, as `name=value`, or `-` for none."""
    defaults = SurgicalWorldModelConfig()
    changed = [f"{name}={getattr(config, name)}" for name in LEVERS if getattr(config, name) != getattr(defaults, name)]
    return ", ".join(changed) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--dataset_cache_dir", default=None)
    parser.add_argument("--cache_dir", required=True,
                        help="the runs' latent cache root, holding the builder's clips of --split (as the probes and "
                             "scripts/cache_latents.py cache them)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"),
                        help="the clips scored (default: test, which chose nothing)")
    parser.add_argument("--runs", nargs="+", required=True, help="name=export directory, one per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw of each clip's swap partner")
    args = parser.parse_args()
    for run in args.runs:
        if not os.path.isfile(os.path.join(run.partition("=")[2], "config.json")):
            raise SystemExit(f"error: --runs {run}: expected NAME=DIR, DIR an export holding config.json")
    latents, labels, cases = split_clips(args)
    partners = torch.from_numpy(swap_partners(cases, args.seed))
    print(f"{len(latents)} {args.split} clips of {latents.shape[1]} steps")
    print("| run | pairing | levers | TF L1 own | step 2 | at changes | elsewhere | rollout L1 h4 | swapped/own | "
          "at changes | elsewhere |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for run in args.runs:
        name, _, path = run.partition("=")
        model = SurgicalWorldModel.from_pretrained(path).eval()
        row = scores(model, latents, labels, partners)
        rows.append((name, row))
        print(f"| {name} | {model.config.action_pairing} | {levers(model.config)} | {row['own']:.4f} | "
              f"{row['own_first']:.4f} | {row['own_change']:.4f} | {row['own_same']:.4f} | {row['rollout']:.4f} | "
              f"{row['ratio']:.3f} | {row['ratio_change']:.3f} | {row['ratio_same']:.3f} |", flush=True)
    print(f"transitions where the labels change: {row['changes']:.1%}")
    if "own_task_change" in row and "own_tools_change" in row:
        print(f"\nthe transitions where the labels change, by what changes: the task ({row['task_changes']}) or only "
              f"tools ({row['tools_changes']})")
        print("| run | TF L1 own, task changes | swapped/own | TF L1 own, tool changes | swapped/own |")
        print("|---|---:|---:|---:|---:|")
        for name, row in rows:
            print(f"| {name} | {row['own_task_change']:.4f} | {row['ratio_task_change']:.3f} | "
                  f"{row['own_tools_change']:.4f} | {row['ratio_tools_change']:.3f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Would a memory of the case explain the next step where a tool is removed or the task changes?

Where a tool is removed, the next frame shows what lay under it, last seen before the tool came in (6-18 s earlier
in the synthetic data); where the task changes to one the case has done before, its view was last seen then. A
predictor with a memory of the case could draw on those steps. Scores that memory on the latents themselves, on
long clips of one split (`--frames_per_clip 128 --clip_stride 64`: up to 32 s of past at 4 fps), for each
transition where a tool is removed or the task changes:

- own: the world model's teacher-forced prediction of the next latent from the `--context` steps up to the
  transition (as trained) and its own actions;
- move: the latent L1 of copying the step before (how far the latent moves);
- recalled: the L1 of the step a memory would recall (the last step before the removed tool's run, the arm empty;
  the last step whose task is the new one);
- own or recalled: per token, the lower error of the prediction and the recalled step (chosen with hindsight: an
  upper bound on what a memory could add to the predictor);
- own or control: the same with a control step of the same case that does not show what the memory shows (the
  middle of the removed tool's run, the tool in view; a step between the memory and the change, another task).

If own-or-recalled is not below own-or-control, the recalled view holds nothing about the next latent that any
other step of the case does not.

    python benchmarks/case_memory.py --checkpoint demo_output/run/best --data_root demo_output/surgvu \
        --dataset_cache_dir demo_output/long-clips

Prints one row per kind of transition; the last line is own-or-recalled over own-or-control where a tool is removed.
"""

import argparse
import os
import sys
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_surgvu import BrokenClip, SurgVUClips  # noqa: E402
from modeling_surgical_wm import frames_to_steps  # noqa: E402
from planning_surgical_wm import step_options  # noqa: E402
from training_surgical_wm.arguments import DataArguments  # noqa: E402
from training_surgical_wm.data import dataset_entry, load_dataset_splits, resolve_split_options  # noqa: E402
from training_surgical_wm.loading import load_checkpoint, time_base, training_settings  # noqa: E402
from training_surgical_wm.planning import action_groups  # noqa: E402

KINDS = ("a tool removed", "the task changes", "a tool installed", "no change")
COLUMNS = ("own", "move", "recalled", "own or recalled", "own or control", "recalled steps before")


def recalled_steps(options: torch.Tensor, t: int, group: int, is_task: bool,
                   none: int) -> tuple[str, int, int] | None:
    """For the change of `group` at transition t -> t + 1: its kind, the step a memory recalls and the control step, or
    None where the clip holds no memory (or the change is a tool installed, which uncovers nothing)."""
    before, after = options[t, group].item(), options[t + 1, group].item()
    if is_task:
        earlier = (options[:t, group] == after).nonzero().flatten()
        if not len(earlier):
            return None
        recalled = earlier[-1].item()
        return "the task changes", recalled, (recalled + 1 + t) // 2  # every step after it has another task
    if after != none:
        return None
    start = t  # the first step of the removed tool's run
    while start > 0 and options[start - 1, group].item() == before:
        start -= 1
    if start == 0 or options[start - 1, group].item() != none:
        return None
    return "a tool removed", start - 1, (start + t) // 2  # the control: the tool in view


@torch.no_grad()
def transition_records(model, latents: torch.Tensor, actions: torch.Tensor, options: torch.Tensor, t: int,
                       context: int, groups: list[tuple[str, list[int]]]) -> list[tuple[str, list[float | None]]]:
    """The rows of transition t -> t + 1 of one clip (`latents (S, N, D)`, per-step `actions (S, A)` and their
    `step_options (S, G)`): one per group whose option changes there (none when nothing does: "no change")."""
    start = max(0, t - context + 1)
    predicted = model.predict(latents[None, start : t + 1], model.transition_actions(actions[None, start : t + 2]))
    target = latents[t + 1].float()
    own_tokens = (predicted[0, -1].float() - target).abs().mean(-1)
    own, move = own_tokens.mean().item(), (latents[t].float() - target).abs().mean().item()
    changed = (options[t] != options[t + 1]).nonzero().flatten().tolist()
    if not changed:
        return [("no change", [own, move, None, None, None, None])]

    def tokens(step):
        return (latents[step].float() - target).abs().mean(-1)

    rows = []
    for group in changed:
        name, dims = groups[group]
        before, after = options[t, group].item(), options[t + 1, group].item()
        found = recalled_steps(options, t, group, name == "task", len(dims))
        if found is not None:
            kind, recalled, control = found
            rows.append((kind, [own, move, tokens(recalled).mean().item(),
                                torch.minimum(own_tokens, tokens(recalled)).mean().item(),
                                torch.minimum(own_tokens, tokens(control)).mean().item(), float(t - recalled)]))
            continue
        if name == "task":
            kind = "the task changes (no memory in the clip)"
        elif before == len(dims):
            kind = "a tool installed"  # uncovers nothing
        elif after == len(dims):
            kind = "a tool removed (no memory in the clip)"
        else:
            kind = "a tool changed for another"
        rows.append((kind, [own, move, None, None, None, None]))
    return rows


def summarise(rows: list[tuple[str, list[float | None]]]) -> dict[str, tuple[int, list[float]]]:
    """Per kind: how many rows, and the mean of each column over the rows that have it (NaN where none does)."""
    by_kind = defaultdict(list)
    for kind, values in rows:
        by_kind[kind].append([np.nan if value is None else value for value in values])
    summary = {}
    for kind, values in by_kind.items():
        values = np.array(values, dtype=float)
        summary[kind] = (len(values), [float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
                                       for column in values.T])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a world model export with an action_spec")
    parser.add_argument("--data_root", required=True, help="SurgVU folder (surgvu24/ and labels/)")
    parser.add_argument("--dataset_cache_dir", required=True, help="where the long clips' Arrow files go")
    parser.add_argument("--split", default="test")
    parser.add_argument("--frames_per_clip", type=int, default=128)
    parser.add_argument("--clip_stride", type=int, default=64)
    parser.add_argument("--context", type=int, default=7, help="steps the prediction sees (the demo trains on 7)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    config = model.config
    if not config.action_spec:
        raise SystemExit(f"error: {args.checkpoint} has no action_spec: its actions have no groups to follow")
    groups, _ = action_groups(model)
    data_args = DataArguments(data_root=args.data_root, dataset_cache_dir=args.dataset_cache_dir,
                              frames_per_clip=args.frames_per_clip, clip_stride=args.clip_stride, num_workers=0,
                              split_seed=None, validation_fraction=None, test_fraction=None)
    settings, settings_file = training_settings(args.checkpoint)
    data_args.fps, _ = time_base(None, config, f"{args.checkpoint}/config.json", settings, settings_file)
    resolve_split_options(data_args, config.data_split)  # the split the model was trained on
    split = load_dataset_splits(data_args)[args.split]
    clips = SurgVUClips(split, dataset_entry(data_args).transform(crop_size=config.encoder_config.crop_size))
    per_step = config.frames_per_step
    rows, scored = [], set()
    for index in range(len(clips)):
        item = clips[index]
        if isinstance(item, BrokenClip):  # a clip that failed to decode (already named by the loader)
            continue
        latents = model.encode_targets(item["pixel_values_videos"][None])[0]
        actions = item["actions"] if per_step == 1 else frames_to_steps(item["actions"][None], per_step)[0]
        options = step_options(actions, groups)
        row = split[index]
        for t in range(latents.shape[0] - 1):
            # Each transition once, in the first clip that holds it: the builder's clips of a part come in time
            # order, so that is the one with the most past.
            key = (row["video_path"], row["frame_indices"][t * per_step])
            if key not in scored:
                scored.add(key)
                rows.extend(transition_records(model, latents, actions, options, t, args.context, groups))
    summary = summarise(rows)
    print(f"latent L1 per transition, {len(scored)} transitions of {len(clips)} {args.split} clips of "
          f"{args.frames_per_clip} frames; columns: {', '.join(COLUMNS)}")
    print(f"| transition | n | {' | '.join(COLUMNS)} |\n|---|---:|{'---:|' * len(COLUMNS)}")
    for kind in sorted(summary, key=lambda name: (name.split(" (")[0] not in KINDS, name)):
        count, means = summary[kind]
        print(f"| {kind} | {count} | " + " | ".join("-" if np.isnan(value) else f"{value:.3f}" if column < 5
                                                   else f"{value:.1f}" for column, value in enumerate(means)) + " |")
    removed = summary.get("a tool removed")
    if removed is None:
        raise SystemExit("error: no tool is removed where the clips hold the step before it came in")
    print(f"own or recalled over own or control, a tool removed: {removed[1][3] / removed[1][4]:.2f}x")


if __name__ == "__main__":
    main()

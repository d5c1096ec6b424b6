#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Infers the actions that lead from one moment of a SurgVU video to a later one, with the world model's CEM planner.

    python scripts/plan.py --checkpoint outputs/surgical_wm/best \
        --video /data/surgvu/surgvu24/case_005/case_005_video_part_001.mp4 --start 120 --goal 121 [--json plan.json]

`--start` and `--goal` are seconds from the start of that video file. The frames are sampled and preprocessed as
training sampled them (dataset_surgvu: the builder's frame grid at the run's fps and its crop box without the tool-name
band and the black margins, then `ClipTransform`'s V-JEPA 2 preprocessing). `--context_steps` steps ending at
`--start` form the context, the step ending at `--goal` the goal; `SurgicalWorldModel.plan` searches for the actions of
the steps in between (one step: the model config's `frames_per_step` frames at its `fps`; an export without `fps` falls
back to the run's, from `trainer_state.json` beside the weights, else 4.0; `--fps` overrides it). Prints each step's
inferred action decoded to names through `config.action_spec` (per categorical group: the chosen tool or task, or none;
other dimensions as numbers) next to the labelled one from the case's tools.csv/tasks.csv (found as the dataset
builder finds them, or under `--labels_dir`; each step's labelled action is paired with it as the model's
`action_pairing` pairs labels and transitions: the labels at the step's end, or at its start), the matches per group
next to chance, and the energy per CEM iteration.
`--json` writes the same as JSON, with `case_split`: the split of the model's training data (`data_split` in its
config) that held the video's case; a train or validation case is warned about, since it fitted or chose the model.

`--preset` names the search settings (`planning_surgical_wm.PLANNING_PRESETS`: `vjepa2_ac_paper`, `vjepa2_ac_wrapper`,
`vjepa2_ac_mpc_utils`, `vjepa2_ac_droid`, or this project's default `surgical_wm`); `--num_samples`, `--iterations`,
`--top_k`, `--momentum` and `--std_momentum` override its values; the horizon is the span's steps (or `--horizon`),
whatever the preset plans. A model with a state token (SurgVU videos have no states) takes the context's states from
`--states` (a JSON list of `--context_steps` lists of `state_dim` numbers), and each candidate's states follow its own
actions by `--state_rule` (`planning_surgical_wm.STATE_RULES`; default: the preset's, as `vjepa2_ac_droid`'s
`end_effector`). `--action_prior marginal|transition` starts the search from the training data's action statistics that
train_hf.py writes into the config, `--seen_only` proposes only the combinations of tools and task seen in training;
the report and the JSON name the preset and the prior.
"""

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dataset_surgvu import ClipTransform, CorruptVideoError, SurgVULabelError, action_names, crop_box, probe_video
from dataset_surgvu.builder import sample_frame_indices
from dataset_surgvu.labels import build_actions, labels_at, part_offsets, read_case_labels
from dataset_surgvu.layout import find_cases, parse_part_file, resolve_dirs
from modeling_surgical_wm import SurgicalWorldModel, frames_to_steps
from planning_surgical_wm import ACTION_PRIORS, DEFAULT_PLANNING_PRESET, PLANNING_PRESETS, STATE_RULES
from training_surgical_wm.arguments import DataArguments
from training_surgical_wm.loading import TRAINER_STATE, checkpoint_config, fail, is_probe, time_base, training_settings


logger = logging.getLogger("plan")



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a world model directory (train_hf.py export) or Hub id")
    parser.add_argument("--video", required=True, help="a SurgVU-format video (surgvu24/case_NNN/case_NNN_video_"
                                                       "part_NNN.mp4)")
    parser.add_argument("--start", type=float, required=True, help="seconds from the start of the video: the context "
                                                                   "ends here")
    parser.add_argument("--goal", type=float, required=True, help="seconds from the start of the video: the goal frame")
    parser.add_argument("--labels_dir", default=None, help="the folder holding case_NNN/tools.csv and tasks.csv "
                                                           "(default: labels/ beside surgvu24/, as the builder finds it)")
    parser.add_argument("--fps", type=float, default=None, help="frames per second of the steps (default: the model "
                                                                f"config's fps; else the run's, from {TRAINER_STATE}; "
                                                                f"else {DataArguments.fps})")
    parser.add_argument("--context_steps", type=int, default=4,
                        help="steps ending at --start that form the context (default 4: the second before it at 4 fps, "
                             "half a training clip; the labelled actions between them are given; 1: plan from the "
                             "start frame alone)")
    parser.add_argument("--horizon", type=int, default=None, help="steps to plan (default: the steps from --start "
                                                                  "to --goal)")
    parser.add_argument("--preset", choices=list(PLANNING_PRESETS), default=DEFAULT_PLANNING_PRESET,
                        help=f"the CEM settings the flags below leave unset (default {DEFAULT_PLANNING_PRESET})")
    parser.add_argument("--num_samples", type=int, default=None, help="action sequences sampled per CEM iteration")
    parser.add_argument("--iterations", type=int, default=None, help="CEM iterations")
    parser.add_argument("--top_k", type=int, default=None, help="elites refitted per iteration")
    parser.add_argument("--momentum", type=float, default=None, help="weight of the old search distribution (means "
                                                                     "and categorical probabilities)")
    parser.add_argument("--std_momentum", type=float, default=None, help="weight of the old spreads of continuous "
                                                                         "action dimensions")
    parser.add_argument("--action_prior", choices=ACTION_PRIORS, default="uniform",
                        help="where the search over tools and tasks starts: uniform options, or the training data's "
                             "statistics from the config (marginal: their frequencies; transition: their step-to-step "
                             "transitions from the last context action)")
    parser.add_argument("--seen_only", action="store_true", help="propose only combinations of options seen in one "
                                                                 "training step")
    parser.add_argument("--states", default=None, help="a JSON file: the states of the --context_steps context steps, "
                                                       "one list of state_dim numbers each (models with a state token)")
    parser.add_argument("--state_rule", choices=list(STATE_RULES), default=None,
                        help="how each candidate's states follow its actions (default: the preset's; models with a "
                             "state token)")
    parser.add_argument("--chunk_size", type=int, default=None, help="candidates per predictor call (default: about "
                                                                     "1 GiB of keys, values and scores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: cuda when available)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    for name, value in PLANNING_PRESETS[args.preset].items():
        if name not in ("horizon", "bounds", "state_rule") and getattr(args, name) is None:
            setattr(args, name, value)
    if args.fps is not None and not args.fps > 0:
        parser.error(f"--fps must be positive, got {args.fps}")
    for name in ("context_steps", "horizon", "num_samples", "iterations", "top_k", "chunk_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if args.top_k > args.num_samples:
        parser.error(f"--top_k ({args.top_k}) cannot exceed --num_samples ({args.num_samples})")
    for name in ("momentum", "std_momentum"):
        if not 0.0 <= getattr(args, name) < 1.0:
            parser.error(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    return args


# ------------------------------------------------------------------------------------------------------- model
def load_world_model(path: str) -> tuple[SurgicalWorldModel, str]:
    """The world model at `path` (this repository's class, which plans) and where its config was read."""
    if not Path(path).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        fail(f"{path}: no such checkpoint directory")
    config, where = checkpoint_config(path)
    if config.get("model_type") != "surgical_wm":
        fail(f"{where}: model_type {config.get('model_type')!r}: not a surgical world model (expected model_type "
             "'surgical_wm', a train_hf.py export or a scripts/load_vjepa2_pretrained.py directory)")
    if is_probe(config):
        fail(f"{where}: a probe ({', '.join(config['architectures'])}), not a world model: give the world model it "
             "was trained on")
    if not config.get("action_spec"):
        fail(f"{where}: the model has no action_spec, so its actions have no names to infer (build it with "
             "scripts/load_vjepa2_pretrained.py --action_spec, or train it with train_hf.py)")
    model = SurgicalWorldModel.from_pretrained(path).eval()
    return model, where


def context_states(args: argparse.Namespace, model: SurgicalWorldModel, where: str) -> torch.Tensor | None:
    """The states `(1, context_steps, state_dim)` of `--states` for a model with a state token (None without one)."""
    state_dim = model.config.state_dim
    if not state_dim:
        if args.states is not None or args.state_rule is not None:
            fail(f"{where}: the model has no state token (state_dim=0): --states and --state_rule are for models "
                 "with one")
        return None
    if args.states is None:
        fail(f"{where}: the model expects a state of {state_dim} values per step; SurgVU videos have none: give the "
             f"context's states with --states (a JSON list of {args.context_steps} lists of {state_dim} numbers)")
    if (args.state_rule or PLANNING_PRESETS[args.preset].get("state_rule")) is None:
        fail(f"--preset {args.preset} has no state rule: give --state_rule ({', '.join(STATE_RULES)}) to move each "
             "candidate's states by its actions")
    try:
        values = json.loads(Path(args.states).read_text())
    except (OSError, ValueError) as error:
        fail(f"{args.states}: not a readable JSON file ({error})")
    if not (isinstance(values, list) and len(values) == args.context_steps and all(
            isinstance(row, list) and len(row) == state_dim
            and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in row)
            for row in values)):
        fail(f"{args.states}: expected a list of {args.context_steps} lists (one per context step) of {state_dim} "
             "numbers (the model's state_dim)")
    return torch.tensor(values, dtype=torch.float32)[None]


def action_groups(model: SurgicalWorldModel) -> tuple[list[tuple[str, list[int]]], list[str] | None]:
    """The categorical groups `(name, dims)` and, when the config does not name them, the names derived here (for
    `plan(discrete_groups=...)`; None when the config has them)."""
    config = model.config
    if config.discrete_action_groups is not None:
        return config.action_groups(), None
    names = config.spec_groups(config.action_spec)
    logger.info("the config names no discrete_action_groups (an older checkpoint, or one built without train_hf.py): "
                "using the action_spec prefixes %s", names)
    return config.action_groups(names), names


def decode_action(vector: np.ndarray, spec: list[str], groups, continuous: list[int]) -> dict:
    """One step's action as names: per group its option with the largest value when above 0.5, else "none"; each
    other dimension as a number."""
    decoded = {}
    for group, dims in groups:
        values = vector[dims]
        best = int(np.argmax(values))
        decoded[group] = spec[dims[best]].split("/", 1)[1] if values[best] > 0.5 else "none"
    for dim in continuous:
        decoded[spec[dim]] = round(float(vector[dim]), 4)
    return decoded


# ------------------------------------------------------------------------------------------------------- video
def case_split(config, video: Path) -> str | None:
    """The split of the model's training data (`data_split` in its config) that holds the video's case; None when the
    config records no split (an older export) or the case is in none of them."""
    parsed = parse_part_file(video.name)
    groups = (config.data_split or {}).get("groups", {})
    return next((name for name, cases in groups.items() if parsed is not None and parsed[0] in cases), None)


def case_labels(video: Path, labels_dir: str | None):
    """(part number, labels, part offsets, note): the labels of the video's case on its timeline, found as the
    builder finds them; labels None with the reason in `note` when there are none."""
    parsed = parse_part_file(video.name)
    if parsed is None:
        return None, None, None, f"{video.name} is not named case_NNN_video_part_NNN.mp4: its case is unknown"
    case_id, part = parsed
    if video.parent.name != case_id:
        return part, None, None, f"{video} is not inside a {case_id}/ folder of a SurgVU layout"
    try:
        videos_dir, found_dir = resolve_dirs(video.parent.parent, labels_dir)
    except FileNotFoundError as error:
        return part, None, None, str(error)
    case = find_cases(videos_dir, found_dir).get(case_id)
    if case is None or not case.has_labels:
        where = found_dir / case_id if found_dir is not None else f"labels/ beside {videos_dir}"
        return part, None, None, f"no tools.csv and tasks.csv for {case_id} (looked in {where}; --labels_dir sets it)"
    try:
        labels = read_case_labels(case.tools_csv, case.tasks_csv, parts=case.parts)
    except SurgVULabelError as error:
        fail(str(error))
    durations = {}
    for number, path in case.parts.items():
        try:
            durations[number] = probe_video(path).duration
        except CorruptVideoError:
            durations[number] = None  # part_offsets gives it the extent its labels reach, as the builder does
    notes = f"{case.tools_csv} and {case.tasks_csv}"
    return part, labels, part_offsets(labels, durations), notes


# ------------------------------------------------------------------------------------------------------- report
def format_report(result: dict) -> str:
    groups = [group for group in result["groups"]]
    width = max([len("inferred"), *(len(str(value)) for step in result["steps"] for side in ("inferred", "labelled")
                                    for value in (step[side] or {}).values())]) + 2
    name_width = max([len("group"), *(len(name) for name in result["steps"][0]["inferred"])]) + 2
    settings = result["settings"]
    lines = [
        f"planned {result['horizon']} steps from {result['start_used']:.2f} s to {result['goal_used']:.2f} s of "
        f"{result['video']} ({result['fps']:g} fps, {result['frames_per_step']} frame(s) per step; context: "
        f"{result['context_steps']} step(s) ending at {result['start_used']:.2f} s)",
        f"CEM ({settings['preset']}): {settings['num_samples']} samples, {settings['iterations']} iterations, top "
        f"{settings['top_k']}, momentum {settings['momentum']:g} (spread {settings['std_momentum']:g}), seed "
        f"{settings['seed']}",
        f"action prior: {settings['action_prior']}"
        + (", combinations seen in training only" if settings["seen_only"] else "")
        + (f"; states follow the actions by the {settings['state_rule']!r} rule" if settings["state_rule"] else ""),
        f"labels: {result['labels']}",
        f"the action of a step: the labels at its {'end' if result['action_pairing'] == 'next' else 'start'} "
        f"(action_pairing {result['action_pairing']!r})",
        "",
        f"{'step':>4}  {'from -> to (s)':<16}  {'group':<{name_width}}{'inferred':<{width}}{'labelled':<{width}}match",
    ]
    for step in result["steps"]:
        span = f"{step['from']:.2f} -> {step['to']:.2f}"
        for row, (name, inferred) in enumerate(step["inferred"].items()):
            labelled = "-" if step["labelled"] is None else step["labelled"][name]
            match = step["match"].get(name)
            mark = "" if match is None else ("yes" if match else "no")
            head = f"{step['step']:>4}  {span:<16}  " if row == 0 else " " * 24
            lines.append(f"{head}{name:<{name_width}}{inferred!s:<{width}}{labelled!s:<{width}}{mark}".rstrip())
    if result["matches"]:
        lines.append("")
        lines.append("matches per group (inferred = labelled, steps with labels):")
        for group in groups:
            entry = result["matches"][group]
            lines.append(f"  {group:<{name_width}}{entry['matches']}/{entry['steps']}  (rate {entry['rate']:.2f}, "
                         f"chance {entry['chance']:.2f})")
    lines.append("")
    lines.append("energy per iteration (lowest sampled / elite mean / best so far):")
    for index, (best, elite, so_far) in enumerate(zip(result["energy_per_iteration"],
                                                      result["elite_energy_per_iteration"],
                                                      result["best_energy_so_far"]), start=1):
        lines.append(f"  iteration {index:>3}: {best:.5f}  {elite:.5f}  {so_far:.5f}")
    lines.append(f"energy of the inferred actions: {result['energy']:.5f}")
    if result.get("labelled_energy") is not None:
        lines.append(f"energy of the labelled actions: {result['labelled_energy']:.5f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    model, where = load_world_model(args.checkpoint)
    model.to(device)
    config = model.config
    states = context_states(args, model, where)
    states = None if states is None else states.to(device)
    spec, frames_per_step = list(config.action_spec), config.frames_per_step
    groups, derived = action_groups(model)
    in_group = {dim for _, dims in groups for dim in dims}
    continuous = [dim for dim in range(config.action_dim) if dim not in in_group]

    settings, settings_file = training_settings(args.checkpoint)
    if settings.get("dataset", "surgvu") != "surgvu":
        logger.warning("%s was trained on %s, not SurgVU: its frames were prepared another way", args.checkpoint,
                       settings["dataset"])
    fps, fps_source = time_base(args.fps, config, where, settings, settings_file)
    logger.info("one step: %d frame(s) at %g fps (fps from %s)", frames_per_step, fps, fps_source)

    video = Path(args.video).expanduser()
    if not video.is_file():
        fail(f"{video}: no such video file")
    try:
        info = probe_video(video, check_end=False)
    except CorruptVideoError as error:
        fail(f"{error} (not a readable video)")
    for flag, seconds in (("--start", args.start), ("--goal", args.goal)):
        if not 0.0 <= seconds <= info.duration:
            fail(f"{flag} {seconds:g} s is outside {video} (duration {info.duration:.2f} s)")
    if args.goal <= args.start:
        fail(f"--goal ({args.goal:g} s) must come after --start ({args.start:g} s)")

    # The builder's frame grid at the run's fps: sampled frame k is the video frame grid[k], at grid[k] / info.fps.
    grid = sample_frame_indices(info.num_frames, info.fps, fps)
    start_k = min(int(round(args.start * fps)), len(grid) - 1)
    goal_k = min(int(round(args.goal * fps)), len(grid) - 1)
    span_steps = (goal_k - start_k) // frames_per_step
    if span_steps < 1:
        fail(f"the span from --start {args.start:g} s to --goal {args.goal:g} s of {video} is shorter than one step "
             f"({frames_per_step} frame(s) at {fps:g} fps = {frames_per_step / fps:g} s)")
    context_steps = args.context_steps
    first_k = start_k - context_steps * frames_per_step + 1
    if first_k < 0:
        fail(f"--start {args.start:g} s leaves no room for {context_steps} context step(s) of {frames_per_step} "
             f"frame(s) at {fps:g} fps in {video}: the context needs --start >= "
             f"{(context_steps * frames_per_step - 1) / fps:g} s")
    goal_k = start_k + span_steps * frames_per_step
    if abs(grid[goal_k] / info.fps - args.goal) > 0.5 / fps:
        logger.info("--goal %g s is not a whole number of steps after --start: the goal is the frame at %.3f s",
                    args.goal, grid[goal_k] / info.fps)
    horizon = args.horizon or span_steps
    if horizon != span_steps:
        logger.warning("--horizon %d differs from the %d steps between --start and --goal: step i is compared with "
                       "the i-th labelled step after --start", horizon, span_steps)

    # Sampled frames from the first context frame to the goal frame; step j holds frames j*F .. j*F + F - 1.
    positions = np.arange(first_k, goal_k + 1)
    indices, timestamps = grid[positions], grid[positions] / info.fps

    split = case_split(config, video)
    if split in ("train", "validation"):
        logger.warning("%s is from a %s case of %s: the model was fitted or chosen on it, so what is inferred here is "
                       "no test (the test cases chose nothing)", video.name, split, args.checkpoint)
    part, labels, offsets, label_note = case_labels(video, args.labels_dir)
    labelled = None
    if labels is not None and spec != action_names():
        label_note = f"the model's action_spec is not SurgVU's ({len(spec)} dimensions): labels not compared"
        labels = None
    if labels is not None:
        arm_tools, tasks = labels_at(labels, offsets, part, timestamps)
        per_frame = torch.from_numpy(build_actions(arm_tools, tasks))[None]  # (1, frames, A)
        labelled = frames_to_steps(per_frame, frames_per_step)[0].numpy()  # (steps, A)
    else:
        logger.info("no labels: %s; only the inferred actions are printed", label_note)
        label_note = f"none ({label_note})"

    transform = ClipTransform(crop_size=config.encoder_config.crop_size)
    context_frames = context_steps * frames_per_step
    keep = np.r_[0:context_frames, len(positions) - frames_per_step:len(positions)]
    box = crop_box(info)  # the builder's default options, which training uses
    example = {"video_path": str(video), "frame_indices": indices[keep].tolist(), "crop_box": box,
               "case_id": video.parent.name, "actions": np.zeros((len(keep), config.action_dim), np.float32),
               "tasks": np.zeros(len(keep), np.int64), "tools": np.zeros((len(keep), 1), np.float32)}
    try:
        pixels = transform(example)["pixel_values_videos"].to(device)  # (frames, 3, crop, crop)
    except Exception as error:  # FrameUnavailableError, CorruptVideoError: both name the file
        fail(f"{error}")
    finally:
        transform.close()

    start_time = time.perf_counter()
    with torch.no_grad():
        latents = model.encode(pixels[None])  # (1, context + 1, N, D)
        context, goal = latents[:, :context_steps], latents[:, context_steps:]
        # The labelled action of each transition, paired as the model pairs them: the first `context_steps - 1` are
        # given between the context's steps, the next `horizon` are the ones the plan infers.
        transitions = None if labelled is None else model.transition_actions(torch.from_numpy(labelled)).numpy()
        context_actions = None
        if context_steps > 1:
            if transitions is not None:
                context_actions = torch.from_numpy(transitions[None, : context_steps - 1]).to(device)
            else:
                logger.info("no labels: the actions between the context steps are zeros")
        generator = torch.Generator().manual_seed(args.seed)
        try:
            output = model.plan(context, goal, horizon=horizon, num_samples=args.num_samples,
                                iterations=args.iterations, top_k=args.top_k, momentum=args.momentum,
                                std_momentum=args.std_momentum, generator=generator, context_actions=context_actions,
                                discrete_groups=derived, chunk_size=args.chunk_size, preset=args.preset,
                                action_prior=args.action_prior, seen_only=args.seen_only, states=states,
                                state_rule=args.state_rule)
        except ValueError as error:  # a prior the config lacks or that was computed for other actions
            fail(f"{where}: {error}")
        labelled_energy = None
        planned_labels = transitions[context_steps - 1 :] if transitions is not None else None
        if planned_labels is not None and len(planned_labels) == horizon:
            labelled_energy = float(model.energy(context, goal, torch.from_numpy(planned_labels[None]).to(device),
                                                 context_actions=context_actions, chunk_size=args.chunk_size,
                                                 states=states, state_rule=output.settings["state_rule"])[0])
    seconds = time.perf_counter() - start_time
    logger.info("planned in %.1f s on %s", seconds, device)

    actions = output.actions[0].cpu().numpy()
    start_used = float(grid[start_k] / info.fps)

    def step_time(step: int) -> float:
        """When the observation after `step` planned steps is taken (past the video's end with a long --horizon)."""
        k = start_k + step * frames_per_step
        return float(grid[k] / info.fps) if k < len(grid) else start_used + step * frames_per_step / fps

    steps = []
    for step in range(horizon):
        inferred = decode_action(actions[step], spec, groups, continuous)
        label = None
        if planned_labels is not None and step < len(planned_labels):
            label = decode_action(planned_labels[step], spec, groups, continuous)
        steps.append({
            "step": step + 1,
            "from": round(step_time(step), 4),
            "to": round(step_time(step + 1), 4),
            "inferred": inferred,
            "labelled": label,
            "match": {group: inferred[group] == label[group] for group, _ in groups} if label is not None else {},
        })
    matches = {}
    compared = [step for step in steps if step["labelled"] is not None]
    if compared:
        for group, dims in groups:
            count = sum(step["match"][group] for step in compared)
            matches[group] = {"matches": count, "steps": len(compared), "rate": count / len(compared),
                              "chance": 1.0 / (len(dims) + 1)}
    energies = output.energy_per_iteration[0].tolist()
    result = {
        "checkpoint": args.checkpoint,
        "config": where,
        "video": str(video),
        "case_split": split,
        "duration": info.duration,
        "fps": fps,
        "fps_from": fps_source,
        "frames_per_step": frames_per_step,
        "action_pairing": config.action_pairing,
        "start": args.start,
        "goal": args.goal,
        "start_used": start_used,
        "goal_used": float(grid[goal_k] / info.fps),
        "context_steps": context_steps,
        "horizon": horizon,
        "span_steps": span_steps,
        "frame_indices": {"context": indices[:context_frames].tolist(),
                          "goal": indices[len(positions) - frames_per_step:].tolist()},
        "crop_box": box,
        "settings": {**output.settings, "seed": args.seed, "chunk_size": args.chunk_size},
        "groups": {group: {"options": [spec[dim].split("/", 1)[1] for dim in dims] + ["none"],
                           "chance": 1.0 / (len(dims) + 1)} for group, dims in groups},
        "groups_derived_from_action_spec": derived is not None,
        "continuous": [spec[dim] for dim in continuous],
        "labels": label_note,
        "steps": steps,
        "matches": matches,
        "energy": float(output.energy[0]),
        "energy_per_iteration": energies,
        "elite_energy_per_iteration": output.elite_energy_per_iteration[0].tolist(),
        "best_energy_so_far": np.minimum.accumulate(energies).tolist(),
        "labelled_energy": labelled_energy,
        "actions": actions.tolist(),
        "action_mean": output.action_mean[0].cpu().numpy().tolist(),
        "labelled_actions": planned_labels.tolist() if planned_labels is not None else None,
    }
    print(format_report(result), flush=True)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(result, indent=2))
        os.replace(partial, path)
        print(f"\nplan: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

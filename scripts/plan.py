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
`--top_k`, `--momentum`, `--std_momentum` and `--readout` override its values; the horizon is the span's steps (or
`--horizon`), whatever the preset plans. A model with a state token (SurgVU videos have no states) takes the context's
states from `--states` (a JSON list of `--context_steps` lists of `state_dim` numbers), and each candidate's states
follow its own actions by `--state_rule` (`planning_surgical_wm.STATE_RULES`; default: the preset's, as
`vjepa2_ac_droid`'s `end_effector`). `--action_prior marginal|transition` starts the search from the training data's
action statistics that train_hf.py writes into the config, `--seen_only` proposes only the combinations of tools and
task seen in training; the report and the JSON name the preset, its readout and the prior.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

from modeling_surgical_wm import SurgicalWorldModel
from planning_surgical_wm import (
    ACTION_PRIORS,
    DEFAULT_PLANNING_PRESET,
    PLANNING_PRESETS,
    PLANNING_READOUTS,
    STATE_RULES,
)
from training_surgical_wm.arguments import DataArguments
from training_surgical_wm.loading import TRAINER_STATE, fail, time_base, training_settings
from training_surgical_wm.planning import SEARCH_OPTIONS, load_world_model, plan_video


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
    parser.add_argument("--readout", choices=PLANNING_READOUTS, default=None,
                        help="what the search returns: the final search distribution's most probable options (mean, as "
                             "V-JEPA 2-AC acts) or the lowest-energy sequence sampled (best); default: the preset's")
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
        if name in SEARCH_OPTIONS and name != "state_rule" and getattr(args, name) is None:  # a flag of this script
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
        f"{settings['top_k']}, momentum {settings['momentum']:g} (spread {settings['std_momentum']:g}"
        f"{', unbiased' if settings.get('unbiased_std') else ''}), "
        f"{settings['readout']} readout, seed {settings['seed']}",
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

    settings, settings_file = training_settings(args.checkpoint)
    if settings.get("dataset", "surgvu") != "surgvu":
        logger.warning("%s was trained on %s, not SurgVU: its frames were prepared another way", args.checkpoint,
                       settings["dataset"])
    fps, fps_source = time_base(args.fps, config, where, settings, settings_file)
    logger.info("one step: %d frame(s) at %g fps (fps from %s)", config.frames_per_step, fps, fps_source)

    result = plan_video(model, where, args.video, args.start, args.goal, checkpoint=args.checkpoint, fps=fps,
                        fps_source=fps_source, context_steps=args.context_steps, horizon=args.horizon,
                        labels_dir=args.labels_dir, search={name: getattr(args, name) for name in SEARCH_OPTIONS},
                        seed=args.seed, chunk_size=args.chunk_size,
                        states=None if states is None else states.to(device))
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

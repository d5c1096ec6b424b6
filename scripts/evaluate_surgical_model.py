#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Evaluates a surgical world model on SurgVU: world-model quality, surprise, and the SurgVU probes.

    python scripts/evaluate_surgical_model.py --checkpoint outputs/surgical_wm/best --test_data /data/surgvu \
        [--task_probe outputs/probe_task/best --tool_probe outputs/probe_tools/best | --train_probes] \
        [--split test] [--output report.json] [--plots plots/]

Clips are streamed through the model (decoded and encoded batch by batch, or read from a finished latent cache
given with `--cache_dir` whose key is this evaluation's and whose shards pass `--verify_cache`), never loaded whole.
The data options are train_hf.py's (`--test_data` is `--data_root`;
`--fps` defaults to the model config's `fps`, and steps are its `frames_per_step`); the case split is the one the
model's config records (`data_split`), and data split another way is refused. The default `--split test` holds the
cases that chose nothing: `validation` chose `best/` (the world model's and the probes') and `train` fitted them, so
those are refused unless `--allow_selection_split` is given, and the report then carries a warning. The report names
the split it scored and the split that chose the checkpoints. The report:
- world-model quality: latent L1 and cosine, teacher-forced (step t + 1 from the true steps 1..t) and rolled out
  (horizon h from step 1), next to the copy-the-last-context baseline; the same with each clip's actions swapped for
  those of a clip of another case, drawn by `--seed` (the labels of each step given to the transitions as the model's
  `action_pairing` pairs them, which the report names); the distribution of per-step surprise (the teacher-forced L1
  of each step); predictions and baselines are scored against the targets training's validation uses (a fine-tuned
  encoder's EMA target encoder's), and the report says which encoder gave the inputs and which the targets;
- SurgVU probes, when probes are given or trained (`--train_probes`): task recognition with the organisers' metric
  (every labelled frame of each video at `--eval_fps`, 1 fps by default, is scored; each clip's prediction is given
  to the frames of its time span and frames no clip covers count as Other; weighted F1 and accuracy per video, plain
  mean over videos), with `--fill nearest` and `--smooth_frames N` (a majority filter) as further rows and
  `--predictions_dir` writing the organisers' JSON per video; tool presence (mAP and class-averaged F1 per clip);
  each next to chance and to a majority-class baseline (task: also Other on every frame).
With `--dataset mmor` (MM-OR, per timepoint with `--clip_stride 1`) the report adds an MM-OR section: robot phase
and next action through their probes (classification reports pooled over the takes and per take; null next actions
skipped), and sterility-breach detection by a probe and by the world model's surprise, each thresholded at the
F1-best threshold of the validation takes (precision, recall, F1 of the breach class, AUROC, AUPRC). MM-OR scores
its test takes by default, and `--split validation` is refused: its thresholds would be fitted to the takes scored.
Action inference (`--action_inference_moments N`, 100 by default, 0: none; a model whose action_spec has categorical
groups): N (start, goal) moments drawn by `--seed` from the scored clips, each `--action_inference_context` observed
steps (the labelled actions between them given) and a goal `--action_inference_horizon` steps later; the world model's
CEM planner (batched over the moments of a batch of clips, KV-cached) infers the actions between them, its options
drawn first from `--action_inference_prior` (the training data's transition statistics in the model's config by
default, its marginals, or uniform) and, with `--action_inference_seen_only`, only among combinations seen in
training. Per action group, the planned options' accuracy next to copying the last context action, to what the
energy alone identifies (the labelled option below every other option of its group when only that group varies: no
planner, no prior; and how many options it ranks below the labelled one) and to chance (each option drawn as often
as it labels the training split's transitions, as the config's `action_prior` counts them; recounted from the labels
for an export without it), over all planned
transitions and where the labelled action changes; the energy of the inferred and of the labelled actions; the
teacher-forced L1 under another clip's actions over under the clip's own at transitions with and without an action
change, and per group where its option changes from "none", to "none" or between two options, next to how far the
latent moves there.
Metrics are the local `evaluate` modules in metrics/. It writes `--output` (JSON), prints a table and, with
`--plots`, saves PNG figures. `--push_to_hub` puts the headline figures into the model card's model-index.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from dataset_surgvu import BrokenFiles, collate_clips
from dataset_surgvu.catalog import DATASETS, PROBE_TARGETS
from dataset_surgvu.latent_cache import VERIFY_MODES, latent_cache_dir, latent_cache_keys
from planning_surgical_wm import PLANNING_READOUTS, step_options
from training_surgical_wm.accelerator import available_cores
from training_surgical_wm.arguments import DataArguments, parse_dataclasses
from training_surgical_wm.data import (
    SPLIT_OPTIONS,
    dataset_entry,
    describe_split,
    load_dataset_splits,
    requested_split,
    resolve_split_options,
    split_definition,
    split_mismatch,
)
from training_surgical_wm.evaluation import (
    CALIBRATION_SPLIT,
    SWAP_PARTNERS,
    latent_errors,
    load_metric,
    swap_partners,
    world_model_errors,
)
from training_surgical_wm.loading import fail, load_checkpoint, time_base, training_settings
from training_surgical_wm.probes import load_probe, split_label_counts


REPO_ROOT = Path(__file__).resolve().parent.parent
CHANCE_DRAWS = 5
SURPRISE_PERCENTILES = (5, 25, 50, 75, 95, 99)


@dataclass
class EvaluationArguments:
    checkpoint: str = field(
        default="outputs/surgical_wm/best",
        metadata={"help": "A world model (train_hf.py export) or a probe (train_probe.py export): a directory or a "
                          "Hub id."},
    )
    test_data: str | None = field(default=None, metadata={"help": "SurgVU folder (surgvu24/ and labels/): "
                                                                   "the same as --data_root."})
    split: str | None = field(
        default=None,
        metadata={"help": "The split scored: " + "; ".join(f"{entry.display_name} {', '.join(entry.evaluation_splits)}"
                                                           for entry in DATASETS.values())
                          + ". Default: test where the dataset has one, else validation. MM-OR's detection "
                            f"thresholds are calibrated on {CALIBRATION_SPLIT}, which it then does not score."},
    )
    allow_selection_split: bool = field(
        default=False, metadata={"help": "Report on a split that chose or fitted the checkpoints (validation, train, "
                                         "all), with a warning in the report."}
    )
    output: str = field(default="report.json", metadata={"help": "Where the JSON report goes."})
    plots: str | None = field(default=None, metadata={"help": "A folder for the PNG figures (none without it)."})
    task_probe: str | None = field(default=None, metadata={"help": "A task probe (train_probe.py --target task)."})
    tool_probe: str | None = field(default=None, metadata={"help": "A tool probe (train_probe.py --target tools)."})
    phase_probe: str | None = field(default=None, metadata={"help": "MM-OR: a robot-phase probe."})
    next_action_probe: str | None = field(default=None, metadata={"help": "MM-OR: a next-action probe."})
    breach_probe: str | None = field(default=None, metadata={"help": "MM-OR: a sterility-breach probe."})
    train_probes: bool = field(default=False, metadata={"help": "Train the dataset's probes first "
                                                                "(scripts/train_probe.py, on the train split) into "
                                                                "--probe_dir: task and tools, or phase, next_action "
                                                                "and breach; they share one latent cache (--cache_dir,"
                                                                " else <probe_dir>/latent_cache), so each clip is "
                                                                "encoded once."})
    probe_dir: str | None = field(default=None, metadata={"help": "Where --train_probes writes (default: next to "
                                                                  "--output, <output>_probes/)."})
    probe_epochs: int = field(default=20, metadata={"help": "Epochs of --train_probes."})
    batch_size: int = field(default=8, metadata={"help": "Clips per forward pass."})
    max_clips: int | None = field(default=None, metadata={"help": "Evaluate the first N clips of the split only."})
    device: str | None = field(default=None, metadata={"help": "cuda, mps or cpu (default: cuda when available)."})
    seed: int = field(default=0, metadata={"help": "Seed of the chance baselines and of the action swap."})
    eval_fps: float = field(default=1.0, metadata={"help": "SurgVU task metric: the frame rate of the ground truth "
                                                           "scored, every labelled frame of each video (the "
                                                           "organisers' 1 fps)."})
    fill: str = field(default="other", metadata={"help": "SurgVU task metric: frames no clip covers count as Other, "
                                                         "as the organisers fill them (`other`); `nearest` adds a row "
                                                         "that gives them the nearest covered frame's prediction."})
    smooth_frames: int = field(default=1, metadata={"help": "SurgVU task metric: adds a row with a majority filter "
                                                            "over N frames of the per-frame predictions (1: none)."})
    predictions_dir: str | None = field(default=None, metadata={"help": "Write each video's task predictions in "
                                                                        "the organisers' format: "
                                                                        "<video>.json, [{frame_nr, surgical_step}]."})
    push_to_hub: bool = field(default=False, metadata={"help": "Put the headline figures into the model card of "
                                                               "--hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "<user>/<repo> of the evaluated world model."})
    action_inference_moments: int = field(default=100, metadata={"help": "Action inference: plan between this many "
                                                                         "(start, goal) moments of the scored clips, "
                                                                         "a seeded choice (0: no action inference)."})
    action_inference_context: int = field(default=4, metadata={"help": "Action inference: observed steps up to each "
                                                                       "start (at least 2: the last transition among "
                                                                       "them is the copy-last baseline)."})
    action_inference_horizon: int = field(default=1, metadata={"help": "Action inference: transitions planned from "
                                                                       "each start to its goal."})
    action_inference_samples: int = field(default=100, metadata={"help": "Action inference: CEM samples per "
                                                                         "iteration (top 10 refitted, momentum 0.15)."})
    action_inference_iterations: int = field(default=5, metadata={"help": "Action inference: CEM iterations."})
    action_inference_prior: str = field(default="transition", metadata={
        "help": "Action inference: where CEM starts its options (`plan(action_prior=...)`): the training data's "
                "step-to-step transitions from the last context action (the default: where uniform options leave "
                "the planner at chance), its marginals, or uniform options.",
        "choices": ["uniform", "marginal", "transition"]})
    action_inference_seen_only: bool = field(default=False, metadata={"help": "Action inference: propose only the "
                                                                              "combinations of options seen in one "
                                                                              "training step."})
    action_inference_readout: str = field(default="best", metadata={
        "help": "Action inference: what the planner returns (`plan(readout=...)`): the lowest-energy sequence sampled "
                "(the default, the surgical_wm preset's) or the final search distribution's most probable options "
                "(mean, as V-JEPA 2-AC's planner acts).",
        "choices": list(PLANNING_READOUTS)})


# ------------------------------------------------------------------------------------------------------- loading
def train_probes(args: EvaluationArguments, data_args: DataArguments) -> dict[str, str]:
    """Trains the dataset's probes with scripts/train_probe.py (on the train split); returns their best/ by target."""
    probe_dir = Path(args.probe_dir) if args.probe_dir else Path(args.output).with_suffix("").parent / (
        Path(args.output).stem + "_probes")
    data_options = []
    for item in fields(DataArguments):
        value = getattr(data_args, item.name)
        if isinstance(value, list):
            data_options += [f"--{item.name}", *map(str, value)] if value else []
        elif value is not None:
            data_options += [f"--{item.name}", str(value)]
    if data_args.cache_dir is None and not data_args.no_cache:  # one latent cache for every probe: encoded once
        data_options += ["--cache_dir", str(probe_dir / "latent_cache")]
    targets = tuple(dataset_entry(data_args).targets)  # task and tools, or phase, next_action and breach
    found = {}
    for target in targets:
        output_dir = probe_dir / target
        command = [sys.executable, str(REPO_ROOT / "scripts" / "train_probe.py"), "--world_model", args.checkpoint,
                   "--target", target, "--output_dir", str(output_dir), "--num_epochs", str(args.probe_epochs),
                   "--report_to", "none", "--seed", str(args.seed), *data_options]
        if target == "breach":
            command += ["--class_weights", "balanced"]  # breaches are rare
        if args.device:
            command += ["--device", args.device]
        print(f"training the {target} probe: {' '.join(command[1:])}", flush=True)
        result = subprocess.run(command, env={**os.environ, "TQDM_DISABLE": "1"})
        if result.returncode != 0:
            fail(f"training the {target} probe failed (exit {result.returncode}); see its log above")
        found[target] = str(output_dir / "best")
    return found


def clip_fps(fps_flag: float | None, config, checkpoint: str | None = None) -> float:
    """The frame rate to sample the clips at, as planning finds it (`time_base`): `--fps`, else the model config's
    `fps` (the data's when it was trained; its `frames_per_step` is read from the config where steps are formed),
    else the run's data options beside `checkpoint` (an export from before the config held `fps`), else the data
    default. A note when `--fps` overrides the model's own."""
    settings, settings_file = training_settings(checkpoint) if checkpoint else ({}, None)
    fps, _ = time_base(fps_flag, config, f"{checkpoint}/config.json", settings, settings_file)
    if fps_flag is not None and config.fps is not None and float(config.fps) != float(fps_flag):
        print(f"note: --fps {fps_flag:g}, but the model was trained on clips at {config.fps:g} fps", flush=True)
    return fps


def selection_splits(models: dict) -> list[str]:
    """The splits that fitted or chose the checkpoints (`models`: path -> world model or probe): train, and each one's
    recorded `selection_split` (validation for a checkpoint saved before splits were recorded)."""
    return sorted({"train"} | {(model.config.data_split or {}).get("selection_split", "validation")
                               for model in models.values()})


def reused_splits(args: EvaluationArguments, models: dict) -> list[str]:
    """The splits scored by `--split` that fitted or chose the checkpoints (`models`: path -> model); one line
    refusing them without `--allow_selection_split`."""
    chosen_on = selection_splits(models)
    reused = sorted(chosen_on if args.split == "all" else set(chosen_on) & {args.split})
    if reused and not args.allow_selection_split:
        fail(f"--split {args.split}: the {' and '.join(reused)} cases fitted or chose the checkpoints, so figures on "
             "them are no test; score --split test, or pass --allow_selection_split to report them with a warning")
    return reused


def check_data_split(models: dict, current: dict) -> None:
    """Stops with one line when a checkpoint (`models`: path -> model) was trained on data split otherwise than
    `current` (a `split_definition`, or the `requested_split` before the data is built): cases it was fitted or chosen
    on could be scored."""
    for path, model in models.items():
        recorded = model.config.data_split
        if recorded is None:
            if "groups" in current:
                print(f"note: {path} records no data split (saved before splits were recorded): taken as chosen on "
                      "validation; the cases it was trained on cannot be checked", flush=True)
            continue
        mismatch = split_mismatch(recorded, current)
        if mismatch:
            options = [{name: value for name, value in split.items() if name != "groups"}
                       for split in (recorded, current)]
            fail(f"{path} was {mismatch}; " + (
                "the same split options put other cases in each split here: score the data it was trained on"
                if split_mismatch(*options) is None
                else f"leave {', '.join(f'--{name}' for name in SPLIT_OPTIONS)} unset to use its split"))


# ------------------------------------------------------------------------------------------------------- running
class Accumulator:
    """Sums over clips of per-clip, per-step values: `add(name, values (B, K))`, then `mean(name, clips)`."""

    def __init__(self):
        self.sums = {}

    def add(self, name: str, values: torch.Tensor) -> None:
        values = values.double().sum(0).cpu()
        self.sums[name] = self.sums[name] + values if name in self.sums else values

    def mean(self, name: str, clips: int) -> list[float]:
        return (self.sums[name] / max(clips, 1)).tolist()


def per_step_actions(world_model, actions: torch.Tensor, num_steps: int) -> torch.Tensor:
    """SurgVU's per-frame actions `(B, T, A)` as the model's per-step actions `(B, S, A)`."""
    from modeling_surgical_wm import frames_to_steps

    if actions.shape[1] == num_steps:
        return actions
    return frames_to_steps(actions, world_model.config.frames_per_step)


def clip_latents_and_actions(world_model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's latents (cached, or encoded here), its target latents and its actions, one per step. A model that
    still holds both encoders of a fine-tuned run (a checkpoint) is scored as training's validation scores it and as
    its default export computes: its EMA target encoder gives the inputs and the targets. Otherwise the one encoder
    is its own target."""
    if "latents" in batch:
        latents = batch["latents"].to(device)
    else:
        pixel_values_videos = batch["pixel_values_videos"].to(device)
        latents = world_model.encode_targets(pixel_values_videos)  # the EMA target encoder's when it holds one
    return latents, latents, per_step_actions(world_model, batch["actions"].to(device), latents.shape[1])


def encoder_roles(world_model, settings: dict | None = None) -> dict[str, str]:
    """Which encoder produced the inputs and which the targets, for the report; `settings`, the run's training
    arguments (`training_settings`), say whether an export's one encoder was fine-tuned and which of the two it is."""
    if world_model.target_encoder is None:
        if (settings or {}).get("finetune_encoder"):
            kept = ("the fine-tuned online encoder" if settings.get("export_encoder") == "online"
                    else "the EMA target encoder of the fine-tuned run")
            return {"inputs": f"{kept} (the export's one encoder)", "targets": f"{kept} (its own target)"}
        return {"inputs": "the frozen encoder", "targets": "the frozen encoder (its own target)"}
    role = "the EMA target encoder of the fine-tuned run (as training's validation and the default export)"
    return {"inputs": role, "targets": f"{role}, its own target"}


class SwapPartners:
    """The swapped-actions test's other actions: each scored clip (a row of `split` among `indices`) takes the actions
    of its partner, drawn by `swap_partners` among the scored clips of other videos (cases or takes)."""

    def __init__(self, split, indices: list[int], seed: int):
        column = next((name for name in ("case_id", "take") if name in split.column_names), None)
        videos = split.select_columns([column])[column] if column else list(range(len(split)))
        partners = swap_partners([videos[int(row)] for row in indices], seed)
        self.rows = {int(row): int(indices[partner]) if partner >= 0 else -1
                     for row, partner in zip(indices, partners)}
        self.actions = split.select_columns(["actions"]).with_format("torch")

    def __call__(self, world_model, batch: dict, num_steps: int, device) -> torch.Tensor | None:
        """The batch's clips' partners' actions per step `(B, S, A)`; None for a single scored clip."""
        rows = [self.rows[int(row)] for row in batch["sample_id"]]
        if min(rows) < 0:
            return None
        actions = self.actions[rows]["actions"].float().to(device)
        return per_step_actions(world_model, actions, num_steps)


def warn_line(message: str) -> None:
    print(f"warning: {message}", flush=True)


@torch.no_grad()
def run(args, world_model, probes: dict, split, indices: list[int], clips, device,
        partners: SwapPartners | None = None) -> dict:
    """Streams the clips once; returns the per-step error means, the surprise values and the probe outputs.
    `partners`: the swapped-actions test's (built from `split`, `indices` and `--seed` when None)."""
    surgvu = "video_path" in split.column_names
    if surgvu:
        rows = split.select_columns(["video_path", "frame_indices", "has_labels"])
        video_paths, frame_indices, has_labels = rows["video_path"], rows["frame_indices"], rows["has_labels"]
    else:  # MM-OR: its probes are scored per timepoint by `run_mmor`
        video_paths = frame_indices = has_labels = None
    loader = DataLoader(Subset(clips, indices), batch_size=args.batch_size, shuffle=False,
                        num_workers=min(args.num_workers, available_cores()), collate_fn=collate_clips)
    broken = BrokenFiles(warn_line)
    sums, swap_sums, count, swap_count, changed = Accumulator(), Accumulator(), 0, 0, 0
    surprise = []
    partners = partners if partners is not None else SwapPartners(split, indices, args.seed)
    outputs = {target: {"scores": [], "labels": [], "sample_ids": []} for target in probes}
    for batch in loader:
        broken.add(batch.get("broken_clips", []))
        if "sample_id" not in batch:  # every clip of the batch failed to decode
            continue
        latents, targets, actions = clip_latents_and_actions(world_model, batch, device)
        errors = world_model_errors(world_model, latents, actions, targets)
        for name, values in errors.items():
            sums.add(name, values)
        count += len(latents)
        surprise.append(errors["teacher_forced_l1"].flatten().cpu())
        other = partners(world_model, batch, latents.shape[1], device)
        if other is not None:
            for name, values in world_model_errors(world_model, latents, other, targets, baselines=False).items():
                swap_sums.add(name, values)
            swap_count += len(latents)
            changed += (other != actions).flatten(1).any(1).sum().item()

        if not probes:
            continue
        labelled = torch.tensor([has_labels[int(i)] for i in batch["sample_id"]], dtype=torch.bool)
        if labelled.any():
            for target, probe in probes.items():
                logits = probe(latents=latents[labelled.to(device)]).logits.float().cpu()
                scores = logits.softmax(-1) if target == "task" else logits.sigmoid()
                out = outputs[target]
                out["scores"].append(scores)
                out["labels"].append(batch["tasks"][labelled][:, -1] if target == "task"
                                     else batch["tools"][labelled][:, -1])
                out["sample_ids"].append(batch["sample_id"][labelled])
    if broken.count:
        print(f"skipped {broken.count} clip(s) that failed to decode: {broken.summary()}", flush=True)
    for out in outputs.values():
        for name in list(out):
            out[name] = torch.cat(out[name]) if out[name] else torch.zeros(0)
    return {"sums": sums, "swap_sums": swap_sums, "count": count, "swap_count": swap_count, "swap_changed": changed,
            "surprise": torch.cat(surprise) if surprise else torch.zeros(0), "probes": outputs,
            "video_paths": video_paths, "frame_indices": frame_indices,
            "skipped_clips": {"clips": broken.count, "files": broken.clips}}


# ------------------------------------------------------------------------------------------------------- report
def world_model_section(result: dict) -> dict:
    sums, swap_sums, count = result["sums"], result["swap_sums"], result["count"]
    section = {"num_clips": count}
    for mode, baseline_name in (("teacher_forced", "copy_last_context"), ("rollout", "copy_last_context")):
        section[mode] = {
            "l1": sums.mean(f"{mode}_l1", count), "cosine": sums.mean(f"{mode}_cosine", count),
            f"{baseline_name}_l1": sums.mean(f"{mode}_copy_l1", count),
            f"{baseline_name}_cosine": sums.mean(f"{mode}_copy_cosine", count),
        }
    section["horizons"] = list(range(1, len(section["rollout"]["l1"]) + 1))
    section["teacher_forced"]["note"] = "entry t: step t + 1 predicted from the true steps 1..t; baseline: step t"
    section["rollout"]["note"] = "entry h: step 1 + h imagined from step 1 alone; baseline: step 1 (nothing moves)"
    swap_count = result["swap_count"]
    section["swapped_actions"] = {
        "num_clips": swap_count,
        "clips_with_different_actions": result["swap_changed"],
        "other_actions": SWAP_PARTNERS,
        "teacher_forced": {"l1": swap_sums.mean("teacher_forced_l1", swap_count),
                           "cosine": swap_sums.mean("teacher_forced_cosine", swap_count)} if swap_count else None,
        "rollout": {"l1": swap_sums.mean("rollout_l1", swap_count),
                    "cosine": swap_sums.mean("rollout_cosine", swap_count)} if swap_count else None,
    }
    values = result["surprise"].double().numpy()
    counts, edges = np.histogram(values, bins=30) if len(values) else (np.zeros(0), np.zeros(0))
    section["surprise"] = {
        "definition": "teacher-forced latent L1 of each predicted step (step t + 1 from the true steps 1..t)",
        "num_steps": int(len(values)),
        "mean": float(values.mean()) if len(values) else None,
        "std": float(values.std()) if len(values) else None,
        "percentiles": {str(p): float(np.percentile(values, p)) for p in SURPRISE_PERCENTILES} if len(values) else {},
        "histogram": {"edges": edges.tolist(), "counts": counts.astype(int).tolist()},
    }
    return section


def headline(values: dict, keys: tuple) -> dict:
    return {key: values[key] for key in keys}


def task_ground_truth(split, indices: list[int], data_args: DataArguments, fps: float) -> dict:
    """Video path -> `TaskFrames`: every labelled frame, on a `fps` grid, of each video the evaluated labelled clips
    come from (frames that no clip covers included: the organisers score them all). A video that cannot be read now
    (broken since the dataset was built) has no frame count: it is named and left out."""
    from dataset_surgvu import case_task_frames, get_build_info

    columns = split.select_columns(["case_id", "part", "video_path", "has_labels"])[:]
    videos = {}
    for index in indices:
        if columns["has_labels"][index]:
            videos.setdefault(columns["case_id"][index], {})[columns["part"][index]] = columns["video_path"][index]
    unreadable = get_build_info(split).corrupt_videos
    truth = {}
    for case_id, parts in sorted(videos.items()):
        frames = case_task_frames(data_args.data_root, case_id, fps, data_args.labels_dir, unreadable)
        for part, path in sorted(parts.items()):
            if part in frames:
                truth[path] = frames[part]
            else:
                print(f"note: {path} cannot be read now: its frames are left out of the task metric", flush=True)
    if not truth:
        fail(f"no video of the evaluated clips can be read for the task metric ({', '.join(sorted(videos))})")
    return truth


def covered_predictions(result: dict, truth: dict, clip_predictions: np.ndarray, sample_fps: float) -> dict:
    """Video path -> the class of each ground-truth frame from the clips, -1 where no clip covers it. A clip covers
    the frames of its time span, from its first sampled frame to one sample period after its last; where clips
    overlap, the later clip's prediction is kept."""
    predictions = {video: np.full(len(frames.frame_indices), -1, dtype=np.int64) for video, frames in truth.items()}
    for prediction, sample in zip(clip_predictions, result["probes"]["task"]["sample_ids"].tolist()):
        video, clip_frames = result["video_paths"][sample], result["frame_indices"][sample]
        if video not in truth:
            continue
        frames = truth[video]
        end = clip_frames[-1] + frames.video_fps / sample_fps
        predictions[video][(frames.frame_indices >= clip_frames[0]) & (frames.frame_indices < end)] = prediction
    return predictions


def fill_nearest(predictions: np.ndarray) -> np.ndarray:
    """Frames without a prediction (-1) take the nearest predicted frame's class (the earlier one on a tie); a video
    with no prediction at all stays as it is."""
    covered = np.flatnonzero(predictions >= 0)
    if not len(covered):
        return predictions.copy()
    position = np.searchsorted(covered, np.arange(len(predictions)))
    before = covered[np.clip(position - 1, 0, len(covered) - 1)]
    after = covered[np.clip(position, 0, len(covered) - 1)]
    frames = np.arange(len(predictions))
    nearest = np.where(np.abs(after - frames) < np.abs(frames - before), after, before)
    return np.where(predictions >= 0, predictions, predictions[nearest])


def majority_filter(predictions: np.ndarray, window: int, num_classes: int) -> np.ndarray:
    """Each frame's most frequent class over `window` frames centred on it (cut at the video's ends; an even window
    reaches one frame further ahead). A tie keeps the frame's own class when it is among the most frequent, else
    the lowest class index: the result does not depend on the order of the classes' counting."""
    if window <= 1 or not len(predictions):
        return predictions.copy()
    frames = np.arange(len(predictions))
    counts = np.vstack([np.zeros(num_classes, dtype=np.int64), np.eye(num_classes, dtype=np.int64)[predictions]])
    counts = counts.cumsum(0)  # (F + 1, C): class counts of the frames before each frame
    lower = np.maximum(frames - (window - 1) // 2, 0)
    upper = np.minimum(frames + window // 2 + 1, len(predictions))
    in_window = counts[upper] - counts[lower]  # (F, C)
    smoothed = in_window.argmax(1)
    keep = in_window[frames, predictions] == in_window.max(1)
    return np.where(keep, predictions, smoothed)


def task_section(result: dict, truth: dict, train_counts: np.ndarray, args: EvaluationArguments,
                 sample_fps: float) -> tuple[dict, dict]:
    """The organisers' task metric on every labelled frame at `--eval_fps` for the probe (frames no clip covers
    counting as Other; with `--fill nearest` also as their nearest covered frame; with `--smooth_frames` also
    smoothed), chance, the training-majority class and Other everywhere. Returns the section and the submitted
    predictions, video path -> class per frame (-1: none, the organisers count it as Other)."""
    from dataset_surgvu import TASK_CLASSES

    other = TASK_CLASSES.index("Other")
    predicted = result["probes"]["task"]["scores"].argmax(-1).numpy()
    videos = sorted(truth, key=lambda path: Path(path).stem)
    references = np.concatenate([truth[video].tasks for video in videos])
    video_ids = [Path(video).stem for video in videos for _ in truth[video].tasks]
    metric = load_metric("surgvu_task")

    def score(per_video: dict) -> dict:
        predictions = np.concatenate([per_video[video] for video in videos])
        return metric.compute(predictions=predictions, references=references, video_ids=video_ids)

    def everywhere(label: int) -> dict:
        return score({video: np.full(len(truth[video].tasks), label) for video in videos})

    covered = covered_predictions(result, truth, predicted, sample_fps)
    probe = score(covered)
    rows = {"probe": {**headline(probe, ("f1", "accuracy", "precision", "recall")),
                      "note": "frames that no clip covers count as Other, as the organisers fill them"}}
    submitted = covered
    if args.fill == "nearest":
        submitted = {video: fill_nearest(values) for video, values in covered.items()}
        rows["probe_nearest_fill"] = {**headline(score(submitted), ("f1", "accuracy", "precision", "recall")),
                                      "note": "frames that no clip covers take the nearest covered frame's class"}
    if args.smooth_frames > 1:
        submitted = {video: majority_filter(np.where(values >= 0, values, other), args.smooth_frames,
                                            len(TASK_CLASSES)) for video, values in submitted.items()}
        rows["probe_smoothed"] = {**headline(score(submitted), ("f1", "accuracy", "precision", "recall")),
                                  "note": f"a majority filter over {args.smooth_frames} frames of the "
                                          f"{args.fill}-filled predictions"}
    rng = np.random.default_rng(args.seed)
    draws = [score(covered_predictions(result, truth, rng.integers(len(TASK_CLASSES), size=len(predicted)),
                                       sample_fps)) for _ in range(CHANCE_DRAWS)]
    rows["chance"] = {**{key: float(np.mean([draw[key] for draw in draws])) for key in ("f1", "accuracy")},
                      "note": f"uniform random class per clip, frames no clip covers Other; mean of "
                              f"{CHANCE_DRAWS} draws"}
    majority_class = int(train_counts.argmax())
    rows["majority"] = {**headline(everywhere(majority_class), ("f1", "accuracy")),
                        "class": TASK_CLASSES[majority_class],
                        "note": "the most frequent last-step task of the training clips, on every frame"}
    rows["all_other"] = {**headline(everywhere(other), ("f1", "accuracy")),
                         "note": "Other on every frame (about 75% of real SurgVU frames are Other)"}
    filled = np.concatenate([covered[video] for video in videos])
    confusion = np.zeros((len(TASK_CLASSES), len(TASK_CLASSES)), dtype=int)
    np.add.at(confusion, (references, np.where(filled >= 0, filled, other)), 1)
    section = {
        "metric": "SurgVU 2024 category 2: per-frame weighted F1 and accuracy per video, then the mean over videos; "
                  "every labelled frame at eval_fps is scored, frames without a prediction count as Other",
        "eval_fps": args.eval_fps, "num_clips": int(len(predicted)), "num_frames": probe["num_frames"],
        "num_videos": probe["num_videos"], "missing_frames": probe["missing_frames"],
        **rows,
        "submitted": [name for name in rows if name.startswith("probe")][-1],  # the row --predictions_dir holds
        "per_video": probe["per_video"],
        "classes": list(TASK_CLASSES),
        "confusion_matrix": confusion.tolist(),
    }
    return section, submitted


def write_predictions(submitted: dict, directory: Path) -> list[str]:
    """One `<video>.json` per video in the organisers' format, `[{"frame_nr": 0, "surgical_step": 3}, ...]`: frame_nr
    is the frame's index on the `--eval_fps` grid; frames without a prediction are left out (the organisers count
    them as Other)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for video, values in sorted(submitted.items()):
        path = directory / f"{Path(video).stem}.json"
        rows = [{"frame_nr": frame, "surgical_step": int(value)} for frame, value in enumerate(values) if value >= 0]
        path.write_text(json.dumps(rows))
        written.append(str(path))
    return written


def tools_section(result: dict, train_prevalence: np.ndarray, seed: int) -> dict:
    from dataset_surgvu import TOOL_CLASSES
    from sklearn.metrics import multilabel_confusion_matrix

    out = result["probes"]["tools"]
    scores, labels = out["scores"].numpy(), out["labels"].numpy().astype(int)
    metric = load_metric("tool_presence")

    def score(values):
        return metric.compute(predictions=values.tolist(), references=labels.tolist(), class_names=list(TOOL_CLASSES))

    probe = score(scores)
    rng = np.random.default_rng(seed)
    draws = [score(rng.random(scores.shape)) for _ in range(CHANCE_DRAWS)]
    chance = {key: float(np.mean([draw[key] for draw in draws])) for key in ("mAP", "f1")}
    majority = score(np.broadcast_to(train_prevalence, scores.shape).copy())
    return {
        "metric": "per clip (tools installed at its last step): mAP over the classes present, and F1 at 0.5 "
                  "averaged over those classes (SurgToolLoc's)",
        "num_clips": int(len(scores)), "classes_evaluated": probe["classes_evaluated"],
        "probe": headline(probe, ("mAP", "f1")),
        "chance": {**chance, "note": f"uniform random scores, mean of {CHANCE_DRAWS} draws"},
        "majority": {**headline(majority, ("mAP", "f1")),
                     "note": "each tool's training prevalence as its score for every clip"},
        "average_precision": probe["average_precision"], "per_class_f1": probe["per_class_f1"],
        "classes": list(TOOL_CLASSES),
        "confusion_matrices": multilabel_confusion_matrix(labels, (scores >= 0.5).astype(int),
                                                          labels=list(range(len(TOOL_CLASSES)))).tolist(),
    }


def print_table(report: dict) -> None:
    section = report["world_model"]
    print(f"\n{report['split']} split of {report['test_data']}: {section['num_clips']} clips; the checkpoints were "
          f"chosen on the {report['selection_split']} split")
    if "warning" in report:
        print(f"WARNING: {report['warning']}")
    print(f"inputs from {report['encoders']['inputs']}; targets from {report['encoders']['targets']}")
    print(f"the action of transition t -> t + 1: the labels at {'t + 1' if report['action_pairing'] == 'next' else 't'}"
          f" (action_pairing {report['action_pairing']!r})")
    print("World model: latent L1 (cosine)")
    print(f"{'':>4} {'teacher-forced':>16} {'copy last':>16} {'rollout':>16} {'copy context':>16} "
          f"{'rollout, swapped':>18}")
    teacher, rollout = section["teacher_forced"], section["rollout"]
    swap = section["swapped_actions"]["rollout"]
    for index, horizon in enumerate(section["horizons"]):
        cells = [(teacher["l1"][index], teacher["cosine"][index]),
                 (teacher["copy_last_context_l1"][index], teacher["copy_last_context_cosine"][index]),
                 (rollout["l1"][index], rollout["cosine"][index]),
                 (rollout["copy_last_context_l1"][index], rollout["copy_last_context_cosine"][index])]
        line = " ".join(f"{l1:8.4f} ({cos:5.3f})" for l1, cos in cells)
        extra = f"{swap['l1'][index]:10.4f} ({swap['cosine'][index]:5.3f})" if swap else f"{'n/a':>18}"
        print(f"{horizon:>4} {line} {extra}")
    surprise = section["surprise"]
    if surprise["num_steps"]:
        print(f"surprise per step: mean {surprise['mean']:.4f}, std {surprise['std']:.4f}, median "
              f"{surprise['percentiles']['50']:.4f}, 95th percentile {surprise['percentiles']['95']:.4f} "
              f"({surprise['num_steps']} steps)")
    probes = report.get("surgvu_probes", {})
    if "task" in probes:
        task = probes["task"]
        print(f"\nTask recognition ({task['num_videos']} videos, {task['num_frames']} frames scored at "
              f"{task['eval_fps']:g} fps, {task['missing_frames']} without a prediction; {task['num_clips']} clips), "
              "mean over videos")
        print(f"{'':>22} {'weighted F1':>12} {'accuracy':>10}")
        rows = {"probe": "probe", "probe_nearest_fill": "probe, nearest fill", "probe_smoothed": "probe, smoothed",
                "chance": "chance", "majority": "majority", "all_other": "all Other"}
        for name, title in rows.items():
            if name in task:
                print(f"{title:>22} {task[name]['f1']:12.3f} {task[name]['accuracy']:10.3f}")
    if "tools" in probes:
        tools = probes["tools"]
        print(f"\nTool presence ({tools['num_clips']} clips, {tools['classes_evaluated']} classes present)")
        print(f"{'':>10} {'mAP':>8} {'F1':>8}")
        for name in ("probe", "chance", "majority"):
            print(f"{name:>10} {tools[name]['mAP']:8.3f} {tools[name]['f1']:8.3f}")
    mmor = report.get("mmor")
    if mmor:
        print(f"\nMM-OR, {mmor['split']} takes {', '.join(mmor['takes'])}: {mmor['timepoints']} timepoints "
              f"(detection thresholds calibrated on the {mmor['calibration_split']} takes)")
        for target in ("phase", "next_action"):
            if target in mmor:
                pooled = mmor[target]["pooled"]
                print(f"{target:>12}: accuracy {pooled['accuracy']:.3f}, macro F1 {pooled['macro_f1']:.3f} "
                      f"({pooled['timepoints']} timepoints)")
        breach = mmor["breach"]
        print(f"sterility breach ({breach['positives']} of {breach['timepoints']} timepoints), breach class:")
        print(f"{'':>12} {'precision':>9} {'recall':>7} {'F1':>6} {'AUROC':>6} {'AUPRC':>6} {'threshold':>10} "
              f"{'calibrated on':>13} {'scored on':>10}")
        for way in ("supervised", "surprise"):
            if way in breach:
                values = breach[way]["pooled"]
                cells = [values[key] for key in ("precision", "recall", "f1", "auroc", "auprc")]
                print(f"{way:>12} " + " ".join(f"{value:>{width}.3f}" if value is not None else f"{'n/a':>{width}}"
                                                for value, width in zip(cells, (9, 7, 6, 6, 6)))
                      + f" {breach[way]['threshold']:>10.4f} {breach[way]['calibration_split']:>13} "
                        f"{breach[way]['scored_split']:>10}")
    elif not probes:
        print("\nSurgVU probes: none given (--task_probe / --tool_probe, or --train_probes)")
    if "action_inference" in report:
        print_action_inference(report["action_inference"])


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path, dpi: int = 120) -> str:
    """Lays `figure` out, writes it to `path` and closes it; returns the path."""
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return str(path)


def save_plots(report: dict, surprise: np.ndarray, directory: Path) -> list[str]:
    plt = pyplot()

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    section = report["world_model"]
    horizons = section["horizons"]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(horizons, section["rollout"]["l1"], "o-", label="rollout")
    axis.plot(horizons, section["rollout"]["copy_last_context_l1"], "o--", label="copy context (rollout baseline)")
    axis.plot(horizons, section["teacher_forced"]["l1"], "s-", label="teacher-forced (step t + 1)")
    axis.plot(horizons, section["teacher_forced"]["copy_last_context_l1"], "s--", label="copy last (teacher-forced)")
    if section["swapped_actions"]["rollout"]:
        axis.plot(horizons, section["swapped_actions"]["rollout"]["l1"], "x:", label="rollout, swapped actions")
    axis.set_xlabel("horizon (steps)")
    axis.set_ylabel("latent L1")
    axis.set_title("World-model error per horizon")
    axis.legend(fontsize=7)
    written.append(save_figure(figure, directory / "error_per_horizon.png"))

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(surprise, bins=30)
    axis.set_xlabel("surprise: teacher-forced latent L1 per step")
    axis.set_ylabel("steps")
    axis.set_title(f"Surprise ({len(surprise)} steps)")
    written.append(save_figure(figure, directory / "surprise_histogram.png"))

    probes = report.get("surgvu_probes", {})
    if "task" in probes:
        task = probes["task"]
        matrix = np.array(task["confusion_matrix"])
        figure, axis = plt.subplots(figsize=(7, 6))
        axis.imshow(matrix, cmap="Blues")
        axis.set_xticks(range(len(task["classes"])), task["classes"], rotation=60, ha="right", fontsize=7)
        axis.set_yticks(range(len(task["classes"])), task["classes"], fontsize=7)
        for (row, column), value in np.ndenumerate(matrix):
            axis.text(column, row, str(value), ha="center", va="center", fontsize=6)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"Task recognition, per frame (weighted F1 {task['probe']['f1']:.3f})")
        written.append(save_figure(figure, directory / "confusion_task.png"))
    if "tools" in probes:
        tools = probes["tools"]
        figure, axes = plt.subplots(3, 4, figsize=(10, 8))
        for axis, name, matrix in zip(axes.flat, tools["classes"], tools["confusion_matrices"]):
            axis.imshow(np.array(matrix), cmap="Blues")
            for (row, column), value in np.ndenumerate(np.array(matrix)):
                axis.text(column, row, str(value), ha="center", va="center", fontsize=8)
            axis.set_title(name, fontsize=8)
            axis.set_xticks([0, 1], ["absent", "present"], fontsize=6)
            axis.set_yticks([0, 1], ["absent", "present"], fontsize=6)
        figure.suptitle(f"Tool presence per clip (rows true, columns predicted at 0.5; mAP {tools['probe']['mAP']:.3f})")
        written.append(save_figure(figure, directory / "confusion_tools.png"))
    if "action_inference" in report:
        written.append(plot_action_inference(report["action_inference"], directory))
    return written


def model_index(report: dict, model_name: str) -> dict:
    """The report's headline figures as the Hub's model-index (huggingface_hub's EvalResult)."""
    from huggingface_hub import EvalResult, ModelCardData

    split, results = report["split"], []
    section = report["world_model"]
    rollout = section["rollout"]
    mean_l1 = float(np.mean(rollout["l1"]))
    results.append(EvalResult(task_type="robotics", task_name="Action-conditioned latent prediction",
                              dataset_type="surgvu", dataset_name="SurgVU", dataset_split=split, metric_type="l1",
                              metric_name="rollout latent L1 (mean over horizons)", metric_value=round(mean_l1, 6)))
    results.append(EvalResult(task_type="robotics", task_name="Action-conditioned latent prediction",
                              dataset_type="surgvu", dataset_name="SurgVU", dataset_split=split, metric_type="l1",
                              metric_name="copy-context baseline L1",
                              metric_value=round(float(np.mean(rollout["copy_last_context_l1"])), 6)))
    probes = report.get("surgvu_probes", {})
    if "task" in probes:
        for key, name in (("f1", "weighted F1 (mean over videos)"), ("accuracy", "accuracy (mean over videos)")):
            results.append(EvalResult(task_type="video-classification", task_name="Surgical task recognition (probe)",
                                      dataset_type="surgvu", dataset_name="SurgVU", dataset_split=split,
                                      metric_type=key, metric_name=name,
                                      metric_value=round(probes["task"]["probe"][key], 6)))
    if "tools" in probes:
        for key, name in (("mAP", "mAP"), ("f1", "F1 averaged over classes")):
            results.append(EvalResult(task_type="video-classification", task_name="Tool presence (probe)",
                                      dataset_type="surgvu", dataset_name="SurgVU", dataset_split=split,
                                      metric_type=key.lower(), metric_name=name,
                                      metric_value=round(probes["tools"]["probe"][key], 6)))
    return ModelCardData(model_name=model_name, eval_results=results).to_dict()


def reads_cache(world_model, name: str, data_args: DataArguments) -> bool:
    """Whether `clip_sources` looks for the split `name` in a latent cache. A cache holds the online encoder's latents
    only: a fine-tuned model's targets come from its EMA encoder, so such a model is always encoded here."""
    return (bool(data_args.cache_dir) and name != "all" and not data_args.no_cache
            and world_model.target_encoder is None)


def clip_sources(world_model, splits: dict, transform, data_args: DataArguments) -> dict[str, tuple]:
    """Each split's clips (`splits`: name to split) and a line saying where they come from: read from a finished
    latent cache under `--cache_dir` when its key is this evaluation's and its shards pass the checks a build makes
    (`--verify_cache`), else decoded and encoded here. A stale or corrupt cache is passed over, not rebuilt: the
    figures are then the video's own, and the evaluation writes nothing into a cache a training run owns. The keys of
    every split read from a cache come from one hash of the encoder's weights (about 4 GB read for ViT-g)."""
    from dataset_surgvu import SurgVUClips
    from dataset_surgvu.latent_cache import LatentCache, LatentCacheError, LatentClips

    cached = {name: split for name, split in splits.items() if reads_cache(world_model, name, data_args)}
    # The evaluation runs without autocast: a cache built in float32 matches.
    keys = latent_cache_keys(world_model, cached, transform, fps=data_args.fps,
                             frames_per_clip=data_args.frames_per_clip, precision=data_args.cache_precision,
                             autocast="no") if cached else {}
    sources = {}
    for name, split in splits.items():
        if name in keys:
            directory = latent_cache_dir(data_args.cache_dir, name, keys[name].dataset_fingerprint)
            try:
                cache = LatentCache(directory, keys[name])
                cache.check_shards(data_args.verify_cache)
                sources[name] = LatentClips(split, cache), f"latent cache {directory}"
                continue
            except LatentCacheError as error:
                print(f"latent cache not used ({error}): every clip is decoded and encoded", flush=True)
        sources[name] = SurgVUClips(split, transform), "decoded and encoded here"
    return sources


# ---------------------------------------------------------------------------------------------- action inference
ACTION_INFERENCE_TOP_K = 10
ACTION_INFERENCE_MOMENTUM = 0.15


def draw_moments(num_clips: int, num_steps: int, count: int, context: int, horizon: int,
                 seed: int) -> list[tuple[int, int]]:
    """`count` (clip position, start step) pairs, in clip order: a seeded choice without replacement among the starts
    of every clip with `context` steps up to them and `horizon` after them (all of them when there are fewer)."""
    candidates = [(clip, start) for clip in range(num_clips) for start in range(context - 1, num_steps - horizon)]
    if count >= len(candidates):
        return candidates
    chosen = np.random.default_rng(seed).choice(len(candidates), size=count, replace=False)
    return [candidates[index] for index in sorted(chosen.tolist())]


def train_option_counts(world_model, train_split, groups: list[tuple[str, list[int]]],
                        chunk: int = 1024) -> list[np.ndarray]:
    """Per group, how many transitions of the training clips each option labels (every transition of every clip,
    read through `transition_actions`): the prevalence the chance level is computed from, for an export whose config
    has no `action_prior` to read it from (`prior_option_counts`)."""
    counts = [np.zeros(len(dims) + 1, dtype=np.int64) for _, dims in groups]
    table = train_split.with_format("torch", columns=["actions"])
    for start in range(0, len(train_split), chunk):
        actions = table[start : start + chunk]["actions"].float()  # (clips, frames, A)
        actions = per_step_actions(world_model, actions, actions.shape[1] // world_model.config.frames_per_step)
        options = step_options(world_model.transition_actions(actions), groups).flatten(0, 1)  # (transitions, G)
        for index, (_, dims) in enumerate(groups):
            counts[index] += np.bincount(options[:, index].numpy(), minlength=len(dims) + 1)
    return counts


def prior_option_counts(config, groups: list[tuple[str, list[int]]]) -> list[np.ndarray] | None:
    """Per group, how many training transitions each option labels, read from `config.action_prior` (train_hf.py
    counts the same labels when it trains): its step-to-step counts summed over the step whose labels a transition
    takes as `config.action_pairing` pairs them (the step after: `"next"`; before: `"current"`). None when the config
    has no prior for every group (an export from before training wrote it)."""
    recorded = (config.action_prior or {}).get("groups", {})
    counts = []
    for name, dims in groups:
        transitions = np.asarray(recorded.get(name, {}).get("transitions", []), dtype=np.int64)
        if transitions.shape != (len(dims) + 1, len(dims) + 1):
            return None
        counts.append(transitions.sum(0 if config.action_pairing == "next" else 1))
    return counts


def options_below_labelled(world_model, observed: torch.Tensor, goal: torch.Tensor, labelled: torch.Tensor,
                           context_actions: torch.Tensor, groups: list[tuple[str, list[int]]]) -> torch.Tensor:
    """How many other options of its group the world model's energy alone ranks below each labelled option
    `(M, H, G)`: for each planned transition h and group g, the labelled actions `(M, H, A)` with g at h set to each
    of its options ("none": every dimension 0) are scored; an option whose energy ties the labelled one's counts half,
    so that energies that ignore the group put (options - 1) / 2 below it, as energies unrelated to the labels do on
    average. 0 is the energy identifying the labelled option: below every other option's (a tie, as under a model
    that ignores the group, is not). No planner, no prior: what the energy tells apart."""
    num_moments, horizon, _ = labelled.shape
    options = step_options(labelled, groups)  # (M, H, G)
    below = torch.zeros(num_moments, horizon, len(groups))
    for index, (_, dims) in enumerate(groups):
        for step in range(horizon):
            candidates = labelled[:, None].repeat(1, len(dims) + 1, 1, 1)  # (M, O, H, A), O = options + none
            candidates[:, :, step, dims] = 0.0
            candidates[:, torch.arange(len(dims)), step, dims] = 1.0
            energy = world_model.energy(observed, goal, candidates, context_actions=context_actions).float().cpu()
            labelled_energy = energy.gather(1, options[:, step, index, None].cpu())  # (M, 1)
            others = energy.masked_fill(F.one_hot(options[:, step, index].cpu(), len(dims) + 1).bool(), float("inf"))
            below[:, step, index] = (others < labelled_energy).sum(1) + 0.5 * (others == labelled_energy).sum(1)
    return below


@torch.no_grad()
def run_action_inference(args, world_model, split, clips, indices: list[int], moments: list[tuple[int, int]],
                         groups: list[tuple[str, list[int]]], device, action_prior: str = "uniform",
                         seen_only: bool = False, partners: SwapPartners | None = None) -> dict:
    """Streams the clips that hold `moments`: the moments of a batch of clips are planned in one batched CEM, from
    their `--action_inference_context` steps (with the labelled actions between them) to the goal step
    `--action_inference_horizon` transitions later (CEM starting from `action_prior`, proposing only combinations seen
    in training with `seen_only`), and the labelled actions' energy is scored alike; every transition
    of these clips gets its teacher-forced L1 under its own and under another clip's actions. Returns the options per
    moment and planned transition (labelled, planned, the transition before it, the last context one) `(M, H, G)`,
    how many options the energy alone ranks below each labelled option `(M, H, G)` (`options_below_labelled`; 0:
    identified), the energies `(M,)`, and per transition after a clip's first: the two L1s, the latent's
    move (the L1 of copying the step before), whether its action changed and each group's option on either side of
    it `(T, G)`."""
    context, horizon = args.action_inference_context, args.action_inference_horizon
    starts_of = {}
    for position, start in moments:
        starts_of.setdefault(indices[position], []).append(start)
    loader = DataLoader(Subset(clips, sorted(starts_of)), batch_size=args.batch_size, shuffle=False,
                        num_workers=min(args.num_workers, available_cores()), collate_fn=collate_clips)
    generator = torch.Generator().manual_seed(args.seed)
    names = [name for name, _ in groups]
    records = {name: [] for name in ("labelled", "planned", "previous", "copy_last", "options_below",
                                     "energy", "labelled_energy", "own_l1", "swapped_l1", "move_l1", "changed",
                                     "options_before", "options_after")}
    broken = BrokenFiles(warn_line)
    partners = partners if partners is not None else SwapPartners(split, indices, args.seed)
    for batch in loader:
        broken.add(batch.get("broken_clips", []))
        if "sample_id" not in batch:  # every clip of the batch failed to decode
            continue
        latents, targets, actions = clip_latents_and_actions(world_model, batch, device)
        paired = world_model.transition_actions(actions)  # (B, S - 1, A)
        other = partners(world_model, batch, latents.shape[1], device)
        if other is not None:
            own, _ = latent_errors(world_model.predict(latents[:, :-1], paired), targets[:, 1:])
            swapped_actions = world_model.transition_actions(other)
            swap, _ = latent_errors(world_model.predict(latents[:, :-1], swapped_actions), targets[:, 1:])
            records["own_l1"].append(own[:, 1:].flatten().cpu())
            records["swapped_l1"].append(swap[:, 1:].flatten().cpu())
            records["changed"].append((paired[:, 1:] != paired[:, :-1]).any(-1).flatten().cpu())
            move, _ = latent_errors(targets[:, :-1], targets[:, 1:])  # copying the step before: how far it moves
            records["move_l1"].append(move[:, 1:].flatten().cpu())
            transition_options = step_options(paired.cpu(), groups)  # (B, S - 1, G)
            records["options_before"].append(transition_options[:, :-1].flatten(0, 1))
            records["options_after"].append(transition_options[:, 1:].flatten(0, 1))

        rows, starts = zip(*[(row, start) for row, sample in enumerate(batch["sample_id"].tolist())
                             for start in starts_of[sample]])
        rows, starts = torch.tensor(rows)[:, None], torch.tensor(starts)[:, None]
        window = latents[rows, starts + torch.arange(1 - context, horizon + 1)]  # (M, C + H, N, D)
        moment_actions = paired[rows, starts + torch.arange(1 - context, horizon)]  # (M, C - 1 + H, A)
        observed, goal = window[:, :context], window[:, -1:]
        context_actions, labelled = moment_actions[:, : context - 1], moment_actions[:, context - 1 :]
        output = world_model.plan(observed, goal, horizon=horizon, num_samples=args.action_inference_samples,
                                  iterations=args.action_inference_iterations,
                                  top_k=min(ACTION_INFERENCE_TOP_K, args.action_inference_samples),
                                  momentum=ACTION_INFERENCE_MOMENTUM, generator=generator,
                                  context_actions=context_actions, discrete_groups=names,
                                  action_prior=action_prior, seen_only=seen_only,
                                  readout=args.action_inference_readout)
        options = step_options(moment_actions.cpu(), groups)  # (M, C - 1 + H, G)
        records["labelled"].append(options[:, context - 1 :])
        records["previous"].append(options[:, context - 2 : -1])  # the transition before each planned one
        records["copy_last"].append(options[:, context - 2 : context - 1].expand(-1, horizon, -1))
        records["planned"].append(step_options(output.actions.cpu(), groups))
        records["energy"].append(output.energy.float().cpu())
        records["labelled_energy"].append(
            world_model.energy(observed, goal, labelled, context_actions=context_actions).float().cpu())
        records["options_below"].append(
            options_below_labelled(world_model, observed, goal, labelled, context_actions, groups))
    if broken.count:
        print(f"action inference: skipped {broken.count} clip(s) that failed to decode: {broken.summary()}",
              flush=True)
    return {name: torch.cat(values).numpy() if values else np.zeros(0) for name, values in records.items()}


def action_inference_section(records: dict, train_counts: list[np.ndarray], groups: list[tuple[str, list[int]]],
                             options: list[list[str]]) -> dict:
    """Per group, the accuracy of the planned options next to copying the last context action, to the energy alone
    (`options_below_labelled`) and to chance, over every planned transition and over those whose labelled option differs
    from the transition's before; the energy
    of the inferred and of the labelled actions; the teacher-forced L1 under swapped over own actions."""

    def rates(correct: np.ndarray, copied: np.ndarray, below: np.ndarray, labels: np.ndarray,
              prevalence: np.ndarray) -> dict:
        if not len(labels):
            return {"transitions": 0, "planned": None, "copy_last": None, "identified": None, "chance": None,
                    "one_of_options": None, "options_below": None, "options_below_at_random": None}
        frequency = np.bincount(labels, minlength=len(prevalence)) / len(labels)
        return {"transitions": int(len(labels)), "planned": float(correct.mean()), "copy_last": float(copied.mean()),
                "identified": float((below == 0).mean()),  # below every other option, no tie
                "chance": float(prevalence @ frequency),
                "one_of_options": 1.0 / len(prevalence), "options_below": float(below.mean()),
                "options_below_at_random": (len(prevalence) - 1) / 2}

    section_groups = {}
    for index, (name, _) in enumerate(groups):
        labels = records["labelled"][..., index].flatten()
        correct = records["planned"][..., index].flatten() == labels
        copied = records["copy_last"][..., index].flatten() == labels
        change = records["previous"][..., index].flatten() != labels
        below = records["options_below"][..., index].flatten()
        total = train_counts[index].sum()
        prevalence = train_counts[index] / total if total else np.full(len(train_counts[index]), np.nan)
        section_groups[name] = {"options": options[index],
                                "train_prevalence": prevalence.tolist(),
                                "overall": rates(correct, copied, below, labels, prevalence),
                                "at_changes": rates(correct[change], copied[change], below[change], labels[change],
                                                    prevalence)}

    def ratio(mask: np.ndarray) -> dict:
        own, swap, move = records["own_l1"][mask], records["swapped_l1"][mask], records["move_l1"][mask]
        if not len(own):
            return {"transitions": 0, "own_l1": None, "swapped_l1": None, "ratio": None, "latent_move": None}
        return {"transitions": int(len(own)), "own_l1": float(own.mean()), "swapped_l1": float(swap.mean()),
                "ratio": float(swap.mean() / own.mean()), "latent_move": float(move.mean())}

    changed = records["changed"].astype(bool)
    by_group = {}
    if len(changed):
        before, after = records["options_before"], records["options_after"]
        for index, (name, dims) in enumerate(groups):
            none = len(dims)  # the last option: every dimension of the group 0
            moved = before[:, index] != after[:, index]
            by_group[name] = {"from_none": ratio(moved & (before[:, index] == none)),
                              "to_none": ratio(moved & (after[:, index] == none)),
                              "between_options": ratio(moved & (before[:, index] != none) & (after[:, index] != none))}
    energy, labelled_energy = records["energy"], records["labelled_energy"]
    return {
        "moments": int(len(energy)),
        "groups": section_groups,
        "energy": {"inferred": float(energy.mean()), "labelled": float(labelled_energy.mean()),
                   "inferred_below_labelled": float((energy < labelled_energy).mean())} if len(energy) else None,
        "swapped_over_own": {"overall": ratio(np.ones_like(changed)), "with_change": ratio(changed),
                             "without_change": ratio(~changed), "by_group": by_group,
                             "note": "teacher-forced latent L1 of each transition after a clip's first, under another "
                                     "clip's actions over under its own (the clips the moments come from); with "
                                     "change: its labelled action differs from the transition's before; by group: "
                                     "where that group's option changes (others may change too), from or to 'none' "
                                     "(every dimension of the group 0) or between two of its options; latent_move: "
                                     "the L1 of copying the step before, how far the latent moves",
                             "other_actions": SWAP_PARTNERS},
    }


def action_inference(args, world_model, split, indices: list[int], clips, train_split, device,
                     partners: SwapPartners | None = None) -> dict | None:
    """The `action_inference` section (None, with a note, when the model has no categorical action group or the
    clips are too short): the actions the planner infers between held-out moments, scored against the labels;
    `partners` as `run` takes them."""
    groups = world_model.config.categorical_groups()[0]  # as plan.py chooses them
    context, horizon = args.action_inference_context, args.action_inference_horizon
    num_steps = split.features["actions"].shape[0] // world_model.config.frames_per_step
    if not groups:
        print("action inference: none (the model's config has no action_spec with categorical groups)", flush=True)
        return None
    if num_steps < context + horizon:
        print(f"action inference: none (clips of {num_steps} steps hold no {context} context steps and "
              f"{horizon} more)", flush=True)
        return None
    action_prior, seen_only = args.action_inference_prior, args.action_inference_seen_only
    if (action_prior != "uniform" or seen_only) and not world_model.config.action_prior:
        print(f"action inference: uniform options, without a seen-only restriction: the model's config has no training "
              f"action statistics (action_prior) for --action_inference_prior {action_prior}"
              f"{' --action_inference_seen_only' if seen_only else ''}", flush=True)
        action_prior, seen_only = "uniform", False
    started = time.perf_counter()
    moments = draw_moments(len(indices), num_steps, args.action_inference_moments, context, horizon, args.seed)
    records = run_action_inference(args, world_model, split, clips, indices, moments, groups, device, action_prior,
                                   seen_only, partners)
    spec = world_model.config.action_spec
    options = [[spec[dim].split("/", 1)[1] for dim in dims] + ["none"] for _, dims in groups]
    counts = prior_option_counts(world_model.config, groups)
    counted_from = "config.action_prior (the training split's statistics, written by train_hf.py)"
    if counts is None:
        counts = train_option_counts(world_model, train_split, groups)
        counted_from = "the training split's labels, recounted (the export records no action_prior)"
    section = action_inference_section(records, counts, groups, options)
    section.update({
        "moments_drawn": len(moments),
        "moments_possible": len(indices) * (num_steps - context - horizon + 1),
        "context_steps": context, "horizon": horizon,
        "planner": {"num_samples": args.action_inference_samples, "iterations": args.action_inference_iterations,
                    "top_k": min(ACTION_INFERENCE_TOP_K, args.action_inference_samples),
                    "momentum": ACTION_INFERENCE_MOMENTUM, "seed": args.seed,
                    "action_prior": action_prior, "seen_only": seen_only,
                    "readout": args.action_inference_readout},
        "pairing": f"{world_model.config.action_pairing!r}: transition t -> t + 1 is labelled with the actions in "
                   f"force at step {'t + 1' if world_model.config.action_pairing == 'next' else 't'}, as the predictor "
                   "is given them",
        "moments_from": f"a choice seeded by --seed among every start of the scored clips with {context} steps up to "
                        f"it and {horizon} after it; the goal is the step {horizon} later",
        "chance": "sum over a group's options of its training prevalence (over every transition of the training "
                  "clips) times its frequency among the scored transitions: the accuracy of drawing each option "
                  "at random as often as training labels it",
        "train_prevalence_from": counted_from,
        "copy_last": "every planned transition given the last labelled action of the context",
        "identified": "the world model's energy alone, without a planner or a prior: the labelled option has a lower "
                      "energy than each other option of its group when only that group of that planned transition "
                      "varies (the rest keep their labels; a tie is not identified); one_of_options is 1 / options, "
                      "what energies unrelated to the labels would score; options_below: how many other options "
                      "have a lower energy than the labelled one (a tie counts half), (options - 1) / 2 for energies "
                      "unrelated to the labels (options_below_at_random)",
        "changes": "the planned transitions whose labelled option differs from the transition's before (the "
                      "last context one for the first): copying the last context action is wrong at the first",
    })
    print(f"action inference: {section['moments']} moments planned in {time.perf_counter() - started:.1f} s",
          flush=True)
    return section


def print_action_inference(section: dict) -> None:
    print(f"\nAction inference: {section['moments']} held-out moments, {section['context_steps']} context steps, "
          f"{section['horizon']} planned transition(s) each (CEM {section['planner']['num_samples']} samples x "
          f"{section['planner']['iterations']} iterations, {section['planner']['action_prior']} prior"
          f"{', seen combinations only' if section['planner']['seen_only'] else ''}, "
          f"{section['planner']['readout']} readout); accuracy per group")
    width = max(10, *(len(name) for name in section["groups"]))
    columns = (("planned", "planned", 8), ("copy_last", "copy last", 10), ("identified", "energy alone", 12),
               ("chance", "chance", 7), ("options_below", "below/random", 12))
    header = " ".join(f"{title:>{column}}" for _, title, column in columns)
    print(f"{'':>{width}} {header} | {'at changes:':>11} {header} {'n':>5}")

    def cell(values: dict, key: str, column: int) -> str:
        if values[key] is None:
            return f"{'n/a':>{column}}"
        if key == "options_below":  # how many options the energy puts below the labelled one, and at random
            return f"{values[key]:.2f}/{values['options_below_at_random']:.1f}".rjust(column)
        return f"{values[key]:>{column}.3f}"

    def cells(values: dict) -> str:
        return " ".join(cell(values, key, column) for key, _, column in columns)

    for name, group in section["groups"].items():
        print(f"{name:>{width}} {cells(group['overall'])} | {'':>11} {cells(group['at_changes'])} "
              f"{group['at_changes']['transitions']:>5}")
    energy = section["energy"]
    if energy:
        print(f"energy: inferred actions {energy['inferred']:.4f}, labelled actions {energy['labelled']:.4f} "
              f"(inferred below labelled in {100 * energy['inferred_below_labelled']:.0f}% of the moments)")
    swap = section["swapped_over_own"]
    print("teacher-forced L1, swapped over own actions: " + ", ".join(
        f"{swap[key]['ratio']:.3f} {label} ({swap[key]['transitions']} transitions)" if swap[key]["ratio"] is not None
        else f"n/a {label}" for key, label in (("overall", "overall"), ("with_change", "where the action changes"),
                                               ("without_change", "elsewhere"))))
    kinds = (("from_none", "from none"), ("to_none", "to none"), ("between_options", "between options"))
    for name, group in swap.get("by_group", {}).items():
        print(f"  where {name} changes: " + ", ".join(
            f"{label} {group[key]['ratio']:.3f} ({group[key]['transitions']}; own L1 {group[key]['own_l1']:.3f}, "
            f"the latent moves {group[key]['latent_move']:.3f})" if group[key]["ratio"] is not None
            else f"{label} n/a (0)" for key, label in kinds))


def plot_action_inference(section: dict, directory: Path) -> str:
    plt = pyplot()

    names = list(section["groups"])
    positions = np.arange(len(names))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, subset, title in zip(axes, ("overall", "at_changes"), ("all planned transitions",
                                                                     "where the labelled action changes")):
        bars = (("planned", "planned"), ("copy_last", "copy last context"),
                ("identified", "the energy alone (one group varied)"), ("chance", "chance (training prevalence)"))
        for offset, (key, label) in zip((-0.3, -0.1, 0.1, 0.3), bars):
            values = [section["groups"][name][subset][key] for name in names]
            axis.bar(positions + offset, [np.nan if value is None else value for value in values], 0.2, label=label)
        counts = [section["groups"][name][subset]["transitions"] for name in names]
        axis.set_xticks(positions, [f"{name}\n(n={count})" for name, count in zip(names, counts)], fontsize=8)
        axis.set_title(title, fontsize=9)
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0, 1.2)  # room for the legend above the bars
    axes[0].legend(fontsize=7, ncol=2, loc="upper center")
    figure.suptitle(f"Action inference: {section['moments']} held-out moments, horizon {section['horizon']}")
    return save_figure(figure, directory / "action_inference.png")


# ---------------------------------------------------------------------------------------------------------- MM-OR
MMOR_LABELS = ("phase", "next_action", "breach")
SURPRISE_NOTE = (
    "The world model's surprise (the latent L1 of predicting a timepoint from the timepoints before it) rises at any "
    "change it did not expect, phase transitions, people moving, camera noise, not only at breaches, and a breach "
    "that lasts several timepoints is unexpected only at its onset: its AUROC measures how much more surprising "
    "breaches are than everything else, and is reported as it is."
)


@torch.no_grad()
def run_mmor(args, world_model, probes: dict, split, clips, device, indices: list[int] | None = None) -> dict:
    """One record per clip, for the timepoint it ends at: take, timepoint, labels, surprise and probe scores. With
    `--clip_stride 1`, every timepoint after a take's first `frames_per_clip - 1` ends a clip."""
    indices = list(range(len(split))) if indices is None else indices
    rows = split.select_columns(["take", "timepoints"])
    takes, timepoints = rows["take"], rows["timepoints"]
    loader = DataLoader(Subset(clips, indices), batch_size=args.batch_size, shuffle=False,
                        num_workers=min(args.num_workers, available_cores()), collate_fn=collate_clips)
    broken = BrokenFiles(warn_line)
    records = {"take": [], "timepoint": [], "surprise": [], **{name: [] for name in MMOR_LABELS},
               **{f"{target}_scores": [] for target in probes}}
    for batch in loader:
        broken.add(batch.get("broken_clips", []))
        if "sample_id" not in batch:  # every clip of the batch failed to decode
            continue
        latents, targets, actions = clip_latents_and_actions(world_model, batch, device)
        predicted = world_model.predict(latents[:, :-1], world_model.transition_actions(actions))
        last_l1, _ = latent_errors(predicted[:, -1:], targets[:, -1:])  # the clip's last timepoint
        records["surprise"].append(last_l1[:, 0].cpu())
        for name in MMOR_LABELS:
            records[name].append(batch[name][:, -1].cpu())
        for target, probe in probes.items():
            records[f"{target}_scores"].append(probe(latents=latents).logits.float().softmax(-1).cpu())
        for sample in batch["sample_id"].tolist():
            records["take"].append(takes[sample])
            records["timepoint"].append(int(timepoints[sample][-1]))
    if broken.count:
        print(f"skipped {broken.count} clip(s) that failed to decode: {broken.summary()}", flush=True)
    return {name: values if name in ("take", "timepoint") else (torch.cat(values).numpy() if values else np.zeros(0))
            for name, values in records.items()}


def classification_summary(labels: np.ndarray, predictions: np.ndarray, names: list[str], takes: list[str]) -> dict:
    """The public MM-OR code's report: sklearn's classification_report pooled over all timepoints, and per take."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    def summary(mask):
        present = sorted(set(labels[mask].tolist()) | set(predictions[mask].tolist()))
        return {"timepoints": int(mask.sum()), "accuracy": float(accuracy_score(labels[mask], predictions[mask])),
                "macro_f1": float(f1_score(labels[mask], predictions[mask], average="macro", labels=present,
                                           zero_division=0)),
                "classification_report": classification_report(
                    labels[mask], predictions[mask], labels=present, target_names=[names[i] for i in present],
                    output_dict=True, zero_division=0)}

    takes = np.array(takes)
    return {"pooled": summary(np.ones(len(labels), dtype=bool)),
            "per_take": {take: summary(takes == take) for take in sorted(set(takes.tolist()))}}


def calibrate_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The F1-best detection threshold of `scores` on the labels of the calibration split's takes (ties: the
    highest). Every threshold the report applies comes from here, fitted on data it does not score: a threshold
    fitted on the scored takes flatters their F1."""
    if labels.sum() == 0:
        fail(f"the {CALIBRATION_SPLIT} takes have no breach: the detection threshold cannot be calibrated on them")
    return load_metric("binary_detection").compute(predictions=scores.tolist(), references=labels.tolist())[
        "threshold"]


def detection_summary(scores: np.ndarray, labels: np.ndarray, threshold: float, takes: list[str],
                      split: str) -> dict:
    """Breach detection by `scores` at `threshold` (from `calibrate_threshold`): precision, recall, F1 of the breach
    class, AUROC, AUPRC, pooled and per take, a classification report, and the splits that fitted and scored it."""
    from sklearn.metrics import classification_report

    metric = load_metric("binary_detection")
    pooled = metric.compute(predictions=scores.tolist(), references=labels.tolist(), threshold=threshold)
    takes = np.array(takes)
    per_take = {take: metric.compute(predictions=scores[takes == take].tolist(),
                                     references=labels[takes == take].tolist(), threshold=threshold)
                for take in sorted(set(takes.tolist()))}
    report = classification_report(labels, (scores >= threshold).astype(int), labels=[0, 1],
                                   target_names=["no breach", "breach"], output_dict=True, zero_division=0)
    return {"threshold": threshold, "threshold_from": f"{CALIBRATION_SPLIT} takes (F1-best threshold)",
            "calibration_split": CALIBRATION_SPLIT, "scored_split": split, "pooled": pooled, "per_take": per_take,
            "classification_report": report}


def mmor_section(records: dict, calibration: dict, split: str) -> dict:
    """Phase and next action through their probes, and sterility-breach detection two ways, per timepoint."""
    from dataset_mmor import NEXT_ACTIONS, ROBOT_PHASES

    section = {"split": split, "calibration_split": CALIBRATION_SPLIT, "timepoints": len(records["take"]),
               "takes": sorted(set(records["take"]))}
    for target, names in (("phase", list(ROBOT_PHASES)), ("next_action", list(NEXT_ACTIONS))):
        if f"{target}_scores" in records:
            keep = records[target] >= 0  # null next actions are skipped, as the public code skips them
            predictions = records[f"{target}_scores"].argmax(-1)
            section[target] = classification_summary(records[target][keep], predictions[keep], names,
                                                      [t for t, k in zip(records["take"], keep) if k])
            section[target]["skipped_null"] = int((~keep).sum())
    keep = records["breach"] >= 0
    keep_calibration = calibration["breach"] >= 0
    labels, calibration_labels = records["breach"][keep], calibration["breach"][keep_calibration]
    takes = [t for t, k in zip(records["take"], keep) if k]
    breach = {"positives": int(labels.sum()), "timepoints": int(keep.sum())}
    if "breach_scores" in records:
        threshold = calibrate_threshold(calibration["breach_scores"][keep_calibration, 1], calibration_labels)
        breach["supervised"] = detection_summary(records["breach_scores"][keep, 1], labels, threshold, takes, split)
        breach["supervised"]["score"] = "the breach probe's probability (class-weighted training)"
    threshold = calibrate_threshold(calibration["surprise"][keep_calibration], calibration_labels)
    breach["surprise"] = detection_summary(records["surprise"][keep], labels, threshold, takes, split)
    breach["surprise"]["score"] = "the world model's latent L1 at the timepoint (no breach label used)"
    breach["surprise"]["note"] = SURPRISE_NOTE
    section["breach"] = breach
    return section


def plot_surprise_over_time(records: dict, section: dict, directory: Path) -> str:
    plt = pyplot()

    takes = section["takes"]
    figure, axes = plt.subplots(len(takes), 1, figsize=(9, 2.4 * len(takes)), squeeze=False)
    threshold = section["breach"]["surprise"]["threshold"]
    for axis, take in zip(axes[:, 0], takes):
        rows = [i for i, t in enumerate(records["take"]) if t == take]
        order = sorted(rows, key=lambda i: records["timepoint"][i])
        times = [records["timepoint"][i] for i in order]
        axis.plot(times, records["surprise"][order], lw=1, label="surprise")
        breaches = [records["timepoint"][i] for i in order if records["breach"][i] == 1]
        for timepoint in breaches:
            axis.axvspan(timepoint - 0.5, timepoint + 0.5, color="red", alpha=0.3, lw=0)
        axis.axhline(threshold, color="black", ls="--", lw=0.8, label=f"threshold ({CALIBRATION_SPLIT})")
        axis.set_title(f"{take}: {len(breaches)} breach timepoints (red)", fontsize=9)
        axis.set_ylabel("latent L1")
    axes[-1, 0].set_xlabel("timepoint")
    axes[0, 0].legend(fontsize=7)
    return save_figure(figure, directory / "surprise_over_time.png", dpi=110)


def main(argv=None) -> int:
    # `--fps` and the split options unset: the model's config says at what frame rate and on which split it was
    # trained (below).
    args, data_args = parse_dataclasses((EvaluationArguments, DataArguments), argv, __doc__.splitlines()[0],
                                        defaults={"fps": None, "split_seed": None, "validation_fraction": None,
                                                  "test_fraction": None})
    if args.test_data:
        data_args.data_root = args.test_data
    entry = dataset_entry(data_args)
    if args.split is None:
        args.split = "test" if "test" in entry.evaluation_splits else "validation"
    if args.split not in entry.evaluation_splits:
        fail(f"--split must be one of {', '.join(entry.evaluation_splits)} for --dataset {entry.name}, got {args.split}")
    if entry.name == "mmor" and args.split == CALIBRATION_SPLIT:
        fail(f"--split {args.split}: the breach detection thresholds are calibrated on the {CALIBRATION_SPLIT} takes, "
             "so their figures there would be fitted to the takes scored; score the test takes (--split test, the "
             "default)")
    if args.push_to_hub and not args.hub_model_id:
        fail("--push_to_hub needs --hub_model_id <user>/<repo>")
    if data_args.verify_cache not in VERIFY_MODES:
        fail(f"--verify_cache must be one of {', '.join(VERIFY_MODES)}, got {data_args.verify_cache}")
    if not args.eval_fps > 0 or args.fill not in ("other", "nearest") or args.smooth_frames < 1:
        fail(f"--eval_fps must be positive, --fill other or nearest, --smooth_frames at least 1; got "
             f"{args.eval_fps:g}, {args.fill}, {args.smooth_frames}")
    if min(args.action_inference_moments, args.action_inference_context - 2, args.action_inference_horizon - 1,
           args.action_inference_samples - 1, args.action_inference_iterations - 1) < 0:
        fail(f"--action_inference_moments must be at least 0, --action_inference_context at least 2, "
             f"--action_inference_horizon, _samples and _iterations at least 1; got {args.action_inference_moments}, "
             f"{args.action_inference_context}, {args.action_inference_horizon}, {args.action_inference_samples}, "
             f"{args.action_inference_iterations}")
    args.num_workers = data_args.num_workers
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    world_model, checkpoint_probe = load_checkpoint(args.checkpoint)
    world_model.to(device)
    data_args.fps = clip_fps(data_args.fps, world_model.config, args.checkpoint)
    evaluated = checkpoint_probe if checkpoint_probe is not None else world_model
    resolve_split_options(data_args, evaluated.config.data_split)
    # Before any data is built or probe trained: the split options, and the split scored.
    check_data_split({args.checkpoint: evaluated}, requested_split(entry.name, data_args))
    reused_splits(args, {args.checkpoint: evaluated})
    given = {"task": args.task_probe, "tools": args.tool_probe, "phase": args.phase_probe,
             "next_action": args.next_action_probe, "breach": args.breach_probe}
    if args.train_probes:
        given.update(train_probes(args, data_args))
    probes = {}
    if checkpoint_probe is not None and checkpoint_probe.config.probe_target in PROBE_TARGETS:
        probes[checkpoint_probe.config.probe_target] = checkpoint_probe
    for target, path in given.items():
        if path:
            if target not in entry.targets:
                flag = f"--{'tool' if target == 'tools' else target}_probe"
                fail(f"{flag} is a {PROBE_TARGETS[target].dataset} probe; the data is --dataset {entry.name}")
            probes[target] = load_probe(path, target, world_model)
    if args.predictions_dir and "task" not in probes:
        fail("--predictions_dir writes the task probe's predictions: give --task_probe (or --train_probes)")
    for probe in probes.values():
        probe.to(device).eval()
    checkpoints = {args.checkpoint: evaluated,
                   **{path: probes[target] for target, path in given.items() if path}}
    reused = reused_splits(args, checkpoints)

    dataset = load_dataset_splits(data_args)
    data_split = split_definition(entry.name, dataset, entry.build_metadata(dataset))
    check_data_split(checkpoints, data_split)
    if args.split == "all":
        import datasets

        split = datasets.concatenate_datasets(list(dataset.values()))
    else:
        split = dataset[args.split]
    indices = list(range(len(split) if args.max_clips is None else min(args.max_clips, len(split))))
    if not indices:
        fail(f"the {args.split} split of {data_args.data_root} has no clip (check the layout with "
             "scripts/check_setup.py --data_root ...)")
    transform = entry.transform(crop_size=world_model.config.encoder_config.crop_size)
    # MM-OR also scores the takes its detection thresholds are calibrated on: both splits' clips are found at once.
    splits = {args.split: split}
    if entry.name == "mmor" and CALIBRATION_SPLIT in dataset and len(dataset[CALIBRATION_SPLIT]):
        splits[CALIBRATION_SPLIT] = dataset[CALIBRATION_SPLIT]
    sources = clip_sources(world_model, splits, transform, data_args)
    clips, source = sources[args.split]
    print(f"evaluating {args.checkpoint} on {len(indices)} {args.split} clips ({source}); probes: "
          f"{', '.join(probes) or 'none'}", flush=True)

    surgvu_probes = {target: probe for target, probe in probes.items() if PROBE_TARGETS[target].dataset == "surgvu"}
    partners = SwapPartners(split, indices, args.seed)  # one draw for the world-model and action-inference sections
    result = run(args, world_model, surgvu_probes, split, indices, clips, device, partners)
    report = {"checkpoint": args.checkpoint, "test_data": data_args.data_root, "split": args.split,
              "selection_split": ", ".join([name for name in selection_splits(checkpoints) if name != "train"]
                                           or ["train"]),
              "data_split": describe_split(data_split),
              "clips": source, "encoders": encoder_roles(world_model, training_settings(args.checkpoint)[0]),
              "action_pairing": world_model.config.action_pairing, "world_model": world_model_section(result)}
    if reused:
        report["warning"] = (f"scored on the {' and '.join(reused)} cases, which fitted or chose the checkpoints "
                             "(--allow_selection_split): these figures are optimistic, not a test")
    if result["skipped_clips"]["clips"]:  # failed to decode: left out of every figure
        report["skipped_clips"] = result["skipped_clips"]
    if surgvu_probes:
        train_split = dataset["train"]
        train_indices = PROBE_TARGETS["task"].labelled_indices(train_split)
        report["surgvu_probes"] = {}
        if "task" in surgvu_probes:
            if not len(result["probes"]["task"]["scores"]):
                fail(f"the {args.split} split of {data_args.data_root} has no labelled clip for the task probe")
            counts = split_label_counts(train_split, train_indices, PROBE_TARGETS["task"]).numpy()
            truth = task_ground_truth(split, indices, data_args, args.eval_fps)
            report["surgvu_probes"]["task"], submitted = task_section(result, truth, counts, args, data_args.fps)
            if args.predictions_dir:
                report["predictions"] = write_predictions(submitted, Path(args.predictions_dir))
        if "tools" in surgvu_probes:
            if not len(result["probes"]["tools"]["scores"]):
                fail(f"the {args.split} split of {data_args.data_root} has no labelled clip for the tool probe")
            prevalence = split_label_counts(train_split, train_indices, PROBE_TARGETS["tools"]).numpy() / max(len(train_indices), 1)
            report["surgvu_probes"]["tools"] = tools_section(result, prevalence, args.seed)
    mmor_records = None
    if entry.name == "mmor":
        if CALIBRATION_SPLIT not in dataset or not len(dataset[CALIBRATION_SPLIT]):
            fail(f"the {CALIBRATION_SPLIT} takes of {data_args.data_root} have no clip: the detection thresholds are "
                 "calibrated on them")
        mmor_probes = {target: probe for target, probe in probes.items()
                       if PROBE_TARGETS[target].dataset == "mmor"}
        calibration_clips, _ = sources[CALIBRATION_SPLIT]
        calibration = run_mmor(args, world_model, mmor_probes, dataset[CALIBRATION_SPLIT], calibration_clips, device)
        mmor_records = run_mmor(args, world_model, mmor_probes, split, clips, device, indices)
        report["mmor"] = mmor_section(mmor_records, calibration, args.split)
    if args.action_inference_moments:
        section = action_inference(args, world_model, split, indices, clips, dataset["train"], device, partners)
        if section is not None:
            report["action_inference"] = section
    if args.plots:
        report["plots"] = save_plots(report, result["surprise"].numpy(), Path(args.plots))
        if mmor_records is not None:
            report["plots"].append(plot_surprise_over_time(mmor_records, report["mmor"], Path(args.plots)))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(json.dumps(report, indent=2))
    os.replace(partial, output)
    print_table(report)
    print(f"\nreport: {output}" + (f"; figures: {', '.join(report['plots'])}" if args.plots else ""))
    if "predictions" in report:
        print(f"task predictions, organisers' format: {len(report['predictions'])} files in {args.predictions_dir}")
    if args.push_to_hub:
        from huggingface_hub import metadata_update

        metadata_update(args.hub_model_id, model_index(report, Path(args.checkpoint).name or args.hub_model_id),
                        overwrite=True, commit_message="Evaluation results (scripts/evaluate_surgical_model.py)")
        print(f"model-index of {args.hub_model_id} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The demo page: a SurgVU-format video or an MM-OR take through a world model and its probes, in the browser (Gradio).

    python scripts/app.py [--demo_dir demo_output] [--world_model PATH_OR_HUB_ID] [--mmor_dir MM-OR_data] [--port 7860]

Choose one of the demo's videos (`make demo` writes them under demo_output/surgvu) or upload one, give a world model
(a local folder or a Hub id) and its task and tool probes, and press Analyse. The page shows a few frames; the
surprise per step (the teacher-forced latent L1 of each step from the steps of a training clip before it, as the
evaluation scores it) over time, with the labelled task and tool bands under it when the video is a SurgVU case with
label files; the task and tool probes' predictions per step (each from the training clip's steps ending there); the
rollout error per horizon next to the copy-the-last-context baseline, averaged over those clips; and the actions the
world model's planner infers between two chosen times next to the labelled ones (scripts/plan.py's table).

An MM-OR take (one of those under `--mmor_dir`, or a take folder typed in) is analysed instead of the video when given:
its frames of `--mmor_camera`, one step per `frames_per_step` timepoints as `load_mmor` builds them; the surprise per
step as the live monitor scores it (training_surgical_wm/surprise.py: each step from up to a training clip's steps
before it, actions unknown) over the timepoints, with the labelled sterility breaches shaded on it and listed, and the
steps at or above the monitor's breach threshold (`calibrate_threshold` on the validation takes of the same MM-OR data)
marked. SurgVU's probes, the rollout table and the plan read SurgVU's labels and actions: the page says so in one line.

Frames are sampled and preprocessed as training sampled them (the model's fps, the crop without the tool-name band
and the black margins, V-JEPA 2's preprocessing). As a Hugging Face Space, the models are Hub ids, given by the
environment: SURGICAL_WM_MODEL (the world model), SURGICAL_WM_TASK_PROBE and SURGICAL_WM_TOOL_PROBE.
"""

import argparse
import functools
import os
import re
import sys
from pathlib import Path

# No telemetry nor version check: the page runs offline like the rest of the project.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import numpy as np
import torch
from matplotlib.figure import Figure

from dataset_mmor import MMORDataError, decode_frames, load_mmor, parse_camera
from dataset_mmor.layout import LABEL_FOLDERS, SPLIT_TO_TAKES, take_folder
from dataset_surgvu import (
    TASK_CLASSES,
    TOOL_CLASSES,
    ClipTransform,
    CorruptVideoError,
    action_names,
    crop_box,
    decode_clip,
    probe_video,
)
from dataset_surgvu.builder import sample_frame_indices
from dataset_surgvu.labels import OTHER_TASK, build_actions, labels_at
from dataset_surgvu.layout import find_cases, resolve_dirs
from dataset_surgvu.video import FrameUnavailableError
from modeling_surgical_wm import frames_to_steps
from planning_surgical_wm import DEFAULT_PLANNING_PRESET
from training_surgical_wm.arguments import DataArguments
from training_surgical_wm.evaluation import CALIBRATION_SPLIT, world_model_errors
from training_surgical_wm.loading import time_base, training_settings
from training_surgical_wm.planning import SEARCH_OPTIONS, case_labels, load_world_model, plan_video
from training_surgical_wm.probes import load_probe
from training_surgical_wm.surprise import calibrate_threshold, take_surprise


MODEL_ENV = {"world_model": "SURGICAL_WM_MODEL", "task_probe": "SURGICAL_WM_TASK_PROBE",
             "tool_probe": "SURGICAL_WM_TOOL_PROBE"}
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm")
FRAMES_SHOWN = 8
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # what is not a local folder may be a Hub repository
DECODE_CHUNK = 64  # sampled frames decoded and encoded at a time: a long video never sits whole in memory
WINDOW_BATCH = 32  # clips per predictor or probe call


class AnalysisError(Exception):
    """Something the page shows as one line: a file that cannot be read, a model or probe that cannot be used."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo_dir", default="demo_output", help="the output folder of scripts/demo.py (make demo)")
    parser.add_argument("--world_model", default=None, help=f"a world model folder or Hub id (default: "
                                                            f"${MODEL_ENV['world_model']}, else DEMO_DIR/run/best)")
    parser.add_argument("--task_probe", default=None, help=f"the task probe (default: ${MODEL_ENV['task_probe']}, "
                                                           "else DEMO_DIR/probe_task/best)")
    parser.add_argument("--tool_probe", default=None, help=f"the tool probe (default: ${MODEL_ENV['tool_probe']}, "
                                                           "else DEMO_DIR/probe_tools/best)")
    parser.add_argument("--videos", default=None, help="a folder whose videos the page offers (default: "
                                                       "DEMO_DIR/surgvu)")
    parser.add_argument("--mmor_dir", default=None, help="an MM-OR data folder whose takes the page offers (default: "
                                                         "none)")
    parser.add_argument("--mmor_camera", default="azure:1", help="the camera of the MM-OR takes (default azure:1)")
    parser.add_argument("--dataset_cache_dir", default=None, help="where the Arrow files of the MM-OR takes go "
                                                                  "(default: the datasets cache)")
    parser.add_argument("--plan_samples", type=int, default=None, help="CEM samples per iteration of the plan "
                                                                       f"(default: the {DEFAULT_PLANNING_PRESET} "
                                                                       "preset's)")
    parser.add_argument("--plan_iterations", type=int, default=None, help="CEM iterations of the plan (default: the "
                                                                          f"{DEFAULT_PLANNING_PRESET} preset's)")
    # A Space sets Gradio's own variables (0.0.0.0 and its port).
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="the address to serve on (default: $GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="the port (default: $GRADIO_SERVER_PORT, else 7860)")
    args = parser.parse_args(argv)
    defaults = {"world_model": "run/best", "task_probe": "probe_task/best", "tool_probe": "probe_tools/best"}
    for name, folder in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, os.environ.get(MODEL_ENV[name]) or os.path.join(args.demo_dir, folder))
    args.videos = args.videos or os.path.join(args.demo_dir, "surgvu")
    for name in ("plan_samples", "plan_iterations"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        parse_camera(args.mmor_camera)
    except ValueError as error:
        parser.error(f"--mmor_camera: {error}")
    return args


def find_videos(folder: str) -> list[str]:
    """The videos of the SurgVU-format folder `folder` (hidden and AppleDouble files left out, as the builder leaves
    them), by case and part; none when it holds none (a Space has no demo outputs)."""
    try:
        videos_dir, labels_dir = resolve_dirs(folder)
    except FileNotFoundError:
        return []
    return [str(path) for case in find_cases(videos_dir, labels_dir).values() for _, path in sorted(case.parts.items())]


def find_takes(root: str | None) -> list[str]:
    """The takes of the MM-OR data at `root` (a sterility-breach label file and a take folder each) as `root/take`
    paths, the form the page reads (a take that shares its folder is named by its own name); none without `root`."""
    labels = Path(root or "") / LABEL_FOLDERS["breach"]
    if not root or not labels.is_dir():
        return []
    takes = sorted(path.stem for path in labels.glob("*.json") if not path.name.startswith("."))
    return [str(Path(root) / take) for take in takes if (Path(root) / take_folder(take)).is_dir()]


# ------------------------------------------------------------------------------------------------------- models
def checked(load, *args):
    """`load(*args)`, with the one-line `SystemExit` of the shared loaders turned into an `AnalysisError`."""
    try:
        return load(*args)
    except SystemExit as error:
        raise AnalysisError(str(error).removeprefix("error: ")) from None


@functools.lru_cache(maxsize=2)
def world_model_at(path: str):
    """(model, where its config was read, fps, fps source, steps per training clip) of a world model, loaded once."""
    model, where = checked(load_world_model, path)
    settings, settings_file = training_settings(path)
    fps, fps_source = time_base(None, model.config, where, settings, settings_file)
    frames_per_clip = int(settings.get("frames_per_clip") or DataArguments.frames_per_clip)
    return model, where, fps, fps_source, max(2, frames_per_clip // model.config.frames_per_step)


@functools.lru_cache(maxsize=4)
def probe_at(path: str, target: str, world_model_path: str):
    return checked(load_probe, path, target, world_model_at(world_model_path)[0])


def probes_for(paths: dict[str, str], world_model_path: str) -> tuple[dict, list[str]]:
    """The probes that can be used, by target, and one note for each that cannot (missing or not of this model)."""
    probes, notes = {}, []
    for target, path in paths.items():
        path = (path or "").strip()
        if not path:
            notes.append(f"no {target} probe given: its predictions are not shown")
        elif not Path(path).exists() and not HUB_ID.fullmatch(path):
            notes.append(f"{path}: no such {target} probe (train one with scripts/train_probe.py --target {target})")
        else:
            try:
                probes[target] = probe_at(path, target, world_model_path)
            except AnalysisError as error:
                notes.append(str(error))
    return probes, notes


# ------------------------------------------------------------------------------------------------------- analysis
def step_grid(video: str, fps: float, frames_per_step: int):
    """The video's metadata and its sampled frames (the builder's grid at `fps`) cut to whole steps."""
    try:
        info = probe_video(video)
    except CorruptVideoError as error:
        raise AnalysisError(f"{error} (not a readable video)") from None
    grid = sample_frame_indices(info.num_frames, info.fps, fps)
    grid = grid[: len(grid) // frames_per_step * frames_per_step]
    if len(grid) < 2 * frames_per_step:
        raise AnalysisError(f"{video}: {info.duration:.2f} s at {fps:g} fps is shorter than two steps")
    return info, grid


@torch.no_grad()
def encode_video(model, video: str, info, grid: np.ndarray, progress) -> torch.Tensor:
    """The latents of every step `(S, N, D)`, encoded chunk by chunk as training's clips are (`ClipTransform`)."""
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    box, latents = crop_box(info), []
    try:
        for first in progress.tqdm(range(0, len(grid), DECODE_CHUNK), desc="encoding the video"):
            indices = grid[first : first + DECODE_CHUNK]
            example = {"video_path": video, "frame_indices": indices.tolist(), "crop_box": box, "case_id": "",
                       "actions": np.zeros((len(indices), 1), np.float32), "tasks": np.zeros(len(indices), np.int64),
                       "tools": np.zeros((len(indices), 1), np.float32)}
            pixels = transform(example)["pixel_values_videos"].to(model.device)  # (frames, 3, crop, crop)
            latents.append(model.encode_targets(pixels[None])[0])  # (steps, N, D)
    except (FrameUnavailableError, CorruptVideoError) as error:
        raise AnalysisError(str(error)) from None
    finally:
        transform.close()
    return torch.cat(latents)


def step_labels(model, video: str, info, grid: np.ndarray):
    """Per step, the labelled task, tools present and actions (the case's label files, as the builder reads them),
    and a note; None for each when the video is no labelled SurgVU case."""
    part, labels, offsets, note = checked(case_labels, Path(video), None)
    if labels is None:
        return None, None, None, f"no labels: {note}"
    frames_per_step = model.config.frames_per_step
    arm_tools, tasks = labels_at(labels, offsets, part, grid / info.fps)
    last = np.arange(frames_per_step - 1, len(grid), frames_per_step)  # a step's label is its last frame's
    actions = None
    if list(model.config.action_spec or []) == action_names():
        actions = frames_to_steps(torch.from_numpy(build_actions(arm_tools, tasks))[None], frames_per_step)[0]
    return tasks[last], arm_tools.max(1)[last], actions, f"labels: {note}"


def windows(num_steps: int, length: int) -> dict[int, list[tuple[int, int]]]:
    """(start, stop) of the clip of at most `length` steps that ends at each step, grouped by clip length."""
    by_length = {}
    for stop in range(1, num_steps + 1):
        start = max(0, stop - length)
        by_length.setdefault(stop - start, []).append((start, stop))
    return by_length


def chained_clips(num_steps: int, length: int) -> list[tuple[int, int]]:
    """(start, stop) of clips of `length` steps that overlap by one step, so that every step after the first is
    predicted in exactly one clip; the last clip may be shorter."""
    starts = range(0, max(num_steps - 1, 1), length - 1)
    return [(start, min(start + length, num_steps)) for start in starts]


@torch.no_grad()
def surprise_and_rollout(model, latents: torch.Tensor, actions: torch.Tensor | None, length: int, progress):
    """Surprise per step (NaN at the first, which nothing predicts), and the mean rollout L1 per horizon with its copy
    baseline over the clips of `length` steps: `world_model_errors`, the evaluation's figures, on `chained_clips`."""
    num_steps = len(latents)
    surprise = torch.full((num_steps,), float("nan"))
    rollout, copy, clips = torch.zeros(length - 1, dtype=torch.float64), torch.zeros(length - 1, dtype=torch.float64), 0
    actions = actions if actions is not None else latents.new_zeros(num_steps, model.config.action_dim)
    by_length = {}
    for start, stop in chained_clips(num_steps, length):
        by_length.setdefault(stop - start, []).append((start, stop))
    batches = [spans[first : first + WINDOW_BATCH] for spans in by_length.values()
               for first in range(0, len(spans), WINDOW_BATCH)]
    for batch in progress.tqdm(batches, desc="surprise and rollout"):
        clip_latents = torch.stack([latents[start:stop] for start, stop in batch])  # (B, size, N, D)
        clip_actions = torch.stack([actions[start:stop] for start, stop in batch]).to(latents)  # (B, size, A)
        errors = world_model_errors(model, clip_latents, clip_actions)
        for (start, stop), values in zip(batch, errors["teacher_forced_l1"].float().cpu()):
            surprise[start + 1 : stop] = values
        if clip_latents.shape[1] == length:
            rollout += errors["rollout_l1"].double().sum(0).cpu()
            copy += errors["rollout_copy_l1"].double().sum(0).cpu()
            clips += len(batch)
    return surprise, (rollout / max(clips, 1)).tolist(), (copy / max(clips, 1)).tolist(), clips


@torch.no_grad()
def probe_predictions(probes: dict, latents: torch.Tensor, length: int) -> dict[str, list]:
    """Per target, each step's prediction from the clip of `length` steps ending there: the task's name and
    probability, the tools' names above 0.5."""
    predictions = {target: [None] * len(latents) for target in probes}
    for target, probe in probes.items():
        names = probe.config.id2label
        for size, spans in windows(len(latents), length).items():
            for first in range(0, len(spans), WINDOW_BATCH):
                batch = spans[first : first + WINDOW_BATCH]
                clip_latents = torch.stack([latents[start:stop] for start, stop in batch])
                logits = probe(latents=clip_latents.to(probe.device)).logits.float().cpu()
                for (_, stop), row in zip(batch, logits):
                    if target == "task":
                        best = int(row.argmax())
                        predictions[target][stop - 1] = (names[best], float(row.softmax(-1)[best]))
                    else:
                        present = [names[index] for index in torch.nonzero(row.sigmoid() > 0.5).flatten().tolist()]
                        predictions[target][stop - 1] = present
    return predictions


def frame_gallery(video: str, info, grid: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """A few frames across the video, as they are on disk, with their time."""
    chosen = np.unique(np.linspace(0, len(grid) - 1, FRAMES_SHOWN).round().astype(int))
    frames = decode_clip(video, grid[chosen].tolist())  # (K, H, W, 3) uint8
    return [(frame.numpy(), f"{grid[index] / info.fps:.2f} s") for frame, index in zip(frames, chosen)]


# ------------------------------------------------------------------------------------------------------- MM-OR
def read_take(path: str, camera: str, frames_per_step: int, cache_dir: str | None):
    """The one-step clips of the MM-OR take at `path` (`<MM-OR root>/<take>`), as `load_mmor` builds them: every
    `frames_per_step` timepoints, as the monitor's threshold is calibrated."""
    path = Path(path).expanduser()
    root, take = path.parent, path.name
    if not (root / take_folder(take)).is_dir():
        raise AnalysisError(f"{path}: no such MM-OR take folder (expected <MM-OR root>/<take>)")
    try:
        split = load_mmor(root, camera, frames_per_clip=frames_per_step, clip_stride=frames_per_step, splits=("take",),
                          split_to_takes={"take": [take]}, cache_dir=cache_dir)["take"]
    except (MMORDataError, FileNotFoundError) as error:
        raise AnalysisError(str(error)) from None
    if len(split) < 2:
        raise AnalysisError(f"{path}: {len(split)} step(s) of {frames_per_step} timepoint(s), fewer than two")
    return split


@functools.lru_cache(maxsize=4)
def breach_threshold(model_path: str, root: str, camera: str, window: int, cache_dir: str | None):
    """The monitor's breach threshold for this world model and MM-OR data (`calibrate_threshold`), and a line saying
    where it comes from; None and why there is none (the data lacks a split or a breach to fit it on)."""
    try:
        threshold, timepoints, breaches = calibrate_threshold(world_model_at(model_path)[0], root, window, camera,
                                                              cache_dir)
    except (ValueError, FileNotFoundError) as error:  # MMORDataError is a ValueError
        return None, f"no breach threshold: {error}"
    return threshold, (f"threshold {threshold:.5f}, the F1-best on the {CALIBRATION_SPLIT} takes of {root} "
                       f"({timepoints} timepoints, {breaches} with a breach)")


def breach_spans(timepoints: np.ndarray, breach: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) timepoint of each run of consecutive labelled breach timepoints."""
    spans = []
    for timepoint in timepoints[breach == 1]:
        if spans and spans[-1][1] == timepoint - 1:
            spans[-1] = (spans[-1][0], int(timepoint))
        else:
            spans.append((int(timepoint), int(timepoint)))
    return spans


def breach_rows(spans, triplets: dict[int, str], times: np.ndarray, surprise: torch.Tensor,
                threshold: float | None) -> list[list]:
    """Per labelled breach span: its timepoints, what the label file says, the peak surprise of its steps and how many
    reach the threshold."""
    rows = []
    for number, (first, last) in enumerate(spans, start=1):
        inside = surprise[torch.from_numpy((times >= first) & (times <= last))]
        inside = inside[~inside.isnan()]
        rows.append([number, first, last, triplets[first], round(float(inside.max()), 5) if len(inside) else None,
                     int((inside >= threshold).sum()) if threshold is not None else "-"])
    return rows


def analyse_take(path: str, model_path: str, settings: dict, progress):
    """Every output of the page for an MM-OR take (a bare take name is one of `settings["root"]`): its frames, the
    surprise per step with the breach marks, and the breach spans; the surprise is the live monitor's (`take_surprise`,
    as `calibrate_threshold` scores its takes)."""
    camera, cache_dir = settings["camera"], settings["cache_dir"]
    if settings["root"] and Path(path).parent == Path("."):
        path = str(Path(settings["root"]) / path)
    progress(0.0, desc="loading the world model")
    model, _, _, _, length = world_model_at(model_path)
    if model.config.state_dim:
        raise AnalysisError(f"{model_path}: the model expects a state of {model.config.state_dim} values per step; an "
                            "MM-OR take has none")
    split = read_take(path, camera, model.config.frames_per_step, cache_dir)
    try:
        steps = list(progress.tqdm(take_surprise(model, split, length), total=len(split), desc="surprise per step"))
    except MMORDataError as error:  # a frame that is no JPEG
        raise AnalysisError(str(error)) from None
    times = np.array([timepoint for _, timepoint, _, _ in steps])
    surprise = torch.tensor([float("nan") if value is None else value for _, _, value, _ in steps])
    root, take = str(Path(path).expanduser().parent), Path(path).name
    progress(0.8, desc=f"the breach threshold on the {CALIBRATION_SPLIT} takes")
    threshold, threshold_note = breach_threshold(model_path, root, camera, length, cache_dir)
    if threshold is not None and take in SPLIT_TO_TAKES[CALIBRATION_SPLIT]:
        threshold_note += ", this take among them (its marks are fitted to it)"

    labels = split.select_columns(["timepoints", "breach", "breach_triplets"])
    timepoints = np.array(labels["timepoints"]).ravel()  # every timepoint of the take's steps
    triplets = dict(zip(timepoints.tolist(), (text for row in labels["breach_triplets"] for text in row)))
    breach = np.array(labels["breach"]).ravel()
    spans = breach_spans(timepoints, breach)
    figure = surprise_figure(times, surprise, None, None, [], breaches=spans, threshold=threshold)
    listed = ", ".join(f"{first}-{last}" for first, last in spans)
    notes = [f"breaches: {len(spans)} labelled span(s)" + (f": timepoints {listed}" if spans else ""), threshold_note]
    if threshold is not None:
        above = (surprise >= threshold).numpy()
        in_breach = np.isin(times, timepoints[breach == 1])
        notes[-1] += (f": {int(above.sum())} of {len(times) - 1} scored steps at or above it (marked), "
                      f"{int((above & in_breach).sum())} of them in a labelled breach")
    notes.append("SurgVU's task and tool probes, the rollout table and the plan read SurgVU's labels and actions: not "
                 "shown for an MM-OR take")
    chosen = np.unique(np.linspace(0, len(split) - 1, FRAMES_SHOWN).round().astype(int)).tolist()
    frames = split.select(chosen)
    try:
        pixels = decode_frames([row[-1] for row in frames["frame_paths"]])  # (K, 3, H, W) uint8
    except MMORDataError as error:
        raise AnalysisError(str(error)) from None
    gallery = [(frame.permute(1, 2, 0).numpy(), f"timepoint {row[-1]}")
               for frame, row in zip(pixels, frames["timepoints"])]
    summary = (f"{take} ({root}, camera {camera}): {len(times)} steps of {model.config.frames_per_step} "
               f"timepoint(s), timepoints {int(timepoints[0])}-{int(timepoints[-1])}; surprise as the live monitor "
               f"scores it, each step from up to {length} steps before it, actions unknown")
    rows = breach_rows(spans, triplets, times, surprise, threshold)
    return "\n\n".join([summary, *notes]), gallery, figure, [], [], [], rows


def surprise_figure(times: np.ndarray, surprise: torch.Tensor, tasks, tools, tool_names: list[str],
                    breaches: list[tuple[int, int]] | None = None, threshold: float | None = None):
    """The surprise curve over time, with the labelled task and tool bands under it on the same time axis; for an
    MM-OR take (`breaches` given), over timepoints, with its labelled breach spans shaded and the steps at or above
    `threshold` marked."""
    has_labels = tasks is not None
    rows = [3, 1, 2] if has_labels else [1]
    # A Figure of its own, not pyplot's: pyplot would keep every figure the page ever drew.
    figure = Figure(figsize=(9, 4.5 if has_labels else 2.8))
    axes = figure.subplots(len(rows), 1, sharex=True, gridspec_kw={"height_ratios": rows}, squeeze=False)
    axes = axes[:, 0]
    axes[0].plot(times, surprise.numpy(), color="tab:red", linewidth=1.2)
    axes[0].set_ylabel("surprise (L1)")
    axes[0].set_title("surprise per step")
    if breaches is not None:
        for number, (first, last) in enumerate(breaches):
            axes[0].axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.2, linewidth=0,
                            label="labelled breach" if number == 0 else None)
        if threshold is not None:
            above = surprise.numpy() >= threshold
            axes[0].axhline(threshold, color="black", linestyle="--", linewidth=0.8, label="breach threshold")
            axes[0].scatter(times[above], surprise.numpy()[above], marker="v", color="black", s=16, zorder=3,
                            label="at or above it")
        axes[0].set_title(f"surprise per step: {len(breaches)} labelled breach span(s)")
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=7, loc="upper right")
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    extent = (times[0] - step / 2, times[-1] + step / 2)
    if has_labels:
        axes[1].imshow(tasks[None], aspect="auto", cmap="tab10", vmin=0, vmax=9, interpolation="nearest",
                       extent=(*extent, 0, 1))
        axes[1].set_yticks([0.5], ["task"])
        for task in np.unique(tasks):
            middle = times[tasks == task].mean()
            if task != OTHER_TASK:
                axes[1].text(middle, 0.5, TASK_CLASSES[task], ha="center", va="center", fontsize=7)
        present = np.flatnonzero(tools.any(0))
        axes[2].imshow(tools[:, present].T, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest",
                       extent=(*extent, len(present), 0))
        axes[2].set_yticks(np.arange(len(present)) + 0.5, [tool_names[index] for index in present], fontsize=7)
        axes[2].set_ylabel("tools")
    axes[-1].set_xlabel("time (s)" if breaches is None else "timepoint")
    figure.tight_layout()
    return figure


def prediction_rows(times: np.ndarray, predictions: dict[str, list], tasks, tools) -> list[list]:
    """Per step: its time, the task probe's prediction and probability, the labelled task, the tools the tool probe
    finds and the labelled ones ("-" where there is no probe or no label)."""
    rows = []
    for step, time in enumerate(times):
        task = predictions["task"][step] if "task" in predictions else None
        found = predictions["tools"][step] if "tools" in predictions else None
        rows.append([
            step + 1, round(float(time), 2), task[0] if task else "-", round(task[1], 3) if task else None,
            TASK_CLASSES[tasks[step]] if tasks is not None else "-",
            ", ".join(found) if found is not None else "-",
            ", ".join(TOOL_CLASSES[index] for index in np.flatnonzero(tools[step])) if tools is not None else "-",
        ])
    return rows


def plan_rows(result: dict) -> list[list]:
    """scripts/plan.py's table: per step and action group, the inferred and the labelled option."""
    rows = []
    for step in result["steps"]:
        for group, inferred in step["inferred"].items():
            labelled = "-" if step["labelled"] is None else step["labelled"][group]
            match = step["match"].get(group)
            rows.append([step["step"], f"{step['from']:.2f} -> {step['to']:.2f}", group, str(inferred),
                         str(labelled), "" if match is None else ("yes" if match else "no")])
    return rows


PREDICTION_COLUMNS = ["step", "time (s)", "task (probe)", "p", "task (labelled)", "tools (probe)", "tools (labelled)"]
ROLLOUT_COLUMNS = ["horizon (steps)", "world model L1", "copy last context L1"]
PLAN_COLUMNS = ["step", "from -> to (s)", "group", "inferred", "labelled", "match"]
BREACH_COLUMNS = ["span", "from (timepoint)", "to (timepoint)", "labelled (subject, object, predicate)",
                  "peak surprise", "steps at or above threshold"]


def analyse(choice: str | None, upload, take: str | None, model_path: str, task_probe: str, tool_probe: str,
            start: float | None, goal: float | None, plan_settings: dict, mmor_settings: dict, progress=gr.Progress()):
    """Every output of the page for one video, or for an MM-OR take when one is given; a problem becomes a line of the
    message, never a traceback."""
    empty = ([], None, [], [], [], [])
    notes = []
    video = upload if upload else choice
    take = (take or "").strip()
    try:
        if not video and not take:
            raise AnalysisError("choose one of the demo's videos, upload one or give an MM-OR take")
        model_path = (model_path or "").strip()
        if not model_path:
            raise AnalysisError("give a world model: a folder or a Hub id")
        if take:
            return analyse_take(take, model_path, mmor_settings, progress)
        progress(0.0, desc="loading the world model")
        model, where, fps, fps_source, length = world_model_at(model_path)
        probes, probe_notes = probes_for({"task": task_probe, "tools": tool_probe}, model_path)
        notes += probe_notes
        info, grid = step_grid(video, fps, model.config.frames_per_step)
        latents = encode_video(model, video, info, grid, progress)
        tasks, tools, actions, label_note = step_labels(model, video, info, grid)
        notes.append(label_note)
        surprise, rollout, copy, clips = surprise_and_rollout(model, latents, actions, length, progress)
        progress(0.8, desc="probes")
        predictions = probe_predictions(probes, latents, length)
    except AnalysisError as error:
        gr.Warning(str(error))
        return (f"**error:** {error}", *empty)

    frames_per_step = model.config.frames_per_step
    times = grid[frames_per_step - 1 :: frames_per_step] / info.fps  # a step's time is its last frame's
    figure = surprise_figure(times, surprise, tasks, tools, list(TOOL_CLASSES))
    predicted = prediction_rows(times, predictions, tasks, tools)
    rollout_rows = [[horizon, round(error, 5), round(baseline, 5)]
                    for horizon, (error, baseline) in enumerate(zip(rollout, copy), start=1)] if clips else []
    if not clips:
        notes.append(f"the video is shorter than a training clip ({length} steps): no rollout error")

    progress(0.9, desc="planning")
    plan_table = []
    if start is not None and goal is not None:
        try:
            result = plan_video(model, where, video, float(start), float(goal), checkpoint=model_path, fps=fps,
                                fps_source=fps_source, search=plan_settings)
            plan_table = plan_rows(result)
        except SystemExit as error:
            notes.append(f"plan: {str(error).removeprefix('error: ')}")
    gallery = frame_gallery(video, info, grid)
    summary = (f"{Path(video).name}: {info.duration:.2f} s, {len(times)} steps at {fps:g} fps "
               f"({frames_per_step} frame(s) per step); clips of {length} steps")
    message = "\n\n".join([summary, *notes])
    return message, gallery, figure, predicted, rollout_rows, plan_table, []


def build_page(args: argparse.Namespace) -> gr.Blocks:
    videos, takes = find_videos(args.videos), find_takes(args.mmor_dir)
    # The preset gives every setting left None (`SurgicalWorldModel.plan`).
    plan_settings = {**dict.fromkeys(SEARCH_OPTIONS), "preset": DEFAULT_PLANNING_PRESET,
                     "num_samples": args.plan_samples, "iterations": args.plan_iterations,
                     "action_prior": "uniform", "seen_only": False}
    with gr.Blocks(title="Surgical world model") as page:
        gr.Markdown("# Surgical world model\nA video or an MM-OR take through the world model: surprise, probes, "
                    "rollout, a plan.")
        with gr.Row():
            choice = gr.Dropdown(choices=[(os.path.relpath(path, args.videos), path) for path in videos],
                                 value=videos[0] if videos else None, label="a demo video", elem_id="video-choice")
            upload = gr.File(label="or upload a video", file_types=list(VIDEO_SUFFIXES), type="filepath",
                             elem_id="video-upload")
            take = gr.Dropdown(choices=[(Path(path).name, path) for path in takes], value=None, allow_custom_value=True,
                               label="or an MM-OR take (analysed instead of the video when given; a take folder "
                                     "<MM-OR root>/<take>)", elem_id="mmor-take")
        with gr.Row():
            model_path = gr.Textbox(value=args.world_model, label="world model (folder or Hub id)",
                                    elem_id="world-model")
            task_probe = gr.Textbox(value=args.task_probe, label="task probe", elem_id="task-probe")
            tool_probe = gr.Textbox(value=args.tool_probe, label="tool probe", elem_id="tool-probe")
        with gr.Row():
            start = gr.Number(value=1.0, label="plan from (s)", elem_id="plan-start")
            goal = gr.Number(value=2.0, label="plan to (s)", elem_id="plan-goal")
        button = gr.Button("Analyse", variant="primary", elem_id="analyse")
        message = gr.Markdown(elem_id="message")
        gallery = gr.Gallery(label="frames", columns=FRAMES_SHOWN, height=180, elem_id="frames")
        plot = gr.Plot(label="surprise over time, labelled task and tools", elem_id="surprise-plot")
        predictions = gr.Dataframe(headers=PREDICTION_COLUMNS, label="probe predictions per step",
                                   elem_id="task-prediction", interactive=False)
        rollout = gr.Dataframe(headers=ROLLOUT_COLUMNS, label="rollout error per horizon", elem_id="rollout-error",
                               interactive=False)
        plan = gr.Dataframe(headers=PLAN_COLUMNS, label="the plan: inferred and labelled actions",
                            elem_id="plan-table", interactive=False)
        breaches = gr.Dataframe(headers=BREACH_COLUMNS, label="MM-OR: the labelled sterility breaches",
                                elem_id="breach-table", interactive=False)
        mmor_settings = {"root": args.mmor_dir, "camera": args.mmor_camera, "cache_dir": args.dataset_cache_dir}
        button.click(functools.partial(analyse, plan_settings=plan_settings, mmor_settings=mmor_settings),
                     inputs=[choice, upload, take, model_path, task_probe, tool_probe, start, goal],
                     outputs=[message, gallery, plot, predictions, rollout, plan, breaches])
    return page


# Fonts of the system: the default theme's would be fetched from the web.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def serve(page: gr.Blocks, host: str, port: int, block: bool = True) -> None:
    """Serves the page; without `block`, in a thread of its own (a test drives it, then `page.close()`)."""
    page.queue().launch(server_name=host, server_port=port, theme=THEME, ssr_mode=False, show_error=False,
                        prevent_thread_lock=not block, quiet=not block)


def main(argv=None) -> int:
    args = parse_args(argv)
    serve(build_page(args), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

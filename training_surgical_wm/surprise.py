# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Surprise as a video plays: the world model follows a video step by step and scores each new step.

Surprise is the evaluation's (scripts/evaluate_surgical_model.py): the latent L1 of a step against its prediction from
the steps before it, averaged over tokens and dimensions in float32, with the context starting at positions 0 as a
clip's does. A live video has no clip boundaries: the context of a step is up to `window` steps before it, and starts
every `window // 2` steps (`context_start`: between `window // 2 + 1` and `window` steps once `window` steps have
been seen). The actions are unknown, since a video being recorded has no labels: the learnt null action of a model
trained with `action_dropout`, else zeros (a pure video world model's input). The threshold is calibrated as the
evaluation calibrates MM-OR's breach threshold: the F1-best threshold (metrics/binary_detection) of this surprise on
the breach labels of the `CALIBRATION_SPLIT` takes (`calibrate_threshold`).

A step's latent is `SurgicalWorldModel.encode` of the step's own frames (`frames_per_step`, repeated into one tubelet
when fewer): the encoder never attends across steps, in a clip or here, so a streamed step's latent is the one an
offline clip encoding gives it, and nothing from later steps leaks into it. A fine-tuned checkpoint that still holds
its EMA target encoder is read through it, as the evaluation reads it.

`SurpriseMonitor` keeps the predictor's KV cache of the live context, so that each new step runs through the
predictor once instead of a whole context again; `window_surprise` recomputes each context, the reference it equals
within float rounding. Why contexts start in hops rather than slide one step at a time: from the predictor's second
layer on, a cached step's keys were computed attending to the steps before it, so a cache whose oldest step is
dropped is not the window recomputed (and V-JEPA 2's RoPE, which turns the two dimensions of each pair by different
frequencies, does not depend on relative positions alone, so cached keys cannot be moved to earlier positions
either).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from dataset_surgvu import CorruptVideoError, FrameUnavailableError, crop_box, decode_clip, probe_video
from dataset_surgvu.builder import sample_frame_indices
from dataset_surgvu.transforms import crop_frames, vjepa2_preprocess

from .evaluation import CALIBRATION_SPLIT, latent_l1, load_metric


def unknown_actions(model, rows: int, steps: int, device: torch.device) -> torch.Tensor | None:
    """The actions `(rows, steps, action_dim)` of steps without labels: NaN, the learnt null action, for a model
    trained with `action_dropout`; else zeros, as `check_step_inputs` fills missing actions. None without actions."""
    dim = model.config.action_dim
    if dim == 0:
        return None
    fill = float("nan") if model.config.action_dropout > 0 else 0.0
    return torch.full((rows, steps, dim), fill, device=device)


def context_start(step: int, window: int) -> int:
    """The first step of the context that predicts `step`: 0 for the first `window` steps, then the latest multiple of
    `window // 2` that leaves between `window // 2 + 1` and `window` steps of context."""
    hop = max(1, window // 2)
    return max(0, hop * -(-(step - window) // hop))


@torch.inference_mode()
def window_surprise(model, latents: torch.Tensor, window: int) -> torch.Tensor:
    """
    The reference: surprise of steps 1 ... S - 1 of `latents` `(S, N, D)`, `(S - 1,)`, each predicted by running the
    predictor afresh over its context (`context_start`), at positions 0 ... from the context's first step, as a clip
    starting there is scored.
    """
    scores = []
    for step in range(1, latents.shape[0]):
        context = latents[context_start(step, window) : step][None]  # (1, C, N, D)
        actions = unknown_actions(model, 1, context.shape[1], latents.device)
        predicted = model.predictor(context, actions)[:, -1:]  # (1, 1, N, D)
        scores.append(latent_l1(predicted, latents[None, step : step + 1])[0, 0])
    return torch.stack(scores) if scores else latents.new_zeros(0)


class SurpriseMonitor:
    """
    Surprise of a stream of step latents, one step at a time: `push(latent)` returns the surprise of that step (None
    for the first, which nothing predicts), the same as `window_surprise` within float rounding.

    The live context keeps the predictor's KV cache of its steps: a new step runs through the predictor once and
    attends to the cached steps, instead of the whole context again. Every `window // 2` steps a new context starts
    (`context_start`); its steps so far, the last `window // 2 + 1`, run through the predictor together once, and
    fill its cache. A cache is not slid step by step: from the second layer on, a cached step's keys were computed
    attending to the steps before it, so a cache whose oldest step is dropped is not the window recomputed.
    """

    def __init__(self, model, window: int = 32):
        if window < 1:
            raise ValueError(f"The window must hold at least 1 step, got {window}.")
        if model.config.state_dim:
            raise ValueError(f"The model expects a state of {model.config.state_dim} values per step; a video has "
                             "none.")
        self.model = model
        self.window = window
        self.num_steps = 0
        self.recent = collections.deque(maxlen=window)  # the latents `(N, D)` of the last `window` steps
        self.start: int | None = None  # the first step of the live context
        self.cache = None
        self.prediction: torch.Tensor | None = None  # (1, 1, N, D): the next step, from the live context
        self.device = next(model.parameters()).device
        self.actions = unknown_actions(model, 1, 1, self.device)

    @torch.inference_mode()
    def push(self, latent: torch.Tensor) -> float | None:
        """The surprise of the step whose latent `(N, D)` comes next; then the prediction of the step after it."""
        step = self.num_steps
        surprise = None if step == 0 else float(latent_l1(self.prediction, latent[None, None])[0, 0])
        self.recent.append(latent)
        start = context_start(step + 1, self.window)  # the context that predicts the next step
        if start != self.start:
            self.start, self.cache = start, self.model.predictor.new_cache()
            context = torch.stack(list(self.recent)[start - step - 1 :])[None]  # (1, step + 1 - start, N, D)
            actions = unknown_actions(self.model, 1, context.shape[1], self.device)
        else:
            context, actions = latent[None, None], self.actions  # (1, 1, N, D)
        self.prediction = self.model.predictor(context, actions, cache=self.cache)[:, -1:]
        self.num_steps += 1
        return surprise


@dataclasses.dataclass(frozen=True)
class VideoStep:
    """One step of a video: its index, the time of its last frame (seconds from the first frame) and its pixels
    `(frames_per_step, 3, crop, crop)`, preprocessed as training preprocessed its clips."""

    index: int
    time: float
    pixels: torch.Tensor


def video_steps(path: str | os.PathLike, fps: float, frames_per_step: int, crop_size: int, follow: bool = False,
                idle_timeout: float = 10.0, poll: float = 0.5, chunk_steps: int = 32) -> Iterator[VideoStep]:
    """
    The steps of a video at `fps`, sampled, cropped and preprocessed as the dataset builder and `ClipTransform` do
    (its frame grid at `fps`, its crop box without the tool-name band and the black margins, V-JEPA 2's resize and
    normalisation), decoded `chunk_steps` at a time.

    With `follow`, the file may still be being written: whenever it has changed, it is read again and the steps it
    now holds are given; it ends when the file has not changed for `idle_timeout` seconds (checked every `poll`). A
    file that cannot be read yet (a container whose index is written last) is waited for the same way. The crop box
    is found once, on the first readable version. Raises `CorruptVideoError` or `FrameUnavailableError` naming the
    file when it cannot be read (with `follow`: when it still cannot once it stops changing).
    """
    path = Path(path)
    done, box, failure = 0, None, None
    last_state, last_change = None, time.monotonic()
    while True:
        stat = path.stat()
        state = (stat.st_size, stat.st_mtime_ns)
        if state != last_state:
            last_state, last_change = state, time.monotonic()
            try:
                info = probe_video(path, check_end=not follow)
                box = crop_box(info) if box is None else box
                grid = sample_frame_indices(info.num_frames, info.fps, fps)
                available = len(grid) // frames_per_step
                while done < available:
                    stop = min(available, done + chunk_steps)
                    indices = grid[done * frames_per_step : stop * frames_per_step]
                    frames = crop_frames(decode_clip(path, indices), box)  # (T, H, W, 3)
                    pixels = vjepa2_preprocess(frames.permute(0, 3, 1, 2), crop_size)  # (T, 3, crop, crop)
                    for offset, step in enumerate(range(done, stop)):
                        last = indices[(offset + 1) * frames_per_step - 1]
                        yield VideoStep(step, float(last / info.fps),
                                        pixels[offset * frames_per_step : (offset + 1) * frames_per_step])
                    done = stop
                failure = None
                last_change = time.monotonic()  # idle from the end of this read, however long it took
            except (CorruptVideoError, FrameUnavailableError) as error:
                if not follow:
                    raise
                failure = error  # a file still being written: read it again when it changes
        if not follow:
            return
        if time.monotonic() - last_change >= idle_timeout:
            if failure is not None:
                raise failure
            return
        time.sleep(poll)


def take_surprise(model, split, window: int, batch_size: int = 8) -> Iterator[tuple[str, int, float | None, int]]:
    """
    The monitor's surprise on MM-OR: each step of a `load_mmor` split of one-step clips (`frames_per_clip` and
    `clip_stride` the model's `frames_per_step`), take by take in timepoint order, each take streamed through a
    `SurpriseMonitor` of `window`. Yields (take, the step's last timepoint, its surprise (None for a take's first
    step), its breach label (the last timepoint's, -1 where the label file has none)); steps whose frames all failed to
    decode in a batch are left out.
    """
    from torch.utils.data import DataLoader, Subset

    from dataset_mmor import MMORClips
    from dataset_surgvu import collate_clips
    from dataset_surgvu.catalog import get_dataset

    rows = split.select_columns(["take", "timepoints"])
    takes, timepoints = rows["take"], rows["timepoints"]
    order = sorted(range(len(split)), key=lambda index: (takes[index], timepoints[index][0]))
    clips = MMORClips(split, get_dataset("mmor").transform(crop_size=model.config.encoder_config.crop_size))
    device = next(model.parameters()).device
    monitors = {}
    for batch in DataLoader(Subset(clips, order), batch_size=batch_size, collate_fn=collate_clips):
        if "sample_id" not in batch:  # every step of the batch failed to decode
            continue
        latents = model.encode_targets(batch["pixel_values_videos"].to(device))  # (B, 1, N, D)
        for row, sample in enumerate(batch["sample_id"].tolist()):
            monitor = monitors.setdefault(takes[sample], SurpriseMonitor(model, window))
            yield (takes[sample], int(timepoints[sample][-1]), monitor.push(latents[row, 0]),
                   int(batch["breach"][row, -1]))


def calibrate_threshold(model, data_root: str, window: int, camera: str = "azure:1",
                        dataset_cache_dir: str | None = None, batch_size: int = 8) -> tuple[float, int, int]:
    """
    The F1-best threshold of the monitor's surprise on the breach labels of the `CALIBRATION_SPLIT` takes of the MM-OR
    data at `data_root`, as the evaluation calibrates its breach threshold (metrics/binary_detection): each take is
    streamed through a `SurpriseMonitor` of `window`, one step per timepoint, and every scored timepoint with a breach
    label counts. Returns (threshold, timepoints, breaches). Raises `ValueError` naming the data when the split has no
    timepoint or no breach.
    """
    from training_surgical_wm.arguments import DataArguments
    from training_surgical_wm.data import load_dataset_splits

    frames_per_step = model.config.frames_per_step
    data_args = DataArguments(dataset="mmor", data_root=data_root, camera=camera, frames_per_clip=frames_per_step,
                              clip_stride=frames_per_step, dataset_cache_dir=dataset_cache_dir)
    dataset = load_dataset_splits(data_args)
    split = dataset.get(CALIBRATION_SPLIT)
    if split is None or not len(split):
        raise ValueError(f"{data_root}: no {CALIBRATION_SPLIT} takes to calibrate the threshold on")
    scores, labels = [], []
    for _, _, surprise, label in take_surprise(model, split, window, batch_size):
        if surprise is not None and label >= 0:
            scores.append(surprise)
            labels.append(label)
    if not sum(labels):
        raise ValueError(f"{data_root}: the {CALIBRATION_SPLIT} takes have no breach: the threshold cannot be "
                         "calibrated on them")
    threshold = load_metric("binary_detection").compute(predictions=scores, references=labels)["threshold"]
    return float(threshold), len(labels), sum(labels)

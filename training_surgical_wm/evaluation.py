# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The world model's latent error per step and per horizon next to the copy-the-last-context baseline: the figures of
the evaluation, which the demo page also shows for a single video."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modeling_surgical_wm import rollout_errors

# Every detection threshold (the evaluation's breach threshold, the live monitor's alerts) is fitted on this split, so
# that split is never scored with it.
CALIBRATION_SPLIT = "validation"
METRICS_DIR = Path(__file__).resolve().parent.parent / "metrics"
# What the swapped-actions test scores each clip with instead of its own actions, for the reports.
SWAP_PARTNERS = ("the actions of another clip drawn at random (seeded) among the clips of other videos (other cases "
                 "or takes; among the other clips when the split holds one video): neighbouring clips of one video "
                 "mostly share their labels")


def swap_partners(videos, seed: int) -> np.ndarray:
    """
    For the swapped-actions test, the position of the clip whose actions each clip is scored with instead of its own:
    a seeded uniform draw among the clips of other videos (`videos`, one id per clip: a case or a take), since the
    clips of one video mostly share their labels (on the 12-case demo's test split, each clip's neighbour in the
    split keeps the task at 67% of the steps and each arm's tool at 75-82%; a clip of another case, at 14-27%). When
    every clip is of one video, the draw is among the other clips. -1 for a single clip, which has no other clip.
    """
    videos = np.asarray(list(videos), dtype=object)
    count = len(videos)
    partners = np.full(count, -1, dtype=np.int64)
    if count < 2:
        return partners
    _, group = np.unique(videos.astype(str), return_inverse=True)
    order = np.argsort(group, kind="stable")  # the clips video by video
    sizes = np.bincount(group)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])[group]  # where each clip's video starts in `order`
    size = sizes[group]
    if len(sizes) == 1:  # one video (`order` is the clips' own): any other clip, skipping the clip itself
        first, size = np.arange(count), 1
    draw = np.floor(np.random.default_rng(seed).random(count) * (count - size)).astype(np.int64)
    partners[:] = order[draw + (draw >= first) * size]
    return partners


def load_metric(name: str):
    """A metric of this repository's `metrics/` folder (never the Hub's)."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def latent_l1(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Latent L1 per clip and step `(B, K)`, over tokens and dims, in float32: the surprise of a step."""
    return (predicted.float() - target.float()).abs().mean((2, 3))


def latent_errors(predicted: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 and cosine similarity per clip and step `(B, K)`, over tokens (and dims), in float32."""
    return latent_l1(predicted, target), latent_cosine(predicted, target)


def latent_cosine(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per clip and step `(B, K)`, averaged over tokens, in float32."""
    return F.cosine_similarity(predicted.float(), target.float(), dim=-1).mean(2)


@torch.no_grad()
def world_model_errors(world_model, latents: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor | None = None,
                       baselines: bool = True) -> dict[str, torch.Tensor]:
    """Teacher-forced and rolled-out L1 / cosine per clip and step, and (with `baselines`) their copy-the-last-context
    baselines, which do not depend on the actions. `actions` are the labels per step, paired with the transitions as
    the model pairs them (`transition_actions`). Predictions read `latents`; they, and the baselines' copies, are
    scored against `targets` (default: `latents`), as training's validation scores them. The rollout's L1 and its
    baseline are the model's own `rollout_errors`, the values training's validation reports."""
    targets = latents if targets is None else targets
    num_steps = latents.shape[1]
    target = targets[:, 1:]
    transitions = world_model.transition_actions(actions)  # (B, S - 1, A)
    predicted = world_model.predict(latents[:, :-1], transitions)  # step t + 1 from the true steps <= t
    imagined = world_model.rollout(latents[:, :1], transitions, steps=num_steps - 1)  # horizon h from step 1
    errors = {}
    errors["teacher_forced_l1"], errors["teacher_forced_cosine"] = latent_errors(predicted, target)
    errors["rollout_l1"], copy_context_l1 = rollout_errors(imagined, targets)
    errors["rollout_cosine"] = latent_cosine(imagined, target)
    if baselines:
        errors["teacher_forced_copy_l1"], errors["teacher_forced_copy_cosine"] = latent_errors(targets[:, :-1], target)
        errors["rollout_copy_l1"] = copy_context_l1
        errors["rollout_copy_cosine"] = latent_cosine(targets[:, :1].expand_as(target), target)
    return errors

# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The surgical world model's losses and clip metrics, apart from its layers (as transformers keeps its loss helpers in
`loss/`). Travels to the Hub with `modeling_surgical_wm.py`, which imports it relatively: only torch here."""

import torch
import torch.nn.functional as F


def frames_to_steps(values: torch.Tensor, frames_per_step: int) -> torch.Tensor:
    """
    Per-frame values `(batch, frames, dim)` (SurgVU's actions are per-frame labels) to per-step values
    `(batch, frames / frames_per_step, dim)`: the mean over the frames of each step. For multi-hot labels this is
    the fraction of the step each label holds, so a change inside a step stays visible instead of being dropped.
    """
    batch_size, num_frames, dim = values.shape
    if not values.is_floating_point():
        values = values.float()
    return values.reshape(batch_size, num_frames // frames_per_step, frames_per_step, dim).mean(2)  # (B, S, dim)


def l1_per_clip(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of each clip `(batch,)` over its steps, tokens and channels, computed in float32."""
    return (predicted.float() - target.float()).abs().flatten(1).mean(1)


def masked_l1_per_clip(predicted: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of each clip `(batch,)` over its masked tokens only (0 where none is masked)."""
    per_token = (predicted.float() - target.float()).abs().mean(-1)  # (B, S, N)
    masked = per_token * token_mask
    return masked.flatten(1).sum(1) / token_mask.flatten(1).sum(1).clamp(min=1)


def rollout_errors(imagined: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    L1 per clip and per horizon `(batch, steps - 1)` of `imagined` `(batch, steps - 1, tokens, dim)`, a rollout from
    the first step of `latents` `(batch, steps, tokens, dim)`, and of the copy-the-context-latent baseline.
    """
    targets = latents.float()
    model_error = (imagined.float() - targets[:, 1:]).abs().mean(dim=(2, 3))
    copy_context_error = (targets[:, :1] - targets[:, 1:]).abs().mean(dim=(2, 3))
    return model_error, copy_context_error


def contrastive_loss(
    predicted: torch.Tensor, target: torch.Tensor, temperature: float, negatives: str = "batch"
) -> torch.Tensor:
    """
    InfoNCE on mean-pooled latents `(batch, steps, tokens, dim)`: each pooled prediction must pick its own future.
    `negatives="batch"` sets it among the futures of the same step in the batch's other clips (0 for a batch of one
    clip); `"clip_steps"` among every future of the batch, the other steps of its own clip included (0 for a single
    future).
    """
    batch_size, num_steps = predicted.shape[:2]
    candidates = batch_size if negatives == "batch" else batch_size * num_steps
    if candidates < 2:
        return predicted.new_zeros((), dtype=torch.float32)
    predicted = F.normalize(predicted.float().mean(2), dim=-1)  # (B, S, D), no CLS token: mean-pool patches
    target = F.normalize(target.float().mean(2), dim=-1)  # (B, S, D)
    if negatives == "clip_steps":
        logits = predicted.flatten(0, 1) @ target.flatten(0, 1).T / temperature  # (B * S, B * S)
        return F.cross_entropy(logits, torch.arange(candidates, device=logits.device))
    logits = torch.einsum("bsd,csd->sbc", predicted, target) / temperature  # (S, B, B)
    labels = torch.arange(batch_size, device=logits.device).expand(logits.shape[0], -1)  # (S, B)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def action_changes(transition_actions: torch.Tensor) -> torch.Tensor:
    """Which transitions `(batch, transitions)` have an action `(batch, transitions, dim)` other than the transition
    before them (the first has none before it: False). With the labels of t+1 paired with t -> t+1, these are the
    transitions whose labels change."""
    changed = (transition_actions[:, 1:] != transition_actions[:, :-1]).any(-1)
    return F.pad(changed, (1, 0), value=False)


def weighted_l1_per_clip(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the steps of each clip `(batch,)` of the L1 of each step (over tokens and channels) times its weight
    `(batch, steps)`: a clip's value does not depend on the rest of the batch."""
    per_step = (predicted.float() - target.float()).abs().mean(dim=(2, 3))  # (B, S)
    return (per_step * weights).mean(1)


def action_contrastive_loss(
    own_error: torch.Tensor, other_errors: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """
    InfoNCE over L1 distances: the prediction of each transition under its own action must be nearer the true next
    latent than its predictions under other actions. `own_error` `(batch, steps)` and `other_errors` `(batch, steps,
    negatives)` are L1 distances to the target; `valid` `(batch, steps, negatives)` marks the other actions that
    differ from the own one. The mean over the transitions with at least one valid other action (0 without any).
    """
    logits = -torch.cat([own_error.unsqueeze(-1), other_errors], dim=-1).float() / temperature  # (B, S, 1 + K)
    logits = logits.masked_fill(F.pad(~valid, (1, 0), value=False), float("-inf"))
    counted = valid.any(-1)  # (B, S)
    per_transition = torch.logsumexp(logits, dim=-1) - logits[..., 0]  # -log softmax of the own action
    per_transition = per_transition.masked_fill(~counted, 0.0)
    return per_transition.sum() / counted.sum().clamp(min=1)

# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Steps that go wrong: the non-finite guard (the same skip decision on every rank), the stop after a run of bad
steps, and the debugging hooks `--sample_log` and `--nan_at_steps`."""

import hashlib
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType

from .arguments import TrainArguments


logger = get_logger(__name__, log_level="INFO")


class NonFiniteGuard:
    """Skips the optimizer steps whose loss or gradients are not finite, with the same decision on every rank.

    What happens to a bad step depends on the engine:
    - one device, DDP, FSDP (fp32 or bf16): a non-finite loss on any rank skips backward on every rank (a rank that
      skipped alone would hang the others in the gradient all-reduce); a non-finite gradient norm skips
      `optimizer.step()`. The gradients of the whole accumulation window are dropped, the weights stay as they were.
    - fp16 with a GradScaler: a non-finite loss is skipped as above, before any unscale, so the scaler is untouched.
      A non-finite gradient goes through `optimizer.step()` anyway: the scaler then skips the update itself and
      lowers its scale, which keeps its state consistent (skipping `step()` after the unscale in
      `clip_grad_norm_` would make the next step fail with "unscale_() has already been called").
    - DeepSpeed: `accelerator.backward` runs the engine's backward and step, and the engine owns overflow handling
      (its fp16 loss scaler skips an overflowing step and lowers the scale; with bf16 it has no skip). The guard
      only counts the steps the engine skipped and the non-finite losses, for the log and `--max_bad_steps`.
    """

    def __init__(self, accelerator: Accelerator, max_grad_norm: float):
        self.accelerator = accelerator
        self.max_grad_norm = max_grad_norm
        self.engine_steps = accelerator.distributed_type == DistributedType.DEEPSPEED
        self.window_is_bad = False  # a non-finite loss in the current accumulation window

    def backward(self, loss: torch.Tensor, skip: bool = False) -> bool:
        """Back-propagates `loss` unless a rank's loss in this accumulation window was not finite, or `skip` (the
        same on every rank: a rank's batch had no decodable clip); True if the window is skipped."""
        not_finite = (~torch.isfinite(loss.detach()) | skip).float()
        bad = self.accelerator.reduce(not_finite, reduction="sum").item() > 0
        self.window_is_bad = self.window_is_bad or bad
        if self.engine_steps or not self.window_is_bad:
            self.accelerator.backward(loss)
        return bad

    def step(self, model, optimizer) -> bool:
        """At the end of an accumulation window: clip, then step or skip; always drops the gradients.

        Returns whether the weights were updated.
        """
        if self.engine_steps:
            updated = not (self.window_is_bad or optimizer.step_was_skipped)
        elif self.window_is_bad:
            updated = False
        else:
            grad_norm = self.accelerator.clip_grad_norm_(model.parameters(), self.max_grad_norm)
            finite = math.isfinite(float(grad_norm))
            if finite or self.accelerator.scaler is not None:
                optimizer.step()  # with a scaler and an inf gradient: the scaler skips and lowers its scale
            updated = finite and not optimizer.step_was_skipped
        optimizer.zero_grad(set_to_none=True)
        self.window_is_bad = False
        return updated


class DebugHooks:
    """`--sample_log` and `--nan_at_steps`: debugging aids, kept out of the training loop's logic."""

    def __init__(self, train_args: TrainArguments, process_index: int):
        self.process_index = process_index
        self.sample_log = f"{train_args.sample_log}.rank{process_index}" if train_args.sample_log else None
        self.nan_steps = set()
        for item in (train_args.nan_at_steps or "").split(","):
            if item.strip():
                step, _, rank = item.strip().partition("@")
                if not rank or int(rank) == process_index:
                    self.nan_steps.add(int(step))

    def on_batch(self, step: int, epoch: int, batch: dict) -> None:
        if self.sample_log:
            with open(self.sample_log, "a") as handle:
                handle.write(f"{step} {epoch} {batch['sample_id'].tolist()}\n")

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step in self.nan_steps else loss

    def on_end(self, model) -> None:
        if self.sample_log:
            digest = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
            with open(self.sample_log, "a") as handle:
                handle.write(f"final weights {digest.hexdigest()}\n")


class BadStepLimit:
    """Counts the optimizer steps the guard skipped and stops the run after `max_bad_steps` of them in a row, with a
    message that says what to try and where to resume from."""

    def __init__(self, accelerator: Accelerator, max_bad_steps: int, checkpoints_dir: Path, skipped_steps: int = 0):
        self.accelerator = accelerator
        self.max_bad_steps = max_bad_steps
        self.checkpoints_dir = checkpoints_dir
        self.skipped_steps = skipped_steps  # in all, saved with the training state
        self.in_a_row = 0

    def update(self, updated: bool, step: int) -> None:
        """After optimizer step `step` (1-based) ended, taken (`updated`) or skipped; raises SystemExit at the limit."""
        if updated:
            self.in_a_row = 0
            return
        self.skipped_steps += 1
        self.in_a_row += 1
        logger.warning(f"step {step}: non-finite loss or gradient, step skipped ({self.in_a_row} in a row, "
                       f"{self.skipped_steps} in all)")
        if self.in_a_row >= self.max_bad_steps:
            self.accelerator.end_training()
            raise SystemExit(
                f"error: stopping: {self.in_a_row} consecutive optimizer steps had a non-finite loss or gradient (up "
                f"to step {step}). Lower --learning_rate, prefer bf16 to fp16, or check the data; resume from "
                f"{self.checkpoints_dir} with --resume_from_checkpoint latest."
            )

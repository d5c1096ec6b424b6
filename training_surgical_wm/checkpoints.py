# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Resumable checkpoints named by optimizer step: written atomically (a completion marker last, rotated only after the
new one is complete), found, and restored with a check that the RNG state came back."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from .arguments import TrainArguments


logger = get_logger(__name__, log_level="INFO")

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
TRAINING_STATE = "training_state.json"


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Checkpoints whose completion marker was written, oldest first. Half-written ones are never listed."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and (path / COMPLETE_MARKER).is_file():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def rng_fingerprint() -> str:
    return hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]


def save_checkpoint(accelerator: Accelerator, checkpoints_dir: Path, state: dict, total_limit: int | None) -> Path:
    """Rotates old checkpoints first, saves into a temporary directory, writes the marker last, then renames."""
    final = checkpoints_dir / f"{CHECKPOINT_PREFIX}{state['global_step']}"
    partial = checkpoints_dir / f".partial-{CHECKPOINT_PREFIX}{state['global_step']}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        existing = [path for path in complete_checkpoints(checkpoints_dir) if path != final]
        if total_limit is not None and len(existing) >= total_limit:
            for path in existing[: len(existing) - total_limit + 1]:
                shutil.rmtree(path)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every rank: FSDP / DeepSpeed gather and write their shards
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / TRAINING_STATE).write_text(json.dumps({**state, "rng": rng_fingerprint()}, indent=2))
        (partial / COMPLETE_MARKER).write_text("")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(train_args: TrainArguments, checkpoints_dir: Path) -> Path | None:
    if train_args.resume_from_checkpoint is None:
        return None
    if train_args.resume_from_checkpoint == "latest":
        found = complete_checkpoints(checkpoints_dir)
        return found[-1] if found else None
    path = Path(train_args.resume_from_checkpoint)
    if not (path / COMPLETE_MARKER).is_file():
        raise SystemExit(f"error: {path} is not a complete checkpoint (no {COMPLETE_MARKER} marker).")
    return path


def restore_checkpoint(accelerator: Accelerator, resume_path: Path) -> dict:
    """Loads a complete checkpoint's training state into the prepared objects; returns its `training_state.json`."""
    state = json.loads((resume_path / TRAINING_STATE).read_text())
    accelerator.load_state(str(resume_path))
    if state.get("rng") and accelerator.is_main_process and rng_fingerprint() != state["rng"]:
        raise SystemExit(f"error: the RNG state of {resume_path} was not restored; resuming would not replay "
                         "the interrupted run.")
    return state


def resume_progress(accelerator: Accelerator, train_args: TrainArguments, checkpoints_dir: Path) -> dict:
    """Where training starts: the progress saved in the checkpoint `--resume_from_checkpoint` names (its training
    state restored into the prepared objects), or a fresh start. Keys: global_step, epoch, batches_in_epoch,
    skipped_steps, history, best_val_loss, best_metrics."""
    progress = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "skipped_steps": 0, "history": [],
                "best_val_loss": float("inf"), "best_metrics": {}}
    resume_path = resolve_resume(train_args, checkpoints_dir)
    if train_args.resume_from_checkpoint and resume_path is None:
        logger.info(f"no complete checkpoint in {checkpoints_dir}: starting from scratch")
    if resume_path is not None:
        state = restore_checkpoint(accelerator, resume_path)
        progress.update({name: state.get(name, default) for name, default in progress.items()})
        logger.info(f"resumed from {resume_path}: step {progress['global_step']}, epoch {progress['epoch']}, "
                    f"{progress['batches_in_epoch']} batches into the epoch")
    return progress

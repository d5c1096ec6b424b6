# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Resumable checkpoints named by optimizer step: written atomically (a completion marker last, flushed to disk, rotated
only after the new one is in place), found, and restored with a check that the RNG state came back; the exports'
replacement, which leaves a complete one at every moment, and the clean-up after a kill."""

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
PARTIAL_PREFIX = ".partial-"  # being written
ASIDE_PREFIX = ".old-"  # replaced, deleted once its replacement is in place
DELETING_PREFIX = ".deleting-"  # being deleted
EXPORTS = ("best", "final")
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


def fsync_directory(directory: Path) -> None:
    """Flushes a folder's entries (names created, renamed or removed in it) to disk."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(directory: Path) -> None:
    """Flushes every file under `directory`, then its folders, to disk: a rename is durable only once what it names
    is, else a power loss after the rename can leave a complete-looking folder of empty files."""
    for root, _, files in os.walk(directory, topdown=False):
        for name in files:
            handle = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)
        fsync_directory(Path(root))


def retire(path: Path) -> None:
    """Deletes a folder so that no half-deleted copy is ever taken for a whole one: renamed out of sight first."""
    doomed = path.with_name(f"{DELETING_PREFIX}{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def move_into_place(partial: Path, directory: Path) -> None:
    """Renames the complete folder `partial` to `directory` so that a complete one exists at every moment: the new
    one is flushed to disk, the old one moved aside, the new one renamed into place, then the old one deleted. A kill
    between the two renames leaves the old one aside, which `recover_directory` puts back."""
    fsync_tree(partial)
    aside = directory.with_name(f"{ASIDE_PREFIX}{directory.name}")
    if directory.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(directory, aside)
    os.replace(partial, directory)
    fsync_directory(directory.parent)
    shutil.rmtree(aside, ignore_errors=True)


def recover_directory(directory: Path) -> None:
    """What a kill during `move_into_place` left beside `directory`: the old one moved aside is put back if its
    replacement never landed, else deleted; a half-written `.partial-` one is deleted."""
    aside = directory.with_name(f"{ASIDE_PREFIX}{directory.name}")
    if aside.is_dir():
        if directory.exists():
            shutil.rmtree(aside)
        else:
            os.replace(aside, directory)
            logger.warning(f"put back {directory}: a kill had interrupted its replacement")
    shutil.rmtree(directory.with_name(f"{PARTIAL_PREFIX}{directory.name}"), ignore_errors=True)


def recover_interrupted_saves(output_dir: Path, checkpoints_dir: Path) -> None:
    """At start-up, on the main process: the exports and checkpoints a killed run was writing or replacing are put
    back or deleted, so that `latest` and the exports only ever name complete ones."""
    for name in EXPORTS:
        recover_directory(output_dir / name)
    if checkpoints_dir.is_dir():
        for path in checkpoints_dir.iterdir():
            if path.name.startswith(ASIDE_PREFIX):
                recover_directory(checkpoints_dir / path.name[len(ASIDE_PREFIX):])
        for path in checkpoints_dir.iterdir():
            if path.name.startswith((PARTIAL_PREFIX, DELETING_PREFIX)):
                shutil.rmtree(path)
                logger.info(f"removed {path}, left by an interrupted save")


def save_checkpoint(accelerator: Accelerator, checkpoints_dir: Path, state: dict, total_limit: int | None) -> Path:
    """Saves into a temporary folder, writes the marker last, flushes it to disk, renames it into place, and only
    then deletes the oldest checkpoints beyond `total_limit`: a kill at any moment leaves a complete checkpoint."""
    final = checkpoints_dir / f"{CHECKPOINT_PREFIX}{state['global_step']}"
    partial = checkpoints_dir / f"{PARTIAL_PREFIX}{final.name}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every rank: FSDP / DeepSpeed gather and write their shards
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / TRAINING_STATE).write_text(json.dumps({**state, "rng": rng_fingerprint()}, indent=2))
        (partial / COMPLETE_MARKER).write_text("")
        move_into_place(partial, final)
        if total_limit is not None:
            older = [path for path in complete_checkpoints(checkpoints_dir) if path != final]
            for path in older[: max(len(older) - max(total_limit - 1, 0), 0)]:
                retire(path)
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
    if accelerator.is_main_process:
        recover_interrupted_saves(Path(train_args.output_dir), checkpoints_dir)
    accelerator.wait_for_everyone()
    resume_path = resolve_resume(train_args, checkpoints_dir)
    if train_args.resume_from_checkpoint and resume_path is None:
        logger.info(f"no complete checkpoint in {checkpoints_dir}: starting from scratch")
    if resume_path is not None:
        state = restore_checkpoint(accelerator, resume_path)
        progress.update({name: state.get(name, default) for name, default in progress.items()})
        logger.info(f"resumed from {resume_path}: step {progress['global_step']}, epoch {progress['epoch']}, "
                    f"{progress['batches_in_epoch']} batches into the epoch")
    return progress

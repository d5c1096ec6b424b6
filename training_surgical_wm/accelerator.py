# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The Accelerate skeleton of a training script: the Accelerator with logging and the seed, the trackers, the
learning-rate schedule, the worker count."""

import logging
import math
import os
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from transformers import get_scheduler

from .arguments import TrainArguments, public_arguments


logger = get_logger(__name__, log_level="INFO")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)



def make_accelerator(train_args: TrainArguments, output_dir: Path) -> Accelerator:
    """The run's Accelerator (device, precision, accumulation, trackers), logging set up and the seed set: the
    skeleton shared by the training scripts."""
    if train_args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible.")
    if train_args.device == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("error: --device mps but MPS is not available on this machine.")
    accelerator = Accelerator(
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        mixed_precision=train_args.mixed_precision,
        cpu=train_args.device == "cpu",
        log_with=None if train_args.report_to == "none" else train_args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # per-file save/load lines; ours say what matters
    logger.info(
        f"processes: {accelerator.num_processes}, device: {accelerator.device}, "
        f"mixed precision: {accelerator.mixed_precision}, distributed: {accelerator.distributed_type}",
        main_process_only=True,
    )
    if not accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_error()
    set_seed(train_args.seed)
    return accelerator


def init_trackers(accelerator: Accelerator, project_name: str, train_args: TrainArguments, *argument_groups) -> None:
    """Starts `--report_to`'s tracker on the main process with the run's arguments (never a token)."""
    if accelerator.is_main_process and train_args.report_to != "none":
        accelerator.init_trackers(project_name, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                        for k, v in public_arguments(*argument_groups).items()})


def cosine_schedule(accelerator: Accelerator, optimizer, train_dataloader, train_args: TrainArguments):
    """(lr_scheduler, steps_per_epoch, total_steps): linear warmup, then a cosine that reaches zero at the last step
    that will run (`--max_train_steps` included); stepped once per optimizer step by the script (not by accelerate),
    on every rank alike, and saved with the checkpoints."""
    steps_per_epoch = max(math.ceil(len(train_dataloader) / train_args.gradient_accumulation_steps), 1)
    total_steps = train_args.num_epochs * steps_per_epoch
    if train_args.max_train_steps is not None:
        total_steps = min(total_steps, train_args.max_train_steps)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer,
                                 num_warmup_steps=min(int(train_args.warmup_epochs * steps_per_epoch), total_steps),
                                 num_training_steps=total_steps)
    accelerator.register_for_checkpointing(lr_scheduler)
    return lr_scheduler, steps_per_epoch, total_steps

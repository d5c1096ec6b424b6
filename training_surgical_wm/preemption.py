# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Preemption: SIGTERM (sent by SLURM and Kubernetes before their SIGKILL) or SIGUSR1 (SLURM's `--signal`, ahead of
time) ends a run after the current optimizer step, with a checkpoint at that step, and exit status 0; a second
signal exits at once."""

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from .arguments import TrainArguments
from .checkpoints import save_checkpoint


logger = get_logger(__name__, log_level="INFO")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# SLURM signals every process of a job step, and a launcher among them (torchrun, under `accelerate launch`) forwards
# what it got to the training processes: a signal that close behind the first is the same request, not a second one.
REPEAT_WINDOW_S = 2.0


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader `worker_init_fn`. A scheduler may signal every process of the job, DataLoader workers included,
    and torch's worker dies on a SIGTERM it did not get from its parent: the main process would then fail on its
    next batch, before it could save. Workers ignore SIGUSR1, and a SIGTERM from anyone but their parent (which
    terminates them this way at exit, and must still be obeyed): it is blocked and read by a thread that sees the
    sender, which a Python signal handler cannot."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from_parent, name="sigterm-from-parent", daemon=True).start()


def _exit_on_sigterm_from_parent() -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == os.getppid():
            os._exit(0)


class Preemption:
    """Records a stop signal (installed from the main thread, before the training loop) and answers, once per
    optimizer step, whether any process received one: a signal may reach only one rank, and every rank must then
    save the same checkpoint collectively."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.received: str | None = None
        self.received_at = 0.0
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self.received_at < REPEAT_WINDOW_S:
                return
            logger.warning(f"{name} after {self.received}: exiting now, without a checkpoint", main_process_only=False)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received, self.received_at = name, time.monotonic()
        logger.warning(f"{name} received (process {self.accelerator.process_index}): stopping after the current "
                       "optimizer step with a checkpoint; a second signal exits at once", main_process_only=False)

    def stop_requested(self) -> bool:
        """Whether a stop signal reached any process; the same answer on every process (one all-reduce of one
        number per optimizer step)."""
        flag = torch.tensor(float(self.received is not None), device=self.accelerator.device)
        return self.accelerator.reduce(flag, reduction="max").item() > 0

    def save_after_step(self, checkpoints_dir: Path, state: Callable[[], dict], global_step: int, total_steps: int,
                        train_args: TrainArguments) -> bool:
        """After an optimizer step: the checkpoint that is due, every `--checkpointing_steps` or at the step a stop
        signal reached (the last step needs none: the run ends there); True when the run must stop now."""
        stopping = global_step < total_steps and self.stop_requested()
        if global_step % train_args.checkpointing_steps == 0 or stopping:
            path = save_checkpoint(self.accelerator, checkpoints_dir, state(), train_args.checkpoints_total_limit)
            logger.info(f"saved {path}")
        if stopping:
            logger.info(f"stopped at step {global_step} on a stop signal: resume from {path} with "
                        "--resume_from_checkpoint latest")
        return stopping

"""Preemption and crash safety: a stop signal sent from outside in the middle of an epoch ends train_hf.py and
scripts/train_probe.py with a checkpoint at the step reached and exit 0, and train_hf.py resumed from it ends with an
uninterrupted run's weights; a SIGKILL before every file operation of `save_checkpoint` and `export_model` leaves a
complete, loadable checkpoint and export."""

import builtins
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, tiny_config, train


pytestmark = pytest.mark.slow

SIGNAL_TO_EXIT_LIMIT = 60.0  # seconds


def assert_same_weights(expected_file: Path, got_file: Path) -> None:
    expected, got = load_file(expected_file), load_file(got_file)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)


def preempt(command: list[str], sample_log: Path, log: Path, after_batches: int,
            signum: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
    """Runs `command`, sends `signum` to its whole process group (the main process and its DataLoader workers, as a
    scheduler does) once `after_batches` batches have started; returns the exit status and the seconds from the
    signal to the exit."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=handle, stderr=handle, start_new_session=True,
                                   env={**os.environ, "TQDM_DISABLE": "1"})
    rank0 = Path(f"{sample_log}.rank0")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if rank0.is_file() and len(rank0.read_text().splitlines()) >= after_batches:
            break
        time.sleep(0.02)
    assert process.poll() is None, f"the run ended before the signal:\n{log.read_text()[-3000:]}"
    sent = time.monotonic()
    os.killpg(process.pid, signum)
    try:
        returncode = process.wait(timeout=SIGNAL_TO_EXIT_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"no exit within {SIGNAL_TO_EXIT_LIMIT} s of the signal:\n{log.read_text()[-3000:]}")
    return returncode, time.monotonic() - sent


def stopped_checkpoint(output_dir: Path, log: str, steps_per_epoch: int) -> Path:
    """The checkpoint the stop wrote, checked against the step the log names: mid-epoch, complete, nothing else."""
    assert "Traceback" not in log, log[-3000:]
    step = int(log.split("stopped at step ")[1].split()[0])
    assert 0 < step < steps_per_epoch, log[-3000:]  # in the middle of the first epoch
    assert [path.name for path in (output_dir / "checkpoints").iterdir()] == [f"checkpoint-{step}"]
    checkpoint = output_dir / "checkpoints" / f"checkpoint-{step}"
    assert (checkpoint / "COMPLETE").is_file()
    state = json.loads((checkpoint / "training_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["batches_in_epoch"]) == (step, 0, step)
    assert not (output_dir / "final").exists()
    return checkpoint


def test_sigterm_mid_epoch_saves_the_step_reached_exits_0_and_resumes_to_an_uninterrupted_runs_weights(
        train_inputs, tmp_path):
    common = [*train_inputs, "--num_epochs", "1", "--checkpointing_steps", "100", "--cache_dir",
              str(tmp_path / "latent_cache")]
    reference = train([*common, "--output_dir", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr[-3000:]
    steps_per_epoch = int(reference.stderr.split(" per epoch)")[0].rsplit("(", 1)[1])

    out, log = tmp_path / "preempted", tmp_path / "preempted.log"
    # As the README starts a run under a scheduler: `accelerate launch` from a shell that ignores the stop signals, so
    # that the launcher waits for the training process instead of dying at once. One DataLoader worker: it gets the
    # signal too, and must not die before the main process has saved.
    launcher = ["bash", "-c", "trap '' TERM USR1; exec \"$@\"", "launch", sys.executable, "-m",
                "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    returncode, seconds = preempt([*launcher, "train_hf.py", *common, "--num_workers", "1", "--output_dir", str(out),
                                   "--sample_log", str(tmp_path / "samples")], tmp_path / "samples", log, 3)
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    assert seconds < SIGNAL_TO_EXIT_LIMIT
    assert "SIGTERM received" in text
    stopped_checkpoint(out, text, steps_per_epoch)

    resumed = train([*common, "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert_same_weights(tmp_path / "reference" / "final" / "model.safetensors", out / "final" / "model.safetensors")


def test_probe_sigusr1_mid_epoch_saves_the_step_reached_and_exits_0(surgvu_sample, world_model_dir, tmp_path):
    root, _ = surgvu_sample
    out, log = tmp_path / "preempted", tmp_path / "preempted.log"
    command = [sys.executable, os.path.join("scripts", "train_probe.py"), "--world_model", world_model_dir,
               "--target", "task", "--data_root", str(root), "--dataset_cache_dir", str(tmp_path / "arrow"),
               "--test_fraction", "0",  # 2 training cases: an epoch long enough to stop in
               "--num_workers", "0", "--num_epochs", "1", "--batch_size", "2", "--probe_num_layers", "1",
               "--device", "cpu", "--report_to", "none", "--checkpointing_steps", "100", "--output_dir", str(out),
               "--sample_log", str(tmp_path / "samples")]
    returncode, seconds = preempt(command, tmp_path / "samples", log, 2, signal.SIGUSR1)
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    assert seconds < SIGNAL_TO_EXIT_LIMIT
    assert "SIGUSR1 received" in text
    steps_per_epoch = int(text.split("epochs: 1, optimizer steps: ")[1].split()[0].rstrip(";"))
    stopped_checkpoint(out, text, steps_per_epoch)


def process_of_rank(launcher: int, rank: int) -> int:
    """The pid of the training process of `rank` started by the launcher `launcher` (torchrun starts each in a session
    of its own): the signal goes to that process alone, as when a scheduler's signal reaches one node only."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    descendants, added = {launcher}, True
    while added:
        found = {pid for pid, parent in parents.items() if parent in descendants} - descendants
        descendants |= found
        added = bool(found)
    for pid in sorted(descendants - {launcher}):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"train_hf.py" in command:
            return pid
    raise AssertionError(f"no training process of rank {rank} under the launcher {launcher}")


def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step_with_one_checkpoint(train_inputs, tmp_path):
    out, log, samples = tmp_path / "ddp", tmp_path / "ddp.log", tmp_path / "samples"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               os.path.join(REPO_ROOT, "configs", "accelerate", "cpu_2proc.yaml"), "train_hf.py", *train_inputs,
               "--num_epochs", "2", "--checkpointing_steps", "100", "--output_dir", str(out), "--sample_log",
               str(samples)]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=handle, stderr=handle, start_new_session=True,
                                   env={**os.environ, "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "1",
                                        "OMP_NUM_THREADS": "1"})
    try:
        rank1 = Path(f"{samples}.rank1")
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not (
                rank1.is_file() and rank1.read_text().strip()):
            time.sleep(0.02)
        assert process.poll() is None, f"the run ended before the signal:\n{log.read_text()[-3000:]}"
        os.kill(process_of_rank(process.pid, 1), signal.SIGUSR1)
        returncode = process.wait(timeout=SIGNAL_TO_EXIT_LIMIT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    assert "SIGUSR1 received (process 1)" in text and "SIGUSR1 received (process 0)" not in text
    steps_per_epoch = int(text.split(" per epoch)")[0].rsplit("(", 1)[1])
    checkpoint = stopped_checkpoint(out, text, steps_per_epoch)
    step = int(checkpoint.name.split("-")[1])
    # Both processes stopped after the same optimizer step: each logged that step's batches and no later one.
    for rank in (0, 1):
        steps = [int(line.split()[0]) for line in Path(f"{samples}.rank{rank}").read_text().splitlines()
                 if not line.startswith("final weights")]
        assert steps and max(steps) == step - 1, (rank, steps, step)


SECOND_SIGNAL = """
import os, signal, sys, time
from accelerate import Accelerator
from training_surgical_wm.preemption import REPEAT_WINDOW_S, Preemption

preemption = Preemption(Accelerator(cpu=True))
os.kill(os.getpid(), signal.SIGUSR1)
os.kill(os.getpid(), signal.SIGTERM)  # a launcher forwarding the same request: not a second signal
print(preemption.received, preemption.stop_requested(), flush=True)
time.sleep(REPEAT_WINDOW_S + 0.5)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
print("still running", flush=True)
"""


def test_a_second_stop_signal_exits_at_once_and_one_close_behind_the_first_is_the_same_request():
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == -signal.SIGTERM, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["SIGUSR1 True"]
    assert "SIGTERM after SIGUSR1: exiting now, without a checkpoint" in result.stderr
    assert time.monotonic() - started < 25


FILE_OPERATIONS = ((builtins, "open"), (os, "replace"), (os, "fsync"), (shutil, "rmtree"))


def killed_at(operation: int, save) -> bool:
    """Runs `save()` in a forked process that SIGKILLs itself just before its `operation`-th file-system call
    (open, rename, fsync, delete); returns whether it was killed (False: `save` made fewer calls and completed)."""
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)  # the OpenMP pool of the parent does not survive the fork
        calls = 0

        def counted(function):
            def call(*args, **kwargs):
                nonlocal calls
                calls += 1
                if calls == operation:
                    os.kill(os.getpid(), signal.SIGKILL)
                return function(*args, **kwargs)
            return call

        code = 1
        try:
            save(lambda: [setattr(module, name, counted(getattr(module, name))) for module, name in FILE_OPERATIONS])
            code = 0
        finally:  # never back into pytest from the forked process
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


def save_in_child(step: int, directory: Path, write, make_model) -> callable:
    """The child's work: an Accelerator and `make_model()` with all its weights equal to `step`, the start-up
    clean-up a new run does, then `write(accelerator, model, step)` with the file-system calls counted from its
    start."""
    def save(start_counting):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState

        from training_surgical_wm.checkpoints import recover_interrupted_saves

        AcceleratorState._reset_state(reset_partial_state=True)  # the forked test process's, if any
        GradientState._reset_state()
        accelerator = Accelerator(cpu=True)
        model = make_model()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(step)
        recover_interrupted_saves(directory, directory / "checkpoints")
        start_counting()
        write(accelerator, model, step)
    return save


def test_sigkill_at_every_moment_of_save_checkpoint_leaves_a_complete_loadable_checkpoint(tmp_path):
    from training_surgical_wm.checkpoints import complete_checkpoints, save_checkpoint

    checkpoints = tmp_path / "checkpoints"
    make_model = lambda: torch.nn.Linear(4, 4)  # noqa: E731

    def write(accelerator, model, step):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        accelerator.prepare(model, optimizer)
        save_checkpoint(accelerator, checkpoints, {"global_step": step}, total_limit=1)

    assert not killed_at(10**6, save_in_child(1, tmp_path, write, make_model))
    operation, step, leftovers = 1, 2, 0
    while killed_at(operation, save_in_child(step, tmp_path, write, make_model)):
        leftovers += any(path.name.startswith(".") for path in checkpoints.iterdir())
        found = complete_checkpoints(checkpoints)  # before any clean-up: what `latest` would pick now
        assert found, f"no complete checkpoint after a kill at operation {operation}"
        latest = found[-1]
        number = int(latest.name.split("-")[1])
        assert number in (step - 1, step)
        assert json.loads((latest / "training_state.json").read_text())["global_step"] == number
        weights = load_file(latest / "model.safetensors")
        assert all(torch.all(tensor == number) for tensor in weights.values()), latest
        if number == step:  # the save was complete: the next moment is tried on the next step
            step += 1
        operation += 1
    assert operation > 10 and leftovers > 0  # the kills fell in every part of the save, some during its writes
    assert [path.name for path in checkpoints.iterdir() if path.name.startswith("checkpoint-")] == [f"checkpoint-{step}"]


def test_sigkill_at_every_moment_of_export_model_leaves_a_complete_loadable_export(tmp_path):
    from accelerate import PartialState

    from modeling_surgical_wm import SurgicalWorldModel
    from training_surgical_wm.checkpoints import recover_interrupted_saves
    from training_surgical_wm.export import export_model

    PartialState(cpu=True)  # recover_interrupted_saves logs through accelerate
    best = tmp_path / "best"
    make_model = lambda: SurgicalWorldModel(tiny_config())  # noqa: E731

    def write(accelerator, model, step):
        export_model(accelerator, model, best, {"global_step": step}, f"step {step}\n")

    assert not killed_at(10**6, save_in_child(1, tmp_path, write, make_model))
    operation, step, put_back = 1, 2, 0
    while killed_at(operation, save_in_child(step, tmp_path, write, make_model)):
        put_back += not best.exists()
        recover_interrupted_saves(tmp_path, tmp_path / "checkpoints")  # what the next run's start-up does
        assert sorted(path.name for path in tmp_path.iterdir()) == ["best"]
        number = json.loads((best / "trainer_state.json").read_text())["global_step"]
        assert number in (step - 1, step)
        assert (best / "README.md").read_text() == f"step {number}\n"
        model = SurgicalWorldModel.from_pretrained(best)
        assert all(torch.all(parameter == number) for parameter in model.parameters())
        if number == step:
            step += 1
        operation += 1
    assert operation > 5 and put_back > 0  # some kills fell between moving the old one aside and the new one in

"""The training script end to end on the synthetic SurgVU sample and a tiny world model: exports, resume after
SIGKILL, the NaN guard, two real CPU processes (gloo) and a push to a loopback Hub."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, train

pytestmark = pytest.mark.slow

GUIDE_FLAGS = ["--data_root", "--pretrained_checkpoint", "--encoder_frozen", "--finetune_encoder", "--num_epochs",
               "--batch_size", "--learning_rate", "--warmup_epochs", "--use_mask_aux", "--lambda_mask",
               "--num_workers", "--device"]


def read_sample_log(prefix: Path, rank: int = 0) -> tuple[list[tuple[int, int, list[int]]], str | None]:
    batches, final = [], None
    for line in Path(f"{prefix}.rank{rank}").read_text().splitlines():
        if line.startswith("final weights "):
            final = line.split()[-1]
            continue
        step, epoch, ids = line.split(" ", 2)
        batches.append((int(step), int(epoch), json.loads(ids)))
    return batches, final


def test_help_lists_every_flag_of_the_original_guide():
    result = train(["--help"])
    assert result.returncode == 0, result.stderr
    missing = [flag for flag in GUIDE_FLAGS if flag not in result.stdout]
    assert not missing, missing


def test_arguments_from_a_yaml_file_with_command_line_overrides(tmp_path):
    from training_surgical_wm.arguments import parse_training_arguments as parse_args

    config = tmp_path / "run.yaml"
    config.write_text("num_epochs: 3\nbatch_size: 16\nfinetune_encoder: true\ndata_root: /data/surgvu\n")
    model_args, data_args, train_args = parse_args([str(config), "--batch_size", "2"])
    assert (train_args.num_epochs, train_args.batch_size, data_args.data_root) == (3, 2, "/data/surgvu")
    assert model_args.finetune_encoder and not model_args.encoder_frozen
    config.write_text("num_epoch: 3\n")
    with pytest.raises(SystemExit, match="num_epoch"):
        parse_args([str(config)])


def test_half_written_checkpoints_are_never_resumed_from(tmp_path):
    from training_surgical_wm.checkpoints import complete_checkpoints

    for name, complete in [("checkpoint-4", True), ("checkpoint-12", False), ("checkpoint-8", True),
                           (".partial-checkpoint-16", True), ("checkpoint-x", True)]:
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "COMPLETE").write_text("")
    assert [path.name for path in complete_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-8"]


def test_training_run_exports_best_and_final(train_inputs, tmp_path):
    out = tmp_path / "run"
    result = train([*train_inputs, "--output_dir", str(out), "--num_epochs", "3", "--checkpointing_steps", "3",
                    "--checkpoints_total_limit", "2", "--use_mask_aux"])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    first = next(line for line in log.splitlines() if "training_surgical_wm.accelerator" in line)  # the run's first
    assert "processes: 1" in first and "device: cpu" in first and "mixed precision: no" in first
    epoch_lines = [line for line in log.splitlines() if "Epoch " in line and "val loss" in line]
    assert len(epoch_lines) == 3
    assert all(word in epoch_lines[0] for word in ("temporal", "contrastive", "mask", "rollout error", "copy-context"))

    for export in ("best", "final"):
        files = set(os.listdir(out / export))
        assert {"config.json", "model.safetensors", "modeling_surgical_wm.py", "configuration_surgical_wm.py",
                "README.md", "trainer_state.json", "video_preprocessor_config.json",
                "video_processing_surgical_wm.py"} <= files, files
    state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert state["epoch"] == 3 and state["global_step"] > 0
    assert state["training_arguments"]["use_mask_aux"] is True
    history = state["history"]
    best = min(record["val_loss"] for record in history)
    assert state["best_val_loss"] == pytest.approx(best)
    assert history[-1]["val_loss"] < history[0]["val_loss"], history
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["action_dim"] == len(config["action_spec"]) == 56
    assert (config["fps"], config["frames_per_step"]) == (4.0, 1)  # the data's frame rate and step, for its users
    processor = json.loads((out / "best" / "video_preprocessor_config.json").read_text())
    assert (processor["fps"], processor["crop_size"]["height"], processor["crop_tool_band"]) == (4.0, 64, True)
    # The training split's action statistics, for planning: every step of every training clip counted once.
    prior = config["action_prior"]
    clips = int(re.search(r"clips: (\d+) train", log).group(1))
    assert prior["steps"] == clips * 8 and prior["transitions_counted"] == clips * 7
    assert list(prior["groups"]) == config["discrete_action_groups"] == ["USM1", "USM2", "USM3", "USM4", "task"]
    for name, stats in prior["groups"].items():
        assert sum(stats["marginal"]) == pytest.approx(1.0) and len(stats["options"]) == len(stats["marginal"])
        transitions = np.array(stats["transitions"])
        assert transitions.sum() == prior["transitions_counted"]
        # Each clip's last step starts no transition: the counts left over by the rows are one per clip.
        from_counts = np.array(stats["marginal"]) * prior["steps"] - transitions.sum(1)
        assert from_counts.min() > -1e-6 and from_counts.sum() == pytest.approx(clips)
    assert all(len(combination) == 5 for combination in prior["combinations"]) and prior["combinations"]
    assert "base_model:" in (out / "best" / "README.md").read_text()

    checkpoints = sorted(os.listdir(out / "checkpoints"))
    assert len(checkpoints) == 2 and all((out / "checkpoints" / c / "COMPLETE").exists() for c in checkpoints)

    # The export loads through AutoModel in a fresh process, away from this clone.
    check = ("import sys, torch\nfrom transformers import AutoModel\n"
             "m = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
             "print(type(m).__name__, float(m(torch.randn(1, 4, 3, 64, 64), torch.rand(1, 4, 56)).loss))\n")
    loaded = subprocess.run([sys.executable, "-c", check, str(out / "best")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert loaded.returncode == 0 and loaded.stdout.startswith("SurgicalWorldModel"), loaded.stderr


def test_sigkill_then_resume_ends_with_the_same_weights(train_inputs, tmp_path):
    common = [*train_inputs, "--num_epochs", "2", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2"]
    reference = train([*common, "--output_dir", str(tmp_path / "reference"),
                       "--sample_log", str(tmp_path / "reference.samples")])
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "train_hf.py", *common, "--output_dir", str(killed_dir),
         "--sample_log", str(tmp_path / "killed.samples")],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (killed_dir / "checkpoints" / "checkpoint-4" / "COMPLETE").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed_dir / "checkpoints" / "checkpoint-4" / "COMPLETE").exists()
    assert not (killed_dir / "final").exists(), "the run finished before it could be killed"
    # A half-written checkpoint newer than the complete ones must be ignored.
    (killed_dir / "checkpoints" / "checkpoint-999").mkdir()

    resumed = train([*common, "--output_dir", str(killed_dir), "--resume_from_checkpoint", "latest",
                     "--sample_log", str(tmp_path / "killed.samples")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    expected = load_file(tmp_path / "reference" / "final" / "model.safetensors")
    got = load_file(killed_dir / "final" / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)

    # The resumed run replayed the data order: from the checkpoint on, the same samples in the same steps.
    reference_batches, reference_final = read_sample_log(tmp_path / "reference.samples")
    killed_batches, killed_final = read_sample_log(tmp_path / "killed.samples")
    resumed_step = int(resumed.stderr.split("resumed from")[1].split("step ")[1].split(",")[0])
    after = [batch for batch in killed_batches if batch[0] >= resumed_step][-len(
        [b for b in reference_batches if b[0] >= resumed_step]):]
    assert after == [batch for batch in reference_batches if batch[0] >= resumed_step]
    assert killed_final == reference_final


def test_nan_guard_skips_bad_steps_and_stops_after_a_run_of_them(train_inputs, tmp_path):
    skipped = train([*train_inputs, "--output_dir", str(tmp_path / "one"), "--num_epochs", "1",
                     "--nan_at_steps", "2", "--checkpointing_steps", "100"])
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "step 2: non-finite loss or gradient, step skipped" in skipped.stderr
    state = json.loads((tmp_path / "one" / "final" / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 1
    weights = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())

    stopped = train([*train_inputs, "--output_dir", str(tmp_path / "many"), "--num_epochs", "1",
                     "--nan_at_steps", "1,2,3", "--max_bad_steps", "3"])
    assert stopped.returncode != 0
    assert "3 consecutive optimizer steps had a non-finite loss" in stopped.stderr
    assert "Traceback" not in stopped.stderr


def test_two_cpu_processes_share_each_global_batch_skip_a_one_rank_nan_together_and_end_identical(train_inputs,
                                                                                                  tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  os.path.join(REPO_ROOT, "configs", "accelerate", "cpu_2proc.yaml")]
    samples = tmp_path / "ddp.samples"
    result = train([*train_inputs, "--output_dir", str(tmp_path / "ddp"), "--num_epochs", "1",
                    "--checkpointing_steps", "100", "--sample_log", str(samples), "--nan_at_steps", "2@1"],
                   env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, launcher=accelerate)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stderr
    # Only rank 1's loss was NaN at step 2; rank 0 (the one that logs) skipped the step with it, and nothing hung.
    assert "step 2: non-finite loss or gradient, step skipped (1 in a row, 1 in all)" in result.stderr
    state = json.loads((tmp_path / "ddp" / "final" / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 1
    rank0, final0 = read_sample_log(samples, 0)
    rank1, final1 = read_sample_log(samples, 1)
    assert final0 is not None and final0 == final1
    assert len(rank0) == len(rank1) > 0
    for (step0, _, ids0), (step1, _, ids1) in zip(rank0, rank1):
        assert step0 == step1
        assert len(ids0) == len(ids1) == 2
        assert not set(ids0) & set(ids1)  # each rank sees its own half of the global batch
    seen = [i for _, _, ids in rank0 + rank1 for i in ids]
    assert len(seen) == len(set(seen))  # no clip twice in the epoch


def test_push_to_hub_then_automodel_through_a_loopback_hub_and_the_token_is_written_nowhere(train_inputs, tmp_path):
    from hub_server import LoopbackHub

    with LoopbackHub() as hub:
        hf_home = tmp_path / "hf_home"
        env = {**hub.env(hf_home=hf_home), "HF_HUB_OFFLINE": "0", "TQDM_DISABLE": "1"}
        # The token reaches the run as a user's does: HF_TOKEN, and the file `hf auth login` writes.
        assert env["HF_TOKEN"] == hub.token
        hf_home.mkdir(parents=True, exist_ok=True)
        (hf_home / "token").write_text(hub.token)
        (hf_home / "stored_tokens").write_text(f"[loopback]\nhf_token = {hub.token}\n")
        repo_id = f"{hub.user}/surgical-wm-test"
        out = tmp_path / "pushed"
        result = train([*train_inputs, "--output_dir", str(out), "--num_epochs", "1", "--checkpointing_steps", "2",
                        "--push_to_hub", "--hub_model_id", repo_id, "--hub_private", "--report_to", "tensorboard",
                        "--sample_log", str(out / "samples")], env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        written = [path for path in out.rglob("*") if path.is_file()]
        # exports, checkpoints (optimizer, RNG, training state), the TensorBoard event files, the debugging log
        assert {"best", "final", "checkpoints", "logs"} <= {path.relative_to(out).parts[0] for path in written}
        assert any(path.name.startswith("events.out.tfevents") for path in written)
        leaks = [str(path) for path in written if hub.token.encode() in path.read_bytes()]
        assert not leaks, f"the token was written to {leaks}"
        assert hub.token not in result.stdout + result.stderr
        check = (
            "import sys, torch\nfrom transformers import AutoModel\nfrom huggingface_hub import list_repo_files\n"
            "files = list_repo_files(sys.argv[1])\n"
            "assert not any(f.startswith('checkpoints') for f in files), files\n"
            "assert 'README.md' in files and 'model.safetensors' in files, files\n"
            "torch.manual_seed(0)\n"
            "x, a = torch.randn(2, 4, 3, 64, 64), torch.rand(2, 4, 56)\n"
            "remote = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
            "local = AutoModel.from_pretrained(sys.argv[2], trust_remote_code=True).eval()\n"
            "with torch.no_grad():\n"
            "    r, l = remote(x, a), local(x, a)\n"
            "torch.testing.assert_close(r.predicted_latents, l.predicted_latents, rtol=0, atol=0)\n"
            "print('same outputs', float(r.loss))\n"
        )
        loaded = subprocess.run([sys.executable, "-c", check, repo_id, str(out / "best")], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300, env=env)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert "same outputs" in loaded.stdout
        card = (out / "best" / "README.md").read_text()
        assert repo_id in card and "CC BY-NC-SA" in card


def test_finetuned_encoder_in_bf16_trains_the_encoder_and_exports_its_ema_target(train_inputs, world_model_dir,
                                                                                  tmp_path):
    out = tmp_path / "finetune"
    common = [*train_inputs, "--num_epochs", "1", "--max_train_steps", "3", "--finetune_encoder",
              "--encoder_learning_rate", "1e-3", "--mixed_precision", "bf16", "--checkpointing_steps", "1"]
    result = train([*common, "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mixed precision: bf16" in result.stderr and "encoder trained" in result.stderr
    start = load_file(Path(world_model_dir) / "model.safetensors")
    last = load_file(out / "checkpoints" / "checkpoint-3" / "model.safetensors")  # resumable: both encoders
    key = "encoder.layer.0.mlp.fc1.weight"
    online, target = last[key], last[f"target_{key}"]
    assert not torch.equal(online, start[key])  # the encoder moved
    # The EMA target moved by (1 - momentum) per step: between the start and the online encoder, close to the start.
    assert 0 < (target - start[key]).abs().max() < (online - start[key]).abs().max()
    # The export holds one encoder, the EMA target, as V-JEPA's downstream evaluations use it: a frozen export's size.
    final = load_file(out / "final" / "model.safetensors")
    assert not any(name.startswith("target_encoder.") for name in final) and final.keys() == start.keys()
    assert torch.equal(final[key], target)
    frozen_size = (Path(world_model_dir) / "model.safetensors").stat().st_size
    assert abs((out / "final" / "model.safetensors").stat().st_size - frozen_size) < 1024
    assert json.loads((out / "final" / "config.json").read_text())["freeze_encoder"] is True
    assert "holds the EMA target encoder" in (out / "final" / "README.md").read_text()
    # --max_train_steps 3 ends the cosine schedule: the learning rate reaches zero at step 3, not epochs later.
    state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["history"][-1]["lr"] == 0.0

    # Resuming from a checkpoint replays the last step with both encoders; --export_encoder online exports the other.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints", resumed_dir / "checkpoints")
    resumed = train([*common, "--output_dir", str(resumed_dir), "--export_encoder", "online",
                     "--resume_from_checkpoint", str(resumed_dir / "checkpoints" / "checkpoint-2")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    exported = load_file(resumed_dir / "final" / "model.safetensors")
    assert exported.keys() == start.keys()
    torch.testing.assert_close(exported[key], online, atol=1e-5, rtol=0)
    assert "holds the online encoder" in (resumed_dir / "final" / "README.md").read_text()

RECORDED_SPLIT = {"dataset": "surgvu", "split_seed": 4, "validation_fraction": 0.2, "test_fraction": 0.2,
                  "test_cases": [], "selection_split": "validation",
                  "groups": {"train": ["case_000"], "validation": ["case_001"], "test": ["case_002"]}}


def test_fine_tuning_a_world_model_whose_fitted_cases_this_run_tests_on_is_refused(train_inputs, world_model_dir,
                                                                                   tmp_path):
    """A surgical world model trained on case_000 and chosen on case_001 (split_seed 4), fine-tuned on the default
    split_seed 0, which holds case_001 out for test: refused once the data is built, in one line naming the case,
    before any training."""
    start = tmp_path / "start"
    shutil.copytree(world_model_dir, start)
    config = json.loads((start / "config.json").read_text())
    (start / "config.json").write_text(json.dumps({**config, "data_split": RECORDED_SPLIT}))
    inputs = list(train_inputs)
    inputs[inputs.index("--pretrained_checkpoint") + 1] = str(start)
    result = train([*inputs, "--test_fraction", "0.2", "--output_dir", str(tmp_path / "out"), "--num_epochs", "1"])
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error == [f"error: --pretrained_checkpoint {start} was trained or chosen on case_001 (1 of this run's "
                     "test), which this run holds out for test (it was surgvu cases by split_seed 4, "
                     "validation_fraction 0.2, test_fraction 0.2 (1 train / 1 validation / 1 test); this run: surgvu "
                     "cases by split_seed 0, validation_fraction 0.2, test_fraction 0.2 (1 train / 1 validation / 1 "
                     "test)): its test figures would be on cases it has fitted; split the data as it was, or pass "
                     "--allow_selection_split to train with a warning"], result.stderr[-3000:]
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_allow_selection_split_warns_and_other_splits_pass(accelerator, caplog):
    """`--allow_selection_split` turns the refusal into a warning naming the cases; a run whose test holds only cases
    the model never fitted, a model of another dataset or without a recorded split, and V-JEPA 2 pass in silence."""
    from training_surgical_wm.data import check_pretrained_split

    saved = {"model_type": "surgical_wm", "data_split": RECORDED_SPLIT}
    current = {**RECORDED_SPLIT, "split_seed": 0,
               "groups": {"train": ["case_000", "case_002"], "validation": [], "test": ["case_001"]}}
    with pytest.raises(SystemExit, match="was trained or chosen on case_001 "):
        check_pretrained_split("model", saved, current, allow=False)
    with caplog.at_level("WARNING"):
        check_pretrained_split("model", saved, current, allow=True)
    assert "trained or chosen on case_001 " in caplog.text and "--allow_selection_split, so the figures" in caplog.text
    caplog.clear()
    same = {**RECORDED_SPLIT}
    moved_to_train = {**current, "groups": {"train": ["case_001", "case_002"], "validation": [], "test": ["case_000"]}}
    for config, split in ((saved, same), ({"model_type": "surgical_wm", "data_split": None}, current),
                          ({"model_type": "vjepa2"}, current), (saved, {**current, "dataset": "mmor"})):
        check_pretrained_split("model", config, split, allow=False)
    with pytest.raises(SystemExit, match="trained or chosen on case_000 "):
        check_pretrained_split("model", saved, moved_to_train, allow=False)
    assert caplog.text == ""

"""Shared fixtures: tiny V-JEPA 2 checkpoints and world models, all built offline."""

import os
import subprocess
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Nothing in the suite may reach the real Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_PREDICTOR = {"predictor_hidden_size": 48, "predictor_num_hidden_layers": 2, "predictor_num_attention_heads": 2}


@pytest.fixture(scope="session")
def tiny_vjepa2_dir(tmp_path_factory):
    """A tiny V-JEPA 2 checkpoint in the transformers format (config.json + model.safetensors)."""
    from make_tiny_vjepa2 import make_tiny_vjepa2

    return make_tiny_vjepa2(str(tmp_path_factory.mktemp("tiny-vjepa2")), seed=0)


def tiny_config(**overrides):
    from configuration_surgical_wm import SurgicalWorldModelConfig

    encoder = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "crop_size": 32,
               "patch_size": 16, "frames_per_clip": 8, "mlp_ratio": 2.0}
    encoder.update(overrides.pop("encoder_config", {}))
    settings = {**TINY_PREDICTOR, "action_dim": 3, **overrides}
    return SurgicalWorldModelConfig(encoder_config=encoder, **settings)


@pytest.fixture
def make_tiny_config():
    return tiny_config


@pytest.fixture
def accelerator():
    """A one-process CPU `Accelerator`, with Accelerate's shared state reset before and after."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# -- SurgVU-format samples (dataset_surgvu) -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def surgvu_sample(tmp_path_factory):
    """The default synthetic SurgVU format (60 fps, 320x180), small: 4 cases, one in two parts, one truncated
    video, one case without labels. Returns (folder, manifest)."""
    from dataset_surgvu.synthetic import make_synthetic_surgvu

    root = tmp_path_factory.mktemp("surgvu_sample")
    return root, make_synthetic_surgvu(root, seed=0, num_cases=4, seconds=20.0)


@pytest.fixture(scope="session")
def surgvu_sample_30fps(tmp_path_factory):
    """Another resolution and frame rate (640x360 at 30 fps), B-frames, a first timestamp that is not zero, short
    keyframe interval; 3 cases (two parts, truncated video, labels everywhere). Returns (folder, manifest)."""
    from dataset_surgvu.synthetic import make_synthetic_surgvu

    root = tmp_path_factory.mktemp("surgvu_sample_30fps")
    manifest = make_synthetic_surgvu(
        root, seed=1, num_cases=3, seconds=16.0, width=640, height=360, fps=30, start_frame=17,
        preset="veryfast", gop=48, unlabeled_case=False,
    )
    return root, manifest


# -- the training script (train_hf.py) on the sample and a tiny world model ------------------------------------------
@pytest.fixture(scope="session")
def world_model_dir(tiny_vjepa2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("world-model")
    result = subprocess.run(
        [sys.executable, "scripts/load_vjepa2_pretrained.py", "--encoder", tiny_vjepa2_dir, "--save_path", str(out),
         "--predictor_hidden_size", "48", "--predictor_num_hidden_layers", "2", "--predictor_num_attention_heads", "2",
         "--action_dim", "56"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return str(out)


@pytest.fixture(scope="session")
def train_inputs(surgvu_sample, world_model_dir, tmp_path_factory):
    """Common arguments: the sample data, its Arrow cache (built once), the tiny world model, CPU, no trackers. No
    test split: the sample's 3 labelled cases stay 2 for training and 1 for validation, which these runs check."""
    root, _ = surgvu_sample
    cache = tmp_path_factory.mktemp("arrow-cache")
    return ["--data_root", str(root), "--dataset_cache_dir", str(cache), "--pretrained_checkpoint", world_model_dir,
            "--device", "cpu", "--report_to", "none", "--num_workers", "0", "--batch_size", "2",
            "--learning_rate", "1e-3", "--warmup_epochs", "0", "--seed", "7", "--test_fraction", "0"]


def train(args, env=None, timeout=600, launcher=None):
    command = (launcher or [sys.executable]) + ["train_hf.py", *args]
    environment = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=environment)

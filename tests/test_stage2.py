"""Stage 2: train_hf.py --dataset mmor continues a stage-1 (SurgVU) world model on MM-OR video."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import train


pytestmark = pytest.mark.slow


def test_stage_two_continues_a_stage_one_run_on_mmor(train_inputs, tmp_path):
    from dataset_mmor import get_mmor_action_spec
    from dataset_mmor.synthetic import make_synthetic_mmor

    stage1, stage2, mmor = tmp_path / "stage1", tmp_path / "stage2", tmp_path / "mmor"
    result = train([*train_inputs, "--output_dir", str(stage1), "--num_epochs", "1", "--max_train_steps", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    make_synthetic_mmor(mmor, seed=0)

    result = train(["--dataset", "mmor", "--data_root", str(mmor), "--dataset_cache_dir", str(tmp_path / "arrow"),
                    "--pretrained_checkpoint", str(stage1 / "best"), "--output_dir", str(stage2), "--device", "cpu",
                    "--report_to", "none", "--num_workers", "0", "--batch_size", "2", "--num_epochs", "1",
                    "--max_train_steps", "3", "--learning_rate", "1e-3", "--seed", "7"])
    assert result.returncode == 0, result.stderr[-3000:]
    # SurgVU's 56 action dimensions (tools per arm, task) become MM-OR's 21 (robot phase, next action).
    assert "the action embedding starts from scratch" in result.stderr
    assert "latent cache:" in result.stderr and "validation" in result.stderr

    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(stage2 / "best"), trust_remote_code=True).eval()
    assert model.config.action_spec == get_mmor_action_spec() and model.config.action_dim == 21
    # The encoder stayed frozen through both stages; the predictor's body came from stage 1 and trained on.
    before, after = load_file(str(stage1 / "best" / "model.safetensors")), load_file(
        str(stage2 / "best" / "model.safetensors"))
    encoder = [name for name in before if name.startswith("encoder.")]
    assert encoder and all(torch.equal(before[name], after[name]) for name in encoder)
    assert not torch.equal(before["predictor.latent_proj.weight"], after["predictor.latent_proj.weight"])
    assert after["predictor.action_proj.weight"].shape[1] == 21
    state = json.loads((stage2 / "best" / "trainer_state.json").read_text())
    assert state["training_arguments"]["dataset"] == "mmor" and state["global_step"] == 3
    assert os.path.isdir(stage2 / "latent_cache" / "test")  # the official test takes are encoded for evaluation
    with torch.no_grad():
        crop = model.config.encoder_config.crop_size
        output = model(torch.randn(1, 8, 3, crop, crop), torch.zeros(1, 8, 21))
    assert torch.isfinite(output.loss)

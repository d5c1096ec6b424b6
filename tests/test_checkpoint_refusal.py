"""What is not a checkpoint is refused, in one line naming the folder: train_hf.py's --pretrained_checkpoint, the
evaluation's --checkpoint and the probe's --world_model. transformers' from_pretrained alone only warns and fills the
missing weights at random."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import evaluate_surgical_model
import train_hf
import train_probe
from conftest import REPO_ROOT, tiny_config
from training_surgical_wm.arguments import ModelArguments
from training_surgical_wm.world_model import check_pretrained_checkpoint, load_world_model


def refusal(main, argv: list[str]) -> str:
    """The message a script's main() stops with: one line, and a SystemExit, not another exception."""
    with pytest.raises(SystemExit) as stopped:
        main([str(arg) for arg in argv])
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def train_refusal(checkpoint) -> str:
    return refusal(train_hf.main, ["--pretrained_checkpoint", checkpoint, "--data_root", "unused", "--report_to",
                                   "none", "--device", "cpu"])


def evaluation_refusal(checkpoint) -> str:
    return refusal(evaluate_surgical_model.main, ["--checkpoint", checkpoint, "--test_data", "unused",
                                                  "--device", "cpu"])


def probe_refusal(world_model) -> str:
    return refusal(train_probe.main, ["--world_model", world_model, "--data_root", "unused", "--report_to", "none",
                                      "--device", "cpu"])


def rewrite_weights(folder, change) -> None:
    """`change(tensors)` edits the folder's tensors in place; the file is written again."""
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A real model folder of another kind: config.json and model.safetensors of a tiny BERT."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert")
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world_model_folder(tmp_path_factory):
    from modeling_surgical_wm import SurgicalWorldModel

    folder = tmp_path_factory.mktemp("world-model")
    SurgicalWorldModel(tiny_config()).save_pretrained(folder)
    return folder


@pytest.fixture
def vjepa2_copy(tiny_vjepa2_dir, tmp_path):
    return shutil.copytree(tiny_vjepa2_dir, tmp_path / "vjepa2")


@pytest.fixture
def world_model_copy(world_model_folder, tmp_path):
    return shutil.copytree(world_model_folder, tmp_path / "world-model")


# -- what is accepted ------------------------------------------------------------------------------------------------
def test_v_jepa2_world_model_and_v_jepa2_task_model_folders_are_accepted(tiny_vjepa2_dir, world_model_folder,
                                                                         tmp_path):
    from transformers import VJEPA2Config, VJEPA2ForVideoClassification

    assert check_pretrained_checkpoint(tiny_vjepa2_dir)["model_type"] == "vjepa2"
    assert check_pretrained_checkpoint(str(world_model_folder))["model_type"] == "surgical_wm"
    # A V-JEPA 2 video classifier keeps its encoder under `vjepa2.`: the encoder is there, the head is not used.
    classifier = tmp_path / "classifier"
    config = VJEPA2Config.from_pretrained(tiny_vjepa2_dir, num_labels=3)
    VJEPA2ForVideoClassification(config).save_pretrained(classifier)
    assert check_pretrained_checkpoint(str(classifier))["model_type"] == "vjepa2"


def test_a_hub_id_offline_still_fails_with_the_download_advice():
    assert check_pretrained_checkpoint("facebook/vjepa2-vitl-fpc64-256") == {}  # nothing local to check
    with pytest.raises(SystemExit) as stopped:
        load_world_model(ModelArguments(pretrained_checkpoint="facebook/vjepa2-vitl-fpc64-256"), ["a"])
    assert "Could not load the V-JEPA 2 checkpoint 'facebook/vjepa2-vitl-fpc64-256'" in str(stopped.value.code)


# -- train_hf.py --pretrained_checkpoint -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_model_of_another_kind_is_refused_in_one_line_without_a_traceback(bert_dir):
    result = subprocess.run([sys.executable, "train_hf.py", "--pretrained_checkpoint", str(bert_dir), "--data_root",
                             "unused", "--report_to", "none", "--device", "cpu"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bert_dir}/config.json: model_type 'bert'; expected a surgical world model or a V-JEPA 2 checkpoint"
    )


def test_a_vit_folder_is_refused(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16)).save_pretrained(tmp_path / "vit")
    assert f"{tmp_path / 'vit'}/config.json: model_type 'vit'; expected" in train_refusal(tmp_path / "vit")


def test_a_folder_without_config_json_is_refused(vjepa2_copy):
    (vjepa2_copy / "config.json").unlink()
    assert f"{vjepa2_copy}/config.json: missing: {vjepa2_copy} is not a transformers" in train_refusal(vjepa2_copy)


def test_a_v_jepa2_folder_without_weights_is_refused(vjepa2_copy):
    (vjepa2_copy / "model.safetensors").rename(vjepa2_copy / "pytorch_model.bin")
    message = train_refusal(vjepa2_copy)
    assert f"{vjepa2_copy}: no model.safetensors" in message and "pytorch_model.bin are not read" in message


def test_a_truncated_v_jepa2_file_is_refused(vjepa2_copy):
    weights = vjepa2_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 10])
    assert f"{weights}: not a complete safetensors file" in train_refusal(vjepa2_copy)


def test_v_jepa2_encoder_weights_missing_are_refused(vjepa2_copy):
    rewrite_weights(vjepa2_copy, lambda tensors: [tensors.pop(name) for name in list(tensors)
                                                  if name.startswith("encoder.layer.1.")])
    message = train_refusal(vjepa2_copy)
    assert f"{vjepa2_copy}: the weights do not match its config.json (vjepa2):" in message
    assert " missing (encoder.layer.1." in message


def test_v_jepa2_weights_of_another_shape_are_refused(vjepa2_copy):
    def shrink(tensors):
        tensors["encoder.layer.0.mlp.fc1.weight"] = tensors["encoder.layer.0.mlp.fc1.weight"][:3]

    rewrite_weights(vjepa2_copy, shrink)
    message = train_refusal(vjepa2_copy)
    assert f"{vjepa2_copy}: the weights do not match" in message
    assert "1 of another shape (encoder.layer.0.mlp.fc1.weight: [3, 64] saved, [128, 64] in config.json)" in message


def test_world_model_encoder_weights_missing_are_refused(world_model_copy):
    rewrite_weights(world_model_copy, lambda tensors: tensors.pop("encoder.layernorm.weight"))
    assert ("the weights do not match its config.json (surgical_wm): 1 missing (encoder.layernorm.weight)"
            in train_refusal(world_model_copy))


# -- the evaluation's --checkpoint and the probe's --world_model ----------------------------------------------------
def test_the_evaluation_refuses_a_world_model_with_unexpected_weights(world_model_copy):
    rewrite_weights(world_model_copy, lambda tensors: tensors.update(extra=torch.zeros(2)))
    assert f"error: {world_model_copy}: the weights do not match its config.json (surgical_wm): 1 unexpected (extra)" \
        == evaluation_refusal(world_model_copy)


def test_the_evaluation_refuses_a_truncated_world_model(world_model_copy):
    weights = world_model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert f"{weights}: not a complete safetensors file" in evaluation_refusal(world_model_copy)


def test_the_probe_refuses_a_v_jepa2_folder_as_its_world_model(tiny_vjepa2_dir):
    assert (f"{tiny_vjepa2_dir}/config.json: model_type 'vjepa2'; expected a surgical world model"
            in probe_refusal(tiny_vjepa2_dir))


def test_the_probe_refuses_a_world_model_of_the_wrong_shape(world_model_copy):
    config = json.loads((world_model_copy / "config.json").read_text())
    config["predictor_hidden_size"] = 64  # the config edited, the weights not
    (world_model_copy / "config.json").write_text(json.dumps(config))
    message = probe_refusal(world_model_copy)
    assert f"{world_model_copy}: the weights do not match" in message and "of another shape (predictor." in message

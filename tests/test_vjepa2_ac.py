"""Meta's V-JEPA 2-AC file converted (scripts/load_vjepa2_pretrained.py --vjepa2_ac_checkpoint), loaded through
`AutoModel`, and fine-tuned on the SurgVU sample. The file is a tiny one written here in Meta's key layout."""

import hashlib
import json
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import train
from load_vjepa2_pretrained import main as load_main


HEADS = {"encoder": 4, "predictor": 2}


def tiny_ac_model():
    """A tiny world model shaped as V-JEPA 2-AC (7-d actions and states, no residual), every weight random."""
    from configuration_surgical_wm import SurgicalWorldModelConfig
    from modeling_surgical_wm import SurgicalWorldModel

    config = SurgicalWorldModelConfig(
        encoder_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": HEADS["encoder"],
                        "crop_size": 64, "patch_size": 16, "tubelet_size": 2, "mlp_ratio": 2.0},
        predictor_hidden_size=48, predictor_num_hidden_layers=2, predictor_num_attention_heads=HEADS["predictor"],
        predict_residual=False, action_dim=7, state_dim=7, action_conditioning="token", rollout_steps=2,
    )
    torch.manual_seed(0)
    model = SurgicalWorldModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model


def meta_layout(model) -> dict:
    """`model`'s weights under the names of Meta's file: its ViT encoder (fused qkv) behind `module.backbone.`, its
    `VisionTransformerPredictorAC` behind `module.`, with the tensors the conversion drops."""
    encoder, predictor = {}, {}
    for name, tensor in model.state_dict().items():
        if name.startswith("encoder."):
            meta = (name.removeprefix("encoder.").replace("embeddings.patch_embeddings.", "patch_embed.")
                    .replace("layer.", "blocks.").replace("attention.", "attn.").replace("layernorm.", "norm."))
            if ".attn.query." in meta:
                roles = [name.replace(".query.", f".{role}.") for role in ("query", "key", "value")]
                encoder["module.backbone." + meta.replace(".query.", ".qkv.")] = torch.cat(
                    [model.state_dict()[role] for role in roles])
            elif ".attn.key." not in meta and ".attn.value." not in meta:
                encoder["module.backbone." + meta] = tensor
        elif name.startswith("predictor.norm."):
            predictor["module." + name.replace("predictor.norm.", "predictor_norm.")] = tensor
        else:
            meta = (name.removeprefix("predictor.").replace("latent_proj", "predictor_embed")
                    .replace("action_proj", "action_encoder").replace("state_proj", "state_encoder")
                    .replace("layers.", "predictor_blocks.").replace("attention.", "attn.")
                    .replace("output_proj", "predictor_proj"))
            predictor["module." + meta] = tensor
    encoder["module.backbone.pos_embed"] = torch.zeros(1, 16, 64)
    predictor["module.extrinsics_encoder.weight"] = torch.randn(48, 6)
    predictor["module.extrinsics_encoder.bias"] = torch.zeros(48)
    return {"encoder": encoder, "predictor": predictor}


def convert(checkpoint, out, capsys) -> str:
    code = load_main(["--vjepa2_ac_checkpoint", str(checkpoint), "--save_path", str(out), "--crop_size", "64",
                      "--encoder_num_attention_heads", str(HEADS["encoder"]),
                      "--predictor_num_attention_heads", str(HEADS["predictor"])])
    assert code == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def meta_checkpoint(tmp_path_factory):
    model = tiny_ac_model()
    path = tmp_path_factory.mktemp("meta") / "vjepa2-ac-tiny.pt"
    torch.save(meta_layout(model), path)
    return model, path


def test_a_checkpoint_in_metas_layout_converts_and_loads_through_automodel_strictly(meta_checkpoint, tmp_path, capsys):
    from transformers import AutoModel

    from configuration_surgical_wm import SurgicalWorldModelConfig

    source, path = meta_checkpoint
    log = convert(path, tmp_path / "converted", capsys)
    assert "dropped (encoder.pos_embed, predictor.extrinsics_encoder.weight, predictor.extrinsics_encoder.bias)" in log
    model, info = AutoModel.from_pretrained(tmp_path / "converted", trust_remote_code=True, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or resized
    expected = source.state_dict()
    assert sorted(model.state_dict()) == sorted(expected)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name

    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert config["vjepa2_ac_source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config["encoder_config"]["mlp_ratio"] == 2.0 and config["encoder_config"]["num_attention_heads"] == 4
    assert (config["predict_residual"], config["state_dim"], config["action_dim"]) == (False, 7, 7)
    assert (config["action_pairing"], config["action_conditioning"]) == ("current", "token")
    assert config["normalize_predictions"] is True
    card = (tmp_path / "converted" / "README.md").read_text()
    assert "MIT" in card and "gripper" in card and config["vjepa2_ac_source"]["sha256"] in card

    # The same latents, and predictions layer-normalised as Meta's `normalize_reps` (in the test while the config
    # field that does it in `predict` does not exist yet; the converted config asks for it above).
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 3, 64, 64, generator=generator)
    actions, states = torch.randn(2, 3, 7, generator=generator), torch.randn(2, 3, 7, generator=generator)
    latents = model.encode(pixels)
    torch.testing.assert_close(latents, source.encode(pixels), rtol=0, atol=0)
    with torch.no_grad():
        reference = F.layer_norm(source.predictor(latents, actions, states), (64,))
        predicted = model.predict(latents, actions, states)
    if "normalize_predictions" not in SurgicalWorldModelConfig.__annotations__:
        predicted = F.layer_norm(predicted, (64,))
    torch.testing.assert_close(predicted, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, part", [("module.backbone.blocks.0.attn.rel_pos.weight", "encoder"),
                                        ("module.predictor_blocks.0.ls1.gamma", "predictor")])
def test_a_tensor_the_conversion_does_not_know_stops_it_with_its_name(meta_checkpoint, tmp_path, name, part, capsys):
    source, _ = meta_checkpoint
    tensors = meta_layout(source)
    tensors[part][name] = torch.zeros(3)
    path = tmp_path / "odd.pt"
    torch.save(tensors, path)
    with pytest.raises(SystemExit) as stopped:
        convert(path, tmp_path / "out", capsys)
    message = str(stopped.value)
    assert message.startswith("error: ") and "\n" not in message
    assert f"{part} tensor {name.replace('module.', '').replace('backbone.', '')!r}" in message
    assert not (tmp_path / "out").exists()


def test_finetuning_a_converted_checkpoint_on_surgvu_reinitialises_and_names_the_resized_projections(
        meta_checkpoint, train_inputs, tmp_path, capsys):
    from transformers import AutoModel

    source, path = meta_checkpoint
    convert(path, tmp_path / "converted", capsys)
    inputs = list(train_inputs)
    inputs[inputs.index("--pretrained_checkpoint") + 1] = str(tmp_path / "converted")
    result = train([*inputs, "--output_dir", str(tmp_path / "run"), "--num_epochs", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert len([line for line in log.splitlines() if "Epoch " in line and "val loss" in line]) == 2
    assert ("re-initialised, their sizes differ for this data: predictor.action_proj.weight, "
            "predictor.action_proj.bias") in log
    assert ("dropped, the model for this data has no place for them: predictor.state_proj.bias, "
            "predictor.state_proj.weight") in log

    model = AutoModel.from_pretrained(tmp_path / "run" / "final", trust_remote_code=True)
    assert (model.config.action_dim, model.config.state_dim, model.predictor.state_proj) == (56, 0, None)
    kept = source.state_dict()
    for name, tensor in model.state_dict().items():  # the frozen encoder, as converted
        if name.startswith("encoder."):
            assert torch.equal(tensor, kept[name]), name
    assert os.path.isfile(tmp_path / "run" / "final" / "model.safetensors")


def test_loading_a_converted_checkpoint_for_other_data_keeps_the_layers_and_names_what_starts_afresh(
        meta_checkpoint, tmp_path, capsys, caplog):
    from accelerate import Accelerator

    from training_surgical_wm.arguments import ModelArguments
    from training_surgical_wm.world_model import load_world_model

    Accelerator(cpu=True)  # the library logs through accelerate's logger
    source, path = meta_checkpoint
    convert(path, tmp_path / "converted", capsys)
    arguments = ModelArguments(pretrained_checkpoint=str(tmp_path / "converted"),
                               config_overrides="action_conditioning=adaln")
    with caplog.at_level("WARNING"):
        model = load_world_model(arguments, ["phase/a", "phase/b", "next_action/c"])
    kept = source.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("predictor.action_proj."):
            assert tensor.shape[-1] == 3 if name.endswith("weight") else not tensor.any(), name
        elif ".adaln." not in name:  # the encoder and every predictor layer, as converted
            assert torch.equal(tensor, kept[name]), name
    assert model.predictor.state_proj is None and model.config.state_dim == 0
    log = caplog.text
    assert "re-initialised, their sizes differ for this data: predictor.action_proj.weight, predictor.action_proj.bias" \
        in log
    assert ("new to this model, initialised afresh: predictor.layers.0.adaln.weight, predictor.layers.0.adaln.bias, "
            "predictor.layers.1.adaln.weight, predictor.layers.1.adaln.bias") in log
    assert "predictor.state_proj.bias, predictor.state_proj.weight" in log


def test_a_conversion_refuses_the_position_embedding_meta_s_predictor_does_not_have(tmp_path, capsys):
    from load_vjepa2_pretrained import parse_args

    with pytest.raises(SystemExit) as stopped:
        parse_args(["--vjepa2_ac_checkpoint", str(tmp_path / "vjepa2-ac.pt"), "--save_path", str(tmp_path / "out"),
                    "--predictor_position_embedding"])
    assert stopped.value.code == 2
    assert "--predictor_position_embedding: V-JEPA 2-AC's predictor has none" in capsys.readouterr().err
    args = parse_args(["--encoder", str(tmp_path / "encoder"), "--save_path", str(tmp_path / "out"),
                       "--predictor_position_embedding"])
    assert args.predictor_position_embedding

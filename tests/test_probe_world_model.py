"""A probe is tied to the world model whose tensors it reads (the encoder, and the predictor with
`--probe_use_predictor`): the evaluation refuses it with another world model, even one sharing the frozen encoder."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evaluate_surgical_model import load_probe
from modeling_surgical_wm import SurgicalWorldModel
from train_probe import ProbeArguments, load_probe_model


def save_probe(world_model_dir: str, directory: Path, use_predictor: bool) -> Path:
    """A task probe built on `world_model_dir` as scripts/train_probe.py builds it, its head nudged off its init."""
    arguments = ProbeArguments(world_model=world_model_dir, target="task", probe_num_layers=1,
                               probe_use_predictor=use_predictor)
    probe = load_probe_model(arguments, None)
    with torch.no_grad():
        probe.classifier.bias.add_(0.1)
    probe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def world_model_b(world_model_dir, tmp_path_factory) -> str:
    """World model A with its predictor moved as by a further training step: the same frozen encoder, another
    predictor."""
    model = SurgicalWorldModel.from_pretrained(world_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.predictor.parameters():
            parameter.add_(1e-3 * torch.randn(parameter.shape, generator=generator))
    directory = tmp_path_factory.mktemp("world-model-b")
    model.save_pretrained(directory)
    return str(directory)


def load(path: str) -> SurgicalWorldModel:
    return SurgicalWorldModel.from_pretrained(path).eval()


def test_a_predictor_reading_probe_is_refused_with_another_predictor(world_model_dir, world_model_b, tmp_path):
    probe_dir = save_probe(world_model_dir, tmp_path / "probe", use_predictor=True)
    assert load_probe(str(probe_dir), "task", load(world_model_dir)).config.probe_use_predictor
    with pytest.raises(SystemExit) as refused:
        load_probe(str(probe_dir), "task", load(world_model_b))
    message = str(refused.value)
    assert message.startswith("error: ") and "\n" not in message
    assert str(probe_dir) in message and world_model_b in message
    assert "predictor differs" in message and "encoder differs" not in message


def test_an_encoder_only_probe_is_accepted_with_the_same_encoder(world_model_dir, world_model_b, tmp_path):
    probe_dir = save_probe(world_model_dir, tmp_path / "probe", use_predictor=False)
    probe = load_probe(str(probe_dir), "task", load(world_model_b))
    assert not probe.config.probe_use_predictor
    recorded = json.loads((probe_dir / "config.json").read_text())["probe_world_model_fingerprints"]
    assert sorted(recorded) == ["encoder"]


def test_a_probe_without_recorded_fingerprints_is_checked_on_its_stored_weights(world_model_dir, world_model_b,
                                                                                 tmp_path):
    """Probes saved before the fingerprints were recorded hold the frozen world model they read: those weights
    stand in for the record."""
    probe_dir = save_probe(world_model_dir, tmp_path / "probe", use_predictor=True)
    config = json.loads((probe_dir / "config.json").read_text())
    assert sorted(config.pop("probe_world_model_fingerprints")) == ["encoder", "predictor"]
    (probe_dir / "config.json").write_text(json.dumps(config))
    load_probe(str(probe_dir), "task", load(world_model_dir))
    with pytest.raises(SystemExit, match="predictor"):
        load_probe(str(probe_dir), "task", load(world_model_b))


def test_the_recorded_fingerprints_outweigh_the_weights_the_probe_holds(world_model_dir, world_model_b, tmp_path):
    """A probe trained on A whose stored predictor was swapped for B's: its weights now match B, its record does not."""
    probe_dir = save_probe(world_model_dir, tmp_path / "probe", use_predictor=True)
    weights = load_file(str(probe_dir / "model.safetensors"))
    predictor_b = load_file(str(Path(world_model_b) / "model.safetensors"))
    swapped = {name: predictor_b[name.removeprefix("world_model.")] if name.startswith("world_model.predictor.")
               else tensor for name, tensor in weights.items()}
    assert any(not torch.equal(swapped[name], weights[name]) for name in weights)
    save_file(swapped, str(probe_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SystemExit, match="predictor differs"):
        load_probe(str(probe_dir), "task", load(world_model_b))

"""The attentive probe (SurgicalWorldModelForVideoClassification) and output_hidden_states, on tiny configs."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from modeling_surgical_wm import SurgicalWorldModel, SurgicalWorldModelForVideoClassification

SINGLE, MULTI = "single_label_classification", "multi_label_classification"


def clip(batch=2, frames=4, size=32, seed=0):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def build(problem_type=SINGLE, num_labels=3, **overrides):
    torch.manual_seed(0)
    config = tiny_config(num_labels=num_labels, problem_type=problem_type, probe_num_layers=1, **overrides)
    return SurgicalWorldModelForVideoClassification(config).eval()


def multi_hot(batch=2, num_labels=3, seed=3):
    return (torch.rand(batch, num_labels, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


@pytest.fixture(scope="module")
def world_model_dir(tmp_path_factory):
    """A tiny world model saved by save_pretrained, with a trained-looking (non-initial) predictor."""
    torch.manual_seed(1)
    model = SurgicalWorldModel(tiny_config())
    with torch.no_grad():
        for parameter in model.predictor.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("world_model")
    model.save_pretrained(folder)
    return str(folder)


# -- heads, losses ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_predictor", [False, True])
def test_logits_shapes_and_single_label_cross_entropy(use_predictor):
    model = build(num_labels=4, probe_use_predictor=use_predictor)
    labels = torch.tensor([3, 1])
    output = model(clip(), labels=labels)
    assert output.logits.shape == (2, 4)
    log_probs = output.logits.log_softmax(-1)
    expected = -(log_probs[0, 3] + log_probs[1, 1]) / 2
    torch.testing.assert_close(output.loss, expected)
    assert output.hidden_states is None and output.attentions is None
    assert model(clip()).loss is None


def test_single_label_class_weights_are_the_cross_entropy_weight():
    model = build(num_labels=3, probe_class_weights=[1.0, 5.0, 0.5])
    labels = torch.tensor([1, 2])
    output = model(clip(), labels=labels)
    nll = -output.logits.log_softmax(-1)
    expected = (5.0 * nll[0, 1] + 0.5 * nll[1, 2]) / (5.0 + 0.5)
    torch.testing.assert_close(output.loss, expected)
    unweighted = build(num_labels=3)(clip(), labels=labels)
    torch.testing.assert_close(unweighted.logits, output.logits)  # weights change the loss only
    assert not torch.allclose(unweighted.loss, output.loss)


@pytest.mark.parametrize("weights", [None, [1.0, 4.0, 0.25]])
def test_multi_label_binary_cross_entropy_with_and_without_pos_weight(weights):
    model = build(problem_type=MULTI, num_labels=3, probe_class_weights=weights)
    labels = multi_hot()
    output = model(clip(), labels=labels)
    assert output.logits.shape == (2, 3)
    pos_weight = torch.ones(3) if weights is None else torch.tensor(weights)
    x = output.logits
    expected = -(pos_weight * labels * F.logsigmoid(x) + (1 - labels) * F.logsigmoid(-x)).mean()
    torch.testing.assert_close(output.loss, expected)
    # bool or integer multi-hot labels mean the same
    torch.testing.assert_close(model(clip(), labels=labels.bool()).loss, output.loss)


def test_labels_of_the_wrong_kind_and_problem_types_are_clear_errors():
    single, multi = build(), build(problem_type=MULTI)
    with pytest.raises(ValueError, match="class indices"):
        single(clip(), labels=multi_hot())
    with pytest.raises(ValueError, match=r"multi-hot `labels` of shape \(2, 3\)"):
        multi(clip(), labels=torch.tensor([0, 1]))
    for problem_type in (None, "regression"):
        with pytest.raises(ValueError, match="problem_type"):
            SurgicalWorldModelForVideoClassification(tiny_config(num_labels=3, problem_type=problem_type))


def test_return_dict_false_gives_a_tuple():
    model = build()
    labels = torch.tensor([0, 2])
    as_dict = model(clip(), labels=labels)
    loss, logits = model(clip(), labels=labels, return_dict=False)
    torch.testing.assert_close(loss, as_dict.loss)
    torch.testing.assert_close(logits, as_dict.logits)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"probe_num_layers": -1}, "probe_num_layers"),
        ({"probe_num_layers": 1.5}, "probe_num_layers"),
        ({"probe_use_predictor": "yes"}, "probe_use_predictor"),
        ({"probe_target": 3}, "probe_target"),
        ({"probe_world_model_fingerprints": {"decoder": "0" * 64}}, "probe_world_model_fingerprints"),
        ({"probe_world_model_fingerprints": {"encoder": 3}}, "probe_world_model_fingerprints"),
        ({"num_labels": 3, "probe_class_weights": [1.0, 2.0]}, "2 weights but there are 3 labels"),
        ({"num_labels": 2, "probe_class_weights": [1.0, -2.0]}, "non-negative"),
        ({"num_labels": 2, "probe_class_weights": [1.0, float("nan")]}, "finite"),
    ],
)
def test_bad_probe_config_values_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_class_weights_are_checked_against_labels_given_to_from_pretrained(world_model_dir):
    with pytest.raises(ValueError, match="2 weights but there are 3 labels"):
        SurgicalWorldModelForVideoClassification.from_pretrained(
            world_model_dir, id2label={0: "a", 1: "b", 2: "c"}, problem_type=SINGLE, probe_class_weights=[1.0, 2.0]
        )
    model = SurgicalWorldModelForVideoClassification.from_pretrained(
        world_model_dir, id2label={0: "a", 1: "b", 2: "c"}, problem_type=SINGLE, probe_class_weights=[1.0, 2.0, 3.0]
    )
    assert model.config.label2id == {"a": 0, "b": 1, "c": 2}
    assert model.classifier.out_features == 3


def test_predictor_probe_refuses_a_state_token():
    with pytest.raises(ValueError, match="state_dim=2"):
        build(state_dim=2, probe_use_predictor=True)
    assert build(state_dim=2).predictor_proj is None  # without the predictor, states never come into it


# -- from_world_model, freezing --------------------------------------------------------------------------------------
def test_from_world_model_keeps_its_weights_and_freezes_it(world_model_dir):
    source = SurgicalWorldModel.from_pretrained(world_model_dir)
    model = SurgicalWorldModelForVideoClassification.from_world_model(
        world_model_dir, {0: "idle", 1: "suturing", 2: "dissection"}, SINGLE, probe_target="task", probe_num_layers=2
    )
    config = model.config
    assert (config.num_labels, config.problem_type, config.probe_target, config.probe_num_layers) == (
        3, SINGLE, "task", 2)
    assert config.label2id == {"idle": 0, "suturing": 1, "dissection": 2}
    assert len(model.pooler.self_attention_layers) == 2
    expected = source.state_dict()
    got = model.world_model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    # The head is initialised as V-JEPA 2 initialises its pooler (not left at its zeros / torch defaults).
    assert model.pooler.query_tokens.abs().sum() > 0
    assert model.pooler.query_tokens.std() < 0.05
    assert model.classifier.bias.abs().sum() == 0

    assert not any(p.requires_grad for p in model.world_model.parameters())
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"pooler", "classifier"}
    model.train()
    assert model.training and model.pooler.training
    assert not any(m.training for m in model.world_model.modules())

    before_world = {k: v.clone() for k, v in model.world_model.state_dict().items()}
    before_head = model.classifier.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(clip(), labels=torch.tensor([0, 2])).loss.backward()
    assert all(p.grad is None for p in model.world_model.parameters())
    optimizer.step()
    for key, value in model.world_model.state_dict().items():
        torch.testing.assert_close(value, before_world[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(model.classifier.weight, before_head)


def test_from_world_model_with_predictor_trains_its_projection(world_model_dir):
    model = SurgicalWorldModelForVideoClassification.from_world_model(
        world_model_dir, {0: "needle driver", 1: "grasper"}, MULTI, probe_target="tools", probe_use_predictor=True,
        probe_class_weights=[1.0, 3.0],
    )
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {
        "pooler", "predictor_proj", "classifier"}
    model.train()
    model(clip(), labels=multi_hot(num_labels=2)).loss.backward()
    assert model.predictor_proj.weight.grad is not None and model.predictor_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.world_model.parameters())


def test_a_trainable_encoder_world_model_is_frozen_whole_by_the_probe():
    model = build(freeze_encoder=False)
    assert model.config.freeze_encoder and model.world_model.target_encoder is None
    assert not any(p.requires_grad for p in model.world_model.parameters())


def test_from_world_model_refuses_what_is_not_a_world_model(tmp_path):
    from transformers import VJEPA2Config

    other = tmp_path / "vjepa2"
    VJEPA2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(other)
    with pytest.raises(ValueError, match=r"vjepa2/config\.json has model_type 'vjepa2'"):
        SurgicalWorldModelForVideoClassification.from_world_model(str(other), {0: "a", 1: "b"}, SINGLE)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty/config\.json"):
        SurgicalWorldModelForVideoClassification.from_world_model(str(empty), {0: "a", 1: "b"}, SINGLE)


def test_from_world_model_rejects_unknown_config_fields(world_model_dir):
    with pytest.raises(TypeError, match="probe_layers"):
        SurgicalWorldModelForVideoClassification.from_world_model(
            world_model_dir, {0: "a", 1: "b"}, SINGLE, probe_layers=2
        )


# -- inputs ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames_per_step", [1, 2])
@pytest.mark.parametrize("use_predictor", [False, True])
def test_latents_give_the_logits_of_the_pixels(frames_per_step, use_predictor):
    model = build(frames_per_step=frames_per_step, probe_use_predictor=use_predictor)
    pixels = clip(frames=4)
    latents = model.world_model.encode(pixels)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        from_pixels = model(pixels, labels=labels)
        from_latents = model(latents=latents, labels=labels)
    torch.testing.assert_close(from_latents.logits, from_pixels.logits, rtol=0, atol=0)
    torch.testing.assert_close(from_latents.loss, from_pixels.loss, rtol=0, atol=0)
    # ...and the clip matters, so the comparison can fail.
    assert not torch.allclose(model(clip(frames=4, seed=5)).logits, from_pixels.logits)


def test_inputs_both_neither_or_malformed_are_clear_errors():
    model = build()
    pixels = clip()
    latents = model.world_model.encode(pixels)
    with pytest.raises(ValueError, match="either"):
        model(pixels, latents=latents)
    with pytest.raises(ValueError, match="either"):
        model()
    with pytest.raises(ValueError, match=r"\(batch, steps, 4, 32\)"):
        model(latents=latents[..., :16])
    with pytest.raises(TypeError):
        model(pixels, actions=torch.zeros(2, 4, 3))  # the probe takes no actions at all


def test_a_single_step_clip_is_enough():
    model = build(probe_use_predictor=True)
    assert model(clip(frames=1)).logits.shape == (2, 3)


# -- the predictor's states, with zero actions ------------------------------------------------------------------------
@torch.no_grad()
def perturb(*modules, scale=0.3, seed=11):
    """Random changes of the weights: "trained" weights whose effects are well above float tolerances."""
    generator = torch.Generator().manual_seed(seed)
    for module in modules:
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def clearly_differ(a, b, threshold=1e-3):
    return (a - b).abs().max().item() > threshold


def probe_logits(model, latents, actions):
    """The probe computed by hand, with the predictor fed `actions`."""
    predictor = model.world_model.predictor
    _, hidden_states = predictor(latents, actions, None, output_hidden_states=True)
    last = predictor.norm(hidden_states[-1])[:, :, predictor.num_condition_tokens :].flatten(1, 2)
    tokens = torch.cat([latents.flatten(1, 2), model.predictor_proj(last)], dim=1)
    return model.classifier(model.pooler(tokens))


@torch.no_grad()
def test_predictor_probe_uses_zero_actions_so_true_actions_cannot_leak():
    model = build(probe_use_predictor=True)
    perturb(model.pooler, model.predictor_proj, model.classifier, model.world_model.predictor)
    latents = model.world_model.encode(clip())
    logits = model(latents=latents).logits
    zeros = torch.zeros(2, 4, 3)
    torch.testing.assert_close(logits, probe_logits(model, latents, zeros))
    # The clip's true actions (SurgVU: the labels themselves, e.g. a task one-hot) change the predictor's states:
    # the logits above would differ if they were used.
    for label in range(3):
        true_actions = F.one_hot(torch.full((2, 4), label), 3).float()
        assert clearly_differ(logits, probe_logits(model, latents, true_actions)), label
    # The predictor's states do reach the logits: other predictor weights, other logits.
    perturb(model.world_model.predictor.layers[-1], seed=12)
    changed = model(latents=latents).logits
    assert clearly_differ(changed, logits)
    torch.testing.assert_close(changed, probe_logits(model, latents, zeros))


@torch.no_grad()
def test_without_predictor_the_predictor_weights_do_not_matter():
    model = build()
    perturb(model.pooler, model.classifier)
    latents = model.world_model.encode(clip())
    logits = model(latents=latents).logits
    perturb(model.world_model.predictor, seed=12)
    torch.testing.assert_close(model(latents=latents).logits, logits, rtol=0, atol=0)
    expected = model.classifier(model.pooler(latents.flatten(1, 2)))
    torch.testing.assert_close(logits, expected)


# -- output_hidden_states --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames_per_step", [1, 2])
def test_world_model_hidden_states(frames_per_step):
    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config(frames_per_step=frames_per_step)).eval()
    pixels = clip(frames=4 * frames_per_step)
    actions = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    plain = model(pixels, actions)
    assert plain.encoder_hidden_states is None and plain.predictor_hidden_states is None
    output = model(pixels, actions, output_hidden_states=True)
    encoder, predictor = output.encoder_hidden_states, output.predictor_hidden_states
    assert len(encoder) == model.config.encoder_config.num_hidden_layers + 1 == 3
    assert all(states.shape == (2, 4, 4, 32) for states in encoder)
    assert len(predictor) == model.config.predictor_num_hidden_layers + 1 == 3
    assert all(states.shape == (2, 3, 1 + 4, 48) for states in predictor)  # action token + 4 patches
    assert len({states.data_ptr() for states in encoder}) == 3  # one per layer, not the same tensor
    # Asking for them changes nothing else.
    for name in ("loss", "predicted_latents", "clip_temporal_loss"):
        torch.testing.assert_close(output[name], plain[name], rtol=0, atol=0, msg=name)
    # They are the states that make the outputs: last encoder state -> latents, last predictor state -> predictions.
    latents = model.encode(pixels)
    last = model.encoder.layernorm(encoder[-1])
    torch.testing.assert_close(F.layer_norm(last, (32,)), latents)
    predicted = model.predictor.output_proj(model.predictor.norm(predictor[-1])[:, :, 1:]) + latents[:, :-1]
    torch.testing.assert_close(predicted, output.predicted_latents)
    # The encoder's are V-JEPA 2's own hidden states of each step (VJEPA2Model records them with hooks).
    from transformers import VJEPA2Model

    vjepa2 = VJEPA2Model(model.config.encoder_config).eval()
    vjepa2.encoder.load_state_dict(model.encoder.state_dict())
    # Step 2 as the encoder sees it: its frame repeated into a tubelet of 2, or its own 2 frames.
    step = pixels[:, 2:3].expand(-1, 2, -1, -1, -1) if frames_per_step == 1 else pixels[:, 4:6]
    reference = vjepa2(step, skip_predictor=True, output_hidden_states=True).hidden_states
    assert len(reference) == len(encoder)
    for ours, theirs in zip(encoder, reference):
        torch.testing.assert_close(ours[:, 2], theirs)


def test_world_model_hidden_states_from_latents_config_default_and_tuple():
    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config()).eval()
    latents = model.encode(clip())
    output = model(latents=latents, output_hidden_states=True)
    assert output.encoder_hidden_states is None and len(output.predictor_hidden_states) == 3
    model.config.output_hidden_states = True
    assert len(model(clip()).encoder_hidden_states) == 3
    assert model(clip(), output_hidden_states=False).encoder_hidden_states is None
    as_tuple = model(clip(), return_dict=False)
    assert len(as_tuple[-2]) == 3 and len(as_tuple[-1]) == 3  # encoder, predictor: the last two fields


@pytest.mark.parametrize("use_predictor", [False, True])
def test_head_hidden_states(use_predictor):
    model = build(probe_use_predictor=use_predictor)
    pixels = clip()
    output = model(pixels, output_hidden_states=True)
    world = model.world_model(pixels, output_hidden_states=True)
    expected = 3 + (3 if use_predictor else 0)
    assert len(output.hidden_states) == expected
    for ours, theirs in zip(output.hidden_states[:3], world.encoder_hidden_states):
        torch.testing.assert_close(ours, theirs)
    if use_predictor:
        assert all(states.shape == (2, 4, 5, 48) for states in output.hidden_states[3:])  # all 4 steps, zero actions
        latents = model.world_model.encode(pixels)
        _, zero_action_states = model.world_model.predictor(latents, torch.zeros(2, 4, 3), output_hidden_states=True)
        for ours, theirs in zip(output.hidden_states[3:], zero_action_states):
            torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(output.logits, model(pixels).logits, rtol=0, atol=0)
    assert model(pixels, output_hidden_states=False).hidden_states is None
    from_latents = model(latents=model.world_model.encode(pixels), output_hidden_states=True).hidden_states
    assert (from_latents is None) if not use_predictor else len(from_latents) == 3


def test_eager_and_sdpa_agree_for_the_pooler():
    model = build(probe_use_predictor=True)
    pixels = clip()
    model.set_attn_implementation("sdpa")
    sdpa = model(pixels).logits
    model.set_attn_implementation("eager")
    assert model.pooler_config._attn_implementation == "eager"
    torch.testing.assert_close(model(pixels).logits, sdpa, atol=1e-5, rtol=1e-4)


# -- save / load, Hub -------------------------------------------------------------------------------------------------
RELOAD = """
import sys, torch
from transformers import AutoModel, AutoModelForVideoClassification
source, inputs, out = sys.argv[1:4]
model = AutoModelForVideoClassification.from_pretrained(source, trust_remote_code=True).eval()
assert type(model).__name__ == "SurgicalWorldModelForVideoClassification", type(model)
assert not any(p.requires_grad for p in model.world_model.parameters())
pixels = torch.load(inputs)
with torch.no_grad():
    logits = model(pixels).logits
world = AutoModel.from_pretrained(source, trust_remote_code=True)
assert type(world).__name__ == "SurgicalWorldModel", type(world)
state = model.world_model.state_dict()
same = all(torch.equal(state[k], v) for k, v in world.state_dict().items())
torch.save({"logits": logits, "world_model_equal": same, "id2label": model.config.id2label}, out)
"""


def reload_in_subprocess(source, pixels, tmp_path, env=None):
    inputs, out = tmp_path / "inputs.pt", tmp_path / "out.pt"
    torch.save(pixels, inputs)
    # From an unrelated directory, so that only the files saved with the model can define it.
    result = subprocess.run(
        [sys.executable, "-c", RELOAD, str(source), str(inputs), str(out)],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
        env=env if env is not None else {**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def saved_probe(world_model_dir, tmp_path_factory):
    model = SurgicalWorldModelForVideoClassification.from_world_model(
        world_model_dir, {0: "needle driver", 1: "grasper", 2: "scissors"}, MULTI, probe_target="tools",
        probe_use_predictor=True, probe_num_layers=1, probe_class_weights=[1.0, 2.0, 8.0],
    )
    with torch.no_grad():  # a "trained" head, so that a head left uninitialised on reload cannot match by chance
        for parameter in model.classifier.parameters():
            parameter.add_(torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("probe")
    model.save_pretrained(folder)
    return model.eval(), folder


def test_save_pretrained_reloads_through_auto_classes_in_a_fresh_process(saved_probe, tmp_path):
    model, folder = saved_probe
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "modeling_surgical_wm.py", "configuration_surgical_wm.py",
            "planning_surgical_wm.py", "losses_surgical_wm.py"} == files
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_surgical_wm.SurgicalWorldModelConfig",
        "AutoModel": "modeling_surgical_wm.SurgicalWorldModel",
        "AutoModelForVideoClassification": "modeling_surgical_wm.SurgicalWorldModelForVideoClassification",
    }
    assert config["problem_type"] == MULTI and config["probe_target"] == "tools"
    assert config["probe_class_weights"] == [1.0, 2.0, 8.0] and config["probe_use_predictor"] is True
    pixels = clip(seed=7)
    with torch.no_grad():
        expected = model(pixels).logits
    reloaded = reload_in_subprocess(folder, pixels, tmp_path)
    torch.testing.assert_close(reloaded["logits"], expected)
    assert reloaded["world_model_equal"]
    assert reloaded["id2label"] == {0: "needle driver", 1: "grasper", 2: "scissors"}


def test_push_to_the_loopback_hub_and_reload_by_repo_id(saved_probe, tmp_path):
    from tests.hub_server import LoopbackHub

    model, folder = saved_probe
    pixels = clip(seed=8)
    with torch.no_grad():
        expected = model(pixels).logits
    with LoopbackHub() as hub:
        repo_id = f"{hub.user}/surgical-wm-tool-probe"
        push = textwrap.dedent(f"""
            from huggingface_hub import HfApi
            api = HfApi()
            api.create_repo({repo_id!r})
            api.upload_folder(repo_id={repo_id!r}, folder_path={str(folder)!r}, commit_message="tool probe")
        """)
        pushed = subprocess.run([sys.executable, "-c", push], env=hub.env(hf_home=tmp_path / "home_push"),
                                cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
        assert pushed.returncode == 0, pushed.stderr[-4000:]
        assert set(hub.repo_files(repo_id)) >= {"config.json", "model.safetensors", "modeling_surgical_wm.py",
                                                "configuration_surgical_wm.py"}
        pulled = tmp_path / "pull"
        pulled.mkdir()
        reloaded = reload_in_subprocess(repo_id, pixels, pulled, env=hub.env(hf_home=tmp_path / "home_pull"))
    torch.testing.assert_close(reloaded["logits"], expected)
    assert reloaded["world_model_equal"]

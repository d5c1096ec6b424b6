"""Unit tests of the world model on tiny configs: shapes, losses, causality, freezing, precision, save/load."""

import ast
import logging
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, TINY_PREDICTOR, tiny_config
from configuration_surgical_wm import SurgicalWorldModelConfig
from modeling_surgical_wm import SurgicalWorldModel, SurgicalWorldModelOutput


def clip(batch=2, frames=4, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=generator)


def actions_for(batch=2, steps=4, dim=3, seed=1):
    return torch.randn(batch, steps, dim, generator=torch.Generator().manual_seed(seed))


def build(**overrides):
    """A tiny world model whose predictor output is not the zero of a new one (which returns its input whatever
    the history and actions), so that the tests see the whole network as a trained model has it."""
    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config(**overrides))
    with torch.no_grad():
        torch.nn.init.trunc_normal_(model.predictor.output_proj.weight, std=model.config.initializer_range)
    return model


def test_shapes_of_encode_predict_rollout_and_forward():
    model = build().eval()
    pixels, actions = clip(), actions_for()
    latents = model.encode(pixels)
    assert latents.shape == (2, 4, 4, 32)  # (B, steps, (32/16)^2 tokens, hidden)
    assert model.predict(latents, actions).shape == latents.shape
    assert model.rollout(latents[:, :1], actions, steps=3).shape == (2, 3, 4, 32)
    output = model(pixels, actions)
    assert isinstance(output, SurgicalWorldModelOutput)
    assert output.predicted_latents.shape == output.target_latents.shape == (2, 3, 4, 32)
    for name in ("loss", "temporal_loss", "teacher_forcing_loss", "rollout_loss", "contrastive_loss"):
        assert torch.isfinite(output[name]), name
    assert output.mask_loss is None and output.clip_mask_loss is None
    assert output.rollout_error is None and output.copy_context_error is None
    torch.testing.assert_close(output.temporal_loss, output.teacher_forcing_loss + output.rollout_loss)
    assert output.clip_temporal_loss.shape == (2,)
    torch.testing.assert_close(output.temporal_loss, output.clip_temporal_loss.mean())
    with_errors = model(pixels, actions, return_rollout_error=True)
    assert with_errors.rollout_error.shape == with_errors.copy_context_error.shape == (2, 3)


def test_real_tubelet_steps_halve_the_steps():
    model = build(frames_per_step=2).eval()
    assert model.encode(clip(frames=8)).shape == (2, 4, 4, 32)
    with pytest.raises(ValueError, match="frames_per_step"):
        model.encode(clip(frames=5))


def test_loss_falls_when_overfitting_one_batch():
    model = build(use_mask_aux=True)
    model.train()
    pixels, actions = clip(batch=4), actions_for(batch=4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        output = model(pixels, actions)
        assert torch.isfinite(output.loss) and torch.isfinite(output.mask_loss)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_an_untrained_default_size_predictor_starts_at_nothing_moves():
    """At the default 1024 x 24 predictor (on a tiny encoder), a new model's rollout is no worse than copying the
    context at any horizon: its zero output projection leaves the residual z_t unchanged."""
    config = SurgicalWorldModelConfig()
    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config(**{name: getattr(config, name) for name in (
        "predictor_hidden_size", "predictor_num_hidden_layers", "predictor_num_attention_heads")})).eval()
    assert model.predictor.layers[0].mlp.fc1.weight.shape == (4096, 1024) and len(model.predictor.layers) == 24
    model_error, copy_context = model.rollout_error(clip(batch=1, frames=8), actions_for(batch=1, steps=8))
    assert model_error.shape == (1, 7) and (copy_context > 0.1).all()
    assert (model_error <= 1.1 * copy_context).all(), (model_error, copy_context)


def test_the_zero_output_projection_learns_and_only_with_predict_residual():
    model = SurgicalWorldModel(tiny_config())
    assert not model.predictor.output_proj.weight.any()
    latents = model.encode(clip())
    torch.testing.assert_close(model.predict(latents, actions_for()), latents)
    model(clip(), actions_for()).loss.backward()
    assert model.predictor.output_proj.weight.grad.abs().sum() > 0  # the first step moves it off zero
    direct = SurgicalWorldModel(tiny_config(predict_residual=False))
    assert direct.predictor.output_proj.weight.abs().mean() > 1e-3  # no residual to fall back on: a random init


def test_predictor_is_block_causal():
    model = build().eval()
    latents = model.encode(clip())
    actions = actions_for()
    reference = model.predict(latents, actions)
    changed_latents = latents.clone()
    changed_latents[:, 2:] = torch.randn_like(changed_latents[:, 2:])
    changed_actions = actions.clone()
    changed_actions[:, 2:] += 5.0
    changed = model.predict(changed_latents, changed_actions)
    torch.testing.assert_close(changed[:, :2], reference[:, :2])
    assert not torch.allclose(changed[:, 2:], reference[:, 2:])
    # ...and the action of step t does change the prediction for step t + 1.
    nudged_actions = actions.clone()
    nudged_actions[:, 1] += 1.0
    nudged = model.predict(latents, nudged_actions)
    torch.testing.assert_close(nudged[:, :1], reference[:, :1])
    assert not torch.allclose(nudged[:, 1], reference[:, 1])


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_causality_holds_for_each_attention_backend(implementation):
    model = build()
    model.set_attn_implementation(implementation)
    model.eval()
    latents = torch.randn(1, 3, 4, 32)
    reference = model.predict(latents)
    latents[:, 2] += 1.0
    torch.testing.assert_close(model.predict(latents)[:, :2], reference[:, :2])


def test_eager_and_sdpa_agree():
    model = build().eval()
    pixels, actions = clip(), actions_for()
    model.set_attn_implementation("sdpa")
    sdpa = model(pixels, actions).predicted_latents
    model.set_attn_implementation("eager")
    eager = model(pixels, actions).predicted_latents
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-4)


def test_each_step_is_encoded_on_its_own():
    model = build().eval()
    pixels = clip()
    reference = model.encode(pixels)
    pixels[:, 3] = torch.randn_like(pixels[:, 3])
    changed = model.encode(pixels)
    torch.testing.assert_close(changed[:, :3], reference[:, :3])
    assert not torch.allclose(changed[:, 3], reference[:, 3])


def test_rollout_feeds_its_predictions_back():
    model = build().eval()
    latents = model.encode(clip())
    actions = actions_for()
    rolled = model.rollout(latents[:, :1], actions, steps=2)
    first = model.predict(latents[:, :1], actions[:, :1])[:, -1]
    torch.testing.assert_close(rolled[:, 0], first)
    second = model.predict(torch.stack([latents[:, 0], first], dim=1), actions[:, :2])[:, -1]
    torch.testing.assert_close(rolled[:, 1], second)
    with pytest.raises(ValueError, match="cover"):
        model.rollout(latents[:, :2], actions[:, :2], steps=3)


@pytest.mark.parametrize("freeze_encoder", [True, False])
def test_rollout_error_against_copy_context(freeze_encoder):
    model = build(freeze_encoder=freeze_encoder).eval()
    if not freeze_encoder:
        with torch.no_grad():
            for parameter in model.target_encoder.parameters():
                parameter.mul_(0.9)
    pixels, actions = clip(), actions_for()
    model_error, copy_context = model.rollout_error(pixels, actions)
    assert model_error.shape == copy_context.shape == (2, 3)
    targets = model.encode_targets(pixels)
    # In eval mode a model holding both encoders is scored as its default export: the EMA target encoder gives the
    # inputs too.
    imagined = model.rollout(targets[:, :1], model.transition_actions(actions), steps=3)
    torch.testing.assert_close(model_error, (imagined - targets[:, 1:]).abs().mean(dim=(2, 3)))
    torch.testing.assert_close(copy_context, (targets[:, :1] - targets[:, 1:]).abs().mean(dim=(2, 3)))
    output = model(pixels, actions, return_rollout_error=True)
    torch.testing.assert_close(output.rollout_error, model_error)
    torch.testing.assert_close(output.copy_context_error, copy_context)


@pytest.mark.parametrize("pairing, carries_the_tool", [("next", [False, True, True]), ("current", [False, False, True])])
def test_each_transition_takes_the_labels_of_the_action_pairing(pairing, carries_the_tool):
    """A tool is installed between steps 1 and 2. With "next" the transition 1 -> 2 carries it (the labels at its end);
    with "current" only 2 -> 3 does (the labels at its start). Training's forward, its rollout and the rollout error
    all give the predictor exactly these transition actions."""
    model = build(action_pairing=pairing).eval()
    no_tool = torch.zeros(1, 4, 3)
    tool = no_tool.clone()
    tool[:, 2:, 0] = 1.0  # per-step labels: the tool is in from step 2 on
    transitions = model.transition_actions(tool)
    assert transitions.shape == (1, 3, 3)
    assert (transitions[0, :, 0] == 1).tolist() == carries_the_tool
    latents = model.encode(clip(batch=1))
    output = model(latents=latents, actions=tool, return_rollout_error=True)
    torch.testing.assert_close(output.predicted_latents, model.predict(latents[:, :-1], transitions), rtol=0, atol=0)
    imagined = model.rollout(latents[:, :1], transitions, steps=3)
    torch.testing.assert_close(output.rollout_error, (imagined - latents[:, 1:]).abs().mean((2, 3)))
    torch.testing.assert_close(model.rollout_error(latents=latents, actions=tool)[0], output.rollout_error)
    # The prediction of a step moves with the tool exactly where the transition into it carries the tool.
    moved = (output.predicted_latents - model(latents=latents, actions=no_tool).predicted_latents).abs().amax((2, 3))
    assert (moved[0] > 0).tolist() == carries_the_tool
    with pytest.raises(ValueError, match="hold no transition"):
        model.transition_actions(tool[:, :1])


def test_new_configs_pair_next_and_exports_without_the_field_keep_the_legacy_pairing(tmp_path):
    import json

    assert build().config.action_pairing == "next"
    build().save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["action_pairing"] == "next"
    assert SurgicalWorldModel.from_pretrained(tmp_path / "new").config.action_pairing == "next"
    # An export from before the field: trained with the labels at t, so it loads with them.
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    del config["action_pairing"]
    (tmp_path / "new" / "config.json").write_text(json.dumps(config))
    assert SurgicalWorldModel.from_pretrained(tmp_path / "new").config.action_pairing == "current"
    assert SurgicalWorldModelConfig.from_pretrained(tmp_path / "new").action_pairing == "current"
    with pytest.raises(ValueError, match="action_pairing"):
        tiny_config(action_pairing="delta")


def per_step_mean(values, frames_per_step):
    batch, frames, dim = values.shape
    return values.float().view(batch, frames // frames_per_step, frames_per_step, dim).mean(2)


@pytest.mark.parametrize("frames_per_step", [1, 2])
def test_latent_level_seams_ignore_steps_past_their_horizon(frames_per_step):
    model = build(frames_per_step=frames_per_step).eval()
    latents = model.encode(clip(frames=4 * frames_per_step))  # (2, 4, N, D)
    # Per-step actions for 6 steps: with 2 frames per step, 6 is also "3 steps x 2 frames", which must not matter.
    actions = actions_for(steps=6)
    rolled = model.rollout(latents[:, :1], actions, steps=3)
    torch.testing.assert_close(rolled, model.rollout(latents[:, :1], actions[:, :3], steps=3), rtol=0, atol=0)
    predicted = model.predict(latents[:, :3], actions)
    torch.testing.assert_close(predicted, model.predict(latents[:, :3], actions[:, :3]), rtol=0, atol=0)
    # ...and the actions do matter, so the comparisons above can fail.
    assert not torch.allclose(rolled, model.rollout(latents[:, :1], actions[:, 3:], steps=3))
    with pytest.raises(ValueError, match="cover 2 steps but 3"):
        model.rollout(latents[:, :1], actions[:, :2], steps=3)
    with pytest.raises(ValueError, match="cover 2 steps but 3"):
        model.predict(latents[:, :3], actions[:, :2])


def test_forward_takes_per_frame_actions_and_states_as_their_per_step_mean():
    model = build(frames_per_step=2, state_dim=2).eval()
    pixels, actions = clip(frames=8), actions_for(steps=8)
    states = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(2))
    per_frame = model(pixels, actions, states, return_rollout_error=True)
    per_step = model(pixels, per_step_mean(actions, 2), per_step_mean(states, 2), return_rollout_error=True)
    for name in ("loss", "predicted_latents", "rollout_loss", "clip_temporal_loss", "rollout_error"):
        torch.testing.assert_close(per_frame[name], per_step[name], rtol=0, atol=0, msg=name)
    first_frames = model(pixels, actions[:, ::2], states[:, ::2])
    assert not torch.allclose(first_frames.loss, per_frame.loss)
    # SurgVU labels are multi-hot: integer or bool labels per frame become the fraction of the step they hold.
    labels = actions > 0
    torch.testing.assert_close(model(pixels, labels, states).loss, model(pixels, per_step_mean(labels, 2), states).loss)
    with pytest.raises(ValueError, match=r"4 \(per step\) or 8 \(per frame\), got 6"):
        model(pixels, actions[:, :6], states)
    with pytest.raises(ValueError, match="states"):
        model.rollout_error(pixels, actions, states[:, :5])


@pytest.mark.parametrize("frames_per_step", [1, 2])
def test_forward_rollout_loss_uses_the_actions_of_an_explicit_rollout(frames_per_step):
    model = build(frames_per_step=frames_per_step, rollout_steps=2).eval()
    pixels, actions = clip(frames=4 * frames_per_step), actions_for(steps=4 * frames_per_step)  # per frame
    per_step = per_step_mean(actions, frames_per_step)
    latents = model.encode(pixels)
    output = model(pixels, actions)
    for step_actions in (model.transition_actions(per_step), model.transition_actions(per_step[:, :3])):
        rolled = model.rollout(latents[:, :1], step_actions, steps=2)
        torch.testing.assert_close(output.rollout_loss, (rolled - latents[:, 1:3]).abs().mean())
    # The long rollout of the validation metrics gives the same rollout loss: its first steps are the short one.
    long = model(pixels, actions, return_rollout_error=True)
    torch.testing.assert_close(long.rollout_loss, output.rollout_loss)
    torch.testing.assert_close(long.clip_temporal_loss, output.clip_temporal_loss)


def test_rollout_error_in_training_leaves_the_gradients_unchanged():
    model = build(rollout_steps=1)
    model.train()
    pixels, actions = clip(), actions_for()
    model(pixels, actions).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    output = model(pixels, actions, return_rollout_error=True)
    assert not output.rollout_error.requires_grad and output.rollout_error.shape == (2, 3)
    output.loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)


@pytest.mark.parametrize("frames_per_step", [1, 2])
def test_rollout_error_uses_the_actions_of_forward(frames_per_step):
    model = build(frames_per_step=frames_per_step).eval()
    pixels, actions = clip(frames=4 * frames_per_step), actions_for(steps=4 * frames_per_step)  # per frame
    per_step = per_step_mean(actions, frames_per_step)
    model_error, copy_context = model.rollout_error(pixels, actions)
    output = model(pixels, actions, return_rollout_error=True)
    torch.testing.assert_close(output.rollout_error, model_error)
    torch.testing.assert_close(output.copy_context_error, copy_context)
    torch.testing.assert_close(model.rollout_error(pixels, per_step)[0], model_error)
    latents = model.encode(pixels)
    imagined = model.rollout(latents[:, :1], model.transition_actions(per_step), steps=3)
    torch.testing.assert_close(model_error, (imagined - latents[:, 1:]).abs().mean(dim=(2, 3)))


@pytest.mark.parametrize("frames_per_step", [1, 2])
def test_per_clip_metrics_do_not_depend_on_the_rest_of_the_batch(frames_per_step):
    model = build(frames_per_step=frames_per_step, use_mask_aux=True).eval()
    pixels, actions = clip(batch=3, frames=4 * frames_per_step), actions_for(batch=3, steps=4 * frames_per_step)
    token_mask = torch.rand(3, 3, 4, generator=torch.Generator().manual_seed(3)) < 0.5
    token_mask[1] = False  # a clip without masked tokens counts 0, whatever the others hold
    batch = model(pixels, actions, token_mask=token_mask, return_rollout_error=True)
    assert batch.clip_temporal_loss.shape == batch.clip_mask_loss.shape == (3,)
    assert batch.rollout_error.shape == batch.copy_context_error.shape == (3, 3)
    assert batch.clip_mask_loss[1] == 0
    torch.testing.assert_close(batch.temporal_loss, batch.clip_temporal_loss.mean())
    torch.testing.assert_close(batch.mask_loss, batch.clip_mask_loss.mean())
    names = ("clip_temporal_loss", "clip_mask_loss", "rollout_error", "copy_context_error")
    for index in range(3):
        alone = model(pixels[index : index + 1], actions[index : index + 1],
                      token_mask=token_mask[index : index + 1], return_rollout_error=True)
        for name in names:
            torch.testing.assert_close(batch[name][index : index + 1], alone[name], msg=f"{name} of clip {index}")


def test_a_given_token_mask_replaces_the_random_one():
    model = build(use_mask_aux=True).eval()
    pixels, actions = clip(), actions_for()
    token_mask = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(4)) < 0.5
    torch.manual_seed(0)
    first = model(pixels, actions, token_mask=token_mask)
    torch.manual_seed(1)
    second = model(pixels, actions, token_mask=token_mask)
    torch.testing.assert_close(first.mask_loss, second.mask_loss, rtol=0, atol=0)
    latents = model.encode(pixels)
    denoised = model.predict(latents[:, :-1], model.transition_actions(actions), token_mask=token_mask)
    per_token = (denoised - latents[:, 1:]).abs().mean(-1)  # (B, S - 1, N)
    expected = torch.stack([per_token[i][token_mask[i]].mean() for i in range(2)])
    torch.testing.assert_close(first.clip_mask_loss, expected)
    # Without one, each call draws its own mask.
    torch.manual_seed(0)
    drawn = model(pixels, actions).mask_loss
    torch.manual_seed(1)
    assert not torch.allclose(drawn, model(pixels, actions).mask_loss)
    with pytest.raises(ValueError, match=r"token_mask.*\(2, 3, 4\)"):
        model(pixels, actions, token_mask=token_mask[:, :2])
    with pytest.raises(ValueError, match="bool"):
        model(pixels, actions, token_mask=token_mask.float())
    with pytest.raises(ValueError, match="use_mask_aux"):
        build().eval()(pixels, actions, token_mask=token_mask)


def test_frozen_encoder_gets_no_gradient_no_optimizer_state_and_stays_in_eval():
    model = build()
    model.train()
    assert not model.encoder.training and model.predictor.training
    assert model.target_encoder is None
    assert all(not p.requires_grad for p in model.encoder.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("predictor.") for n in trainable)
    model(clip(), actions_for()).loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_frozen_encoder_stays_frozen_after_from_pretrained(tmp_path):
    build().save_pretrained(tmp_path)
    reloaded = SurgicalWorldModel.from_pretrained(tmp_path)
    assert all(not p.requires_grad for p in reloaded.encoder.parameters())
    assert all(p.requires_grad for p in reloaded.predictor.parameters())
    finetune = SurgicalWorldModel.from_pretrained(tmp_path, freeze_encoder=False)
    assert all(p.requires_grad for p in finetune.encoder.parameters())
    assert all(not p.requires_grad for p in finetune.target_encoder.parameters())


def test_trainable_encoder_uses_an_ema_target():
    model = build(freeze_encoder=False, ema_momentum=0.9)
    model.train()
    assert model.encoder.training and not model.target_encoder.training
    torch.testing.assert_close(
        model.target_encoder.state_dict(), model.encoder.state_dict()
    )
    output = model(clip(), actions_for())
    output.loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.target_encoder.parameters())
    before = {k: v.clone() for k, v in model.target_encoder.state_dict().items()}
    with torch.no_grad():
        for parameter in model.encoder.parameters():
            parameter.add_(1.0)
    model.update_target_encoder()
    weight = "layer.0.mlp.fc1.weight"
    expected = 0.9 * before[weight] + 0.1 * model.encoder.state_dict()[weight]
    torch.testing.assert_close(model.target_encoder.state_dict()[weight], expected)


def test_actions_none_is_a_pure_video_world_model_and_action_dim_zero_has_no_action_token():
    model = build().eval()
    assert torch.isfinite(model(clip()).loss)
    video_only = build(action_dim=0).eval()
    assert video_only.predictor.action_proj is None
    assert torch.isfinite(video_only(clip()).loss)
    with pytest.raises(ValueError, match="no actions"):
        video_only(clip(), actions_for())


def test_states_are_required_when_the_model_has_a_state_token():
    model = build(state_dim=2).eval()
    with pytest.raises(ValueError, match="states"):
        model(clip(), actions_for())
    states = torch.randn(2, 4, 2)
    assert torch.isfinite(model(clip(), actions_for(), states).loss)


def test_bad_inputs_raise_clear_errors():
    model = build().eval()
    with pytest.raises(ValueError, match="encoder was built for 32x32"):
        model.encode(clip(size=48))
    with pytest.raises(ValueError, match="batch, frames, channels"):
        model.encode(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 2 steps"):
        model(clip(frames=1))
    with pytest.raises(ValueError, match="actions"):
        model(clip(), torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="`actions` must cover 4, got 3"):
        model(clip(), torch.randn(2, 3, 3))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"predictor_hidden_size": 50, "predictor_num_attention_heads": 4}, "divisible"),
        ({"mask_ratio": 1.5}, "mask_ratio"),
        ({"ema_momentum": 1.2}, "ema_momentum"),
        ({"action_dim": 2, "action_spec": ["a", "b", "c"]}, "action_spec"),
        ({"frames_per_step": 3}, "frames_per_step"),
        ({"rollout_steps": 0}, "rollout_steps"),
        ({"action_dim": -1}, "action_dim"),
        ({"action_dim": "seven"}, "action_dim"),
        ({"contrastive_temperature": 0.0}, "contrastive_temperature"),
        ({"fps": 0.0}, "fps"),
        ({"fps": "4"}, "fps"),
    ],
)
def test_bad_config_values_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_presets_map_to_the_vjepa2_checkpoints():
    config = SurgicalWorldModelConfig.from_preset("vitg384", action_dim=4)
    assert config.encoder_name_or_path == "facebook/vjepa2-vitg-fpc64-384"
    assert (config.encoder_config.hidden_size, config.encoder_config.crop_size) == (1408, 384)
    assert config.tokens_per_step == 576
    with pytest.raises(ValueError, match="Unknown preset"):
        SurgicalWorldModelConfig.from_preset("vitx")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_and_backward(dtype):
    model = build(use_mask_aux=True)
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        output = model(clip(), actions_for())
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.predictor.parameters() if p.grad is not None)


def test_bf16_weights():
    model = build().to(torch.bfloat16).eval()
    output = model(clip().to(torch.bfloat16), actions_for())
    assert output.predicted_latents.dtype == torch.bfloat16
    assert torch.isfinite(output.loss)


def test_activation_checkpointing_gives_the_same_gradients():
    pixels, actions = clip(), actions_for()
    model = build(freeze_encoder=False)
    model.train()
    model(pixels, actions).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.predictor.layers)
    model(pixels, actions).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)


def test_save_and_reload_through_automodel_gives_the_same_outputs(tmp_path):
    from transformers import AutoConfig, AutoModel

    model = build(action_spec=["left", "right", "task"]).eval()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "modeling_surgical_wm.py", "configuration_surgical_wm.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    config = AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert config.auto_map == {
        "AutoConfig": "configuration_surgical_wm.SurgicalWorldModelConfig",
        "AutoModel": "modeling_surgical_wm.SurgicalWorldModel",
    }
    assert config.action_spec == ["left", "right", "task"]
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(reloaded).__name__ == "SurgicalWorldModel"
    pixels, actions = clip(), actions_for()
    expected, got = model(pixels, actions), reloaded(pixels, actions)
    torch.testing.assert_close(got.predicted_latents, expected.predicted_latents)
    torch.testing.assert_close(got.loss, expected.loss)


def test_trainable_encoder_checkpoint_round_trips_its_ema_target(tmp_path):
    model = build(freeze_encoder=False)
    with torch.no_grad():
        for parameter in model.target_encoder.parameters():
            parameter.mul_(0.5)
    model.save_pretrained(tmp_path)
    reloaded = SurgicalWorldModel.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.target_encoder.state_dict(), model.target_encoder.state_dict())
    # A frozen checkpoint reopened for fine-tuning starts its EMA target from the encoder, not from noise.
    frozen_dir = tmp_path / "frozen"
    build().save_pretrained(frozen_dir)
    finetune = SurgicalWorldModel.from_pretrained(frozen_dir, freeze_encoder=False)
    torch.testing.assert_close(finetune.target_encoder.state_dict(), finetune.encoder.state_dict())


def test_loading_says_in_one_line_what_starts_new_and_still_reports_a_lost_weight(tmp_path, caplog):
    """A target encoder started from the encoder, or a probe head on a world model, is new by design: one line, not
    transformers' table of MISSING keys "newly initialized"; a weight the checkpoint lost is still in that table."""
    from safetensors.torch import save_file

    from modeling_surgical_wm import SurgicalWorldModelForVideoClassification

    build().save_pretrained(tmp_path / "frozen")
    with caplog.at_level(logging.INFO):
        finetune = SurgicalWorldModel.from_pretrained(tmp_path / "frozen", freeze_encoder=False)
        SurgicalWorldModelForVideoClassification.from_world_model(
            str(tmp_path / "frozen"), {0: "a", 1: "b"}, "single_label_classification")
    assert "MISSING" not in caplog.text and "newly initialized" not in caplog.text, caplog.text
    assert "starting it from the encoder" in caplog.text and "new probe head (classifier, pooler)" in caplog.text
    torch.testing.assert_close(finetune.target_encoder.state_dict(), finetune.encoder.state_dict())

    weights = load_file(tmp_path / "frozen" / "model.safetensors")
    del weights["predictor.norm.weight"]
    save_file(weights, tmp_path / "frozen" / "model.safetensors", metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.INFO):
        SurgicalWorldModel.from_pretrained(tmp_path / "frozen", freeze_encoder=False)
    assert "MISSING" in caplog.text and "predictor.norm.weight" in caplog.text, caplog.text
    assert "target_encoder" not in caplog.text


def test_from_vjepa2_takes_dimensions_and_weights_from_the_checkpoint(tiny_vjepa2_dir):
    model = SurgicalWorldModel.from_vjepa2(tiny_vjepa2_dir, action_dim=5, **TINY_PREDICTOR)
    source = load_file(os.path.join(tiny_vjepa2_dir, "model.safetensors"))
    encoder_keys = [k for k in source if k.startswith("encoder.")]
    assert encoder_keys
    ours = model.state_dict()
    for key in encoder_keys:
        torch.testing.assert_close(ours[key], source[key], rtol=0, atol=0)
    assert model.config.latent_dim == 64 and model.config.encoder_config.crop_size == 64
    assert model.config.encoder_name_or_path == tiny_vjepa2_dir
    # The encoder computes what V-JEPA 2 computes for one step.
    from transformers import VJEPA2Model

    vjepa2 = VJEPA2Model.from_pretrained(tiny_vjepa2_dir).eval()
    pixels = clip(batch=1, frames=2, size=64)
    bare = vjepa2(pixels[:, :1].expand(-1, 2, -1, -1, -1), skip_predictor=True).last_hidden_state
    ours = model.eval().encode(pixels)[:, 0]
    torch.testing.assert_close(ours, torch.nn.functional.layer_norm(bare, (64,)), atol=1e-5, rtol=1e-4)


def test_from_vjepa2_offline_hub_id_fails_with_one_clear_message():
    with pytest.raises(OSError) as error:
        SurgicalWorldModel.from_vjepa2("vitl", local_files_only=True)
    message = str(error.value)
    assert "facebook/vjepa2-vitl-fpc64-256" in message and "local" in message
    assert error.value.__suppress_context__


def _run(args, env_extra=None, cwd=REPO_ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_load_script_then_automodel_in_a_fresh_process(tiny_vjepa2_dir, tmp_path):
    out = tmp_path / "out"
    built = _run(["scripts/load_vjepa2_pretrained.py", "--encoder", tiny_vjepa2_dir, "--save_path", str(out),
                  "--predictor_hidden_size", "48", "--predictor_num_hidden_layers", "2",
                  "--predictor_num_attention_heads", "2", "--action_dim", "6"])
    assert built.returncode == 0, built.stderr
    check = (
        "import sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "assert type(model).__name__ == 'SurgicalWorldModel', type(model)\n"
        "loss = model(torch.randn(2, 4, 3, 64, 64), torch.randn(2, 4, 6)).loss\n"
        "assert torch.isfinite(loss), loss\n"
        "source = load_file(sys.argv[2] + '/model.safetensors')\n"
        "state = model.state_dict()\n"
        "same = all(torch.equal(state[k], v) for k, v in source.items() if k.startswith('encoder.'))\n"
        "print('loss', float(loss), 'encoder_equal', same)\n"
    )
    # Run from an unrelated directory so the repository's own modules cannot be imported.
    loaded = _run(["-c", check, str(out), tiny_vjepa2_dir], cwd=str(tmp_path))
    assert loaded.returncode == 0, loaded.stderr
    assert "encoder_equal True" in loaded.stdout


def test_load_script_offline_exits_nonzero_with_one_paragraph():
    result = _run(["scripts/load_vjepa2_pretrained.py", "--model_size", "vitl", "--save_path", "unused"])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "facebook/vjepa2-vitl-fpc64-256" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


MODEL_FILES = ["modeling_surgical_wm.py", "configuration_surgical_wm.py", "planning_surgical_wm.py",
               "losses_surgical_wm.py"]


@pytest.mark.parametrize("filename", MODEL_FILES)
def test_model_files_import_only_torch_transformers_and_each_other(filename):
    tree = ast.parse(open(os.path.join(REPO_ROOT, filename)).read())
    allowed = {"torch", "transformers", "__future__", "collections", "dataclasses", "typing", "math"}
    allowed |= {name.removesuffix(".py") for name in MODEL_FILES}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots = {node.module.split(".")[0]}
        else:
            continue
        assert roots <= allowed, (filename, roots)


@pytest.mark.skipif(
    not os.environ.get("SURGICAL_WM_VJEPA2_DIR"),
    reason="parity with real V-JEPA 2 weights needs SURGICAL_WM_VJEPA2_DIR=<local facebook/vjepa2-* copy>",
)
def test_parity_with_real_vjepa2_weights():
    from transformers import VJEPA2Model

    path = os.environ["SURGICAL_WM_VJEPA2_DIR"]
    model = SurgicalWorldModel.from_vjepa2(path, action_dim=1, **TINY_PREDICTOR).eval()
    vjepa2 = VJEPA2Model.from_pretrained(path).eval()
    size = vjepa2.config.crop_size
    pixels = clip(batch=1, frames=2, size=size)
    with torch.no_grad():
        bare = vjepa2(pixels[:, 1:].expand(-1, 2, -1, -1, -1), skip_predictor=True).last_hidden_state
    ours = model.encode(pixels)[:, 1]
    torch.testing.assert_close(ours, torch.nn.functional.layer_norm(bare, (bare.shape[-1],)), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("frames_per_step", [1, 2])
def test_precomputed_latents_give_the_outputs_of_the_pixels(frames_per_step):
    """A latent cache feeds `forward` what `encode` returned: every output must be the pixels' one."""
    model = build(frames_per_step=frames_per_step, use_mask_aux=True).eval()
    pixels, per_frame_actions = clip(frames=4), actions_for(steps=4)
    latents = model.encode(pixels)
    mask = torch.rand(latents[:, :-1].shape[:3], generator=torch.Generator().manual_seed(2)) < 0.5
    with torch.no_grad():
        from_pixels = model(pixels, per_frame_actions, token_mask=mask, return_rollout_error=True)
        from_latents = model(latents=latents, actions=per_frame_actions, token_mask=mask, return_rollout_error=True)
    for name in ("loss", "predicted_latents", "clip_temporal_loss", "clip_mask_loss", "rollout_error",
                 "copy_context_error", "contrastive_loss"):
        torch.testing.assert_close(getattr(from_latents, name), getattr(from_pixels, name), rtol=0, atol=0, msg=name)
    for got, expected in zip(model.rollout_error(latents=latents, actions=per_frame_actions),
                             model.rollout_error(pixels, per_frame_actions)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_precomputed_latents_are_refused_where_they_cannot_stand_in_for_the_encoder():
    frozen = build().eval()
    latents = frozen.encode(clip())
    with pytest.raises(ValueError, match="either"):
        frozen(clip(), latents=latents)
    with pytest.raises(ValueError, match="either"):
        frozen()
    with pytest.raises(ValueError, match=r"\(batch, steps, 4, 32\)"):
        frozen(latents=latents[..., :16])
    trained = build(freeze_encoder=False).eval()
    with pytest.raises(ValueError, match="frozen"):
        trained(latents=latents)

"""The training levers that make the predictor depend on its actions: AdaLN conditioning, action dropout to a learned
null action, weight on label changes, the rollout loss weight, the action-contrastive loss, the position embedding
and the actions at their place (`action_spatial_embedding`); and
`--config_overrides`, which switches them on from train_hf.py's command line."""

import pytest
import torch

from conftest import tiny_config
from modeling_surgical_wm import SurgicalWorldModel


def build(**overrides):
    """A tiny world model whose predictor output is not the zero of a new one (which returns its input whatever the
    actions), so that the tests see how the actions reach the output, as in a trained model."""
    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config(**overrides))
    with torch.no_grad():
        torch.nn.init.trunc_normal_(model.predictor.output_proj.weight, std=model.config.initializer_range)
    return model


def latents_for(batch=2, steps=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, steps, 4, 32, generator=generator)


def actions_for(batch=2, steps=4, dim=3, seed=1):
    return torch.randn(batch, steps, dim, generator=torch.Generator().manual_seed(seed))


def perturb_modulation(model):
    """AdaLN weights away from their zero start, as after some training."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.predictor.layers:
            layer.adaln.weight.copy_(torch.randn(layer.adaln.weight.shape, generator=generator) * 0.1)
            layer.adaln.bias.copy_(torch.randn(layer.adaln.bias.shape, generator=generator) * 0.1)


# -- AdaLN -------------------------------------------------------------------------------------------------------------
def test_a_new_adaln_model_predicts_what_the_token_model_with_the_same_weights_predicts():
    token = build(action_conditioning="token").eval()
    adaln = build(action_conditioning="adaln").eval()
    missing, unexpected = adaln.load_state_dict(token.state_dict(), strict=False)
    assert not unexpected and missing and all(".adaln." in name for name in missing)
    assert all(layer.adaln.weight.abs().sum() == 0 for layer in adaln.predictor.layers)
    latents, actions = latents_for(), actions_for()
    torch.testing.assert_close(adaln.predict(latents, actions), token.predict(latents, actions), rtol=0, atol=0)
    perturb_modulation(adaln)
    modulated = adaln.predict(latents, actions)
    assert not torch.allclose(modulated, token.predict(latents, actions), atol=1e-4)
    # The modulation reads the actions: other actions, another modulation.
    assert not torch.allclose(modulated, adaln.predict(latents, actions.flip(0)), atol=1e-4)


def test_adaln_cached_rollout_and_shared_history_equal_the_uncached_rollout():
    model = build(action_conditioning="adaln").eval()
    perturb_modulation(model)
    latents = latents_for(batch=2, steps=3)
    candidates = actions_for(batch=6, steps=5)
    candidates[:, :2] = candidates[::3, :2].repeat_interleave(3, dim=0)  # one history per context, 3 candidates
    with torch.no_grad():
        uncached = model.rollout(latents, candidates, steps=3, use_cache=False)
        cached = model.rollout(latents, candidates, steps=3)
    assert cached.shape == (6, 3, 4, 32)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cached[0], cached[1], atol=1e-4)  # the candidates' own actions matter


def test_a_token_checkpoint_opened_with_adaln_starts_where_it_was(tmp_path):
    token = build(action_conditioning="token").eval()
    token.save_pretrained(tmp_path)
    adaln = SurgicalWorldModel.from_pretrained(tmp_path, action_conditioning="adaln").eval()
    assert adaln.predictor.layers[0].adaln is not None
    latents, actions = latents_for(), actions_for()
    torch.testing.assert_close(adaln.predict(latents, actions), token.predict(latents, actions), rtol=0, atol=0)


def test_new_models_default_to_adaln_and_rollout_4_and_exports_without_the_fields_keep_token_and_2(tmp_path):
    import json

    model = build()
    assert (model.config.action_conditioning, model.config.rollout_steps) == ("adaln", 4)
    assert all(layer.adaln is not None for layer in model.predictor.layers)
    assert all(layer.adaln is None for layer in build(action_dim=0).predictor.layers)  # nothing to modulate with
    model.save_pretrained(tmp_path)
    reloaded = SurgicalWorldModel.from_pretrained(tmp_path)
    assert (reloaded.config.action_conditioning, reloaded.config.rollout_steps) == ("adaln", 4)
    # An export from before the fields: built with one action token and trained with a 2-step rollout, so it loads so.
    token = build(action_conditioning="token", rollout_steps=2)
    token.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    for name in ("action_conditioning", "rollout_steps"):
        del config[name]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = SurgicalWorldModel.from_pretrained(tmp_path / "old").eval()
    assert (old.config.action_conditioning, old.config.rollout_steps) == ("token", 2)
    assert all(layer.adaln is None for layer in old.predictor.layers)
    latents, actions = latents_for(), actions_for()
    torch.testing.assert_close(old.predict(latents, actions), token.eval().predict(latents, actions), rtol=0, atol=0)


# -- action dropout and the null action --------------------------------------------------------------------------------
def test_unknown_actions_take_the_null_action_and_dropout_drops_transitions_in_training():
    model = build(action_dropout=0.5)
    latents, actions = latents_for(), actions_for()
    unknown = actions.clone()
    unknown[:, 1] = float("nan")
    model.eval()
    predicted = model.predict(latents, unknown)
    assert torch.isfinite(predicted).all()
    with torch.no_grad():  # not a constant shift, which the layer norms would take out
        model.predictor.null_action.add_(torch.randn(48, generator=torch.Generator().manual_seed(2)))
    changed = model.predict(latents, unknown)
    torch.testing.assert_close(changed[:, 0], predicted[:, 0])  # step 0 does not see step 1's action
    assert not torch.allclose(changed[:, 1:], predicted[:, 1:], atol=1e-4)
    # Training drops each transition's action with probability action_dropout: the same draws, the same predictions.
    model.train()
    torch.manual_seed(1)
    output = model(latents=latents, actions=actions)
    torch.manual_seed(1)
    dropped = torch.rand(2, 3) < 0.5
    assert dropped.any() and not dropped.all()
    fed = model.transition_actions(actions).masked_fill(dropped[..., None], float("nan"))
    torch.testing.assert_close(output.predicted_latents, model.predictor(latents[:, :3], fed))
    output.loss.backward()
    assert model.predictor.null_action.grad.abs().sum() > 0


def test_nan_actions_are_refused_by_a_model_without_a_null_action():
    model = build().eval()
    actions = actions_for()
    actions[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="action_dropout"):
        model.predict(latents_for(), actions)
    with pytest.raises(ValueError, match="action_dropout"):
        model.rollout(latents_for()[:, :1], actions, steps=2)


# -- loss weights ------------------------------------------------------------------------------------------------------
def test_change_and_rollout_weights_change_the_objective_not_the_metrics():
    latents = latents_for()
    actions = torch.zeros(2, 4, 3)
    actions[0, 3:, 0] = 1.0  # clip 0: the labels change at step 3, so transition 2 (2 -> 3) takes another action
    plain = build(rollout_steps=3).eval()(latents=latents, actions=actions)
    weighted = build(rollout_steps=3, action_change_weight=3.0, rollout_loss_weight=0.5).eval()(
        latents=latents, actions=actions
    )
    for name in ("temporal_loss", "teacher_forcing_loss", "rollout_loss", "contrastive_loss"):
        torch.testing.assert_close(weighted[name], plain[name])
    per_step = (plain.predicted_latents - plain.target_latents).abs().mean(dim=(2, 3))  # (B, 3)
    model = build(rollout_steps=3).eval()
    assert model.config.action_pairing == "next"  # each transition takes the labels at its end
    rolled = model.rollout(latents[:, :1], model.transition_actions(actions), steps=3)
    rollout_per_step = (rolled - latents[:, 1:]).abs().mean(dim=(2, 3))  # (B, 3)
    weights = torch.ones(2, 3)
    weights[0, 2] = 3.0
    expected = ((per_step * weights).mean(1) + 0.5 * (rollout_per_step * weights).mean(1)).mean()
    torch.testing.assert_close(weighted.loss, expected + 0.1 * plain.contrastive_loss)
    assert not torch.allclose(weighted.loss, plain.loss)


# -- the action-contrastive loss ---------------------------------------------------------------------------------------
def test_action_contrastive_loss_shares_the_cache_and_equals_rerunning_each_transition():
    """Two clips, each holding one action throughout: each transition's only other action is the other clip's, so
    the draw is known and every prediction under it can be recomputed from scratch."""
    temperature = 0.05
    model = build(action_contrastive_weight=1.0, action_contrastive_negatives=2,
                  action_contrastive_temperature=temperature)
    model.train()
    latents = latents_for()
    actions = torch.stack([torch.tensor([1.0, 0.0, 0.0]).expand(4, 3), torch.tensor([0.0, 1.0, 0.0]).expand(4, 3)])
    output = model(latents=latents, actions=actions)
    assert output.action_contrastive_loss.requires_grad

    model.eval()
    with torch.no_grad():
        target = latents[:, 1:]
        own = (model.predict(latents[:, :3], actions) - target).abs().mean(dim=(2, 3))  # (B, 3)
        other = torch.empty(2, 3)
        for step in range(3):
            swapped = actions.clone()
            swapped[:, step] = actions.flip(0)[:, step]  # the own history, the other clip's action at t
            prediction = model.predictor(latents[:, : step + 1], swapped[:, : step + 1])[:, -1]
            other[:, step] = (prediction - target[:, step]).abs().mean(dim=(1, 2))
    logits = -torch.stack([own, other, other], dim=-1) / temperature
    expected = (torch.logsumexp(logits, -1) - logits[..., 0]).mean()
    torch.testing.assert_close(output.action_contrastive_loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.loss, output.temporal_loss + 0.1 * output.contrastive_loss + expected,
                               rtol=1e-5, atol=1e-5)
    assert model(latents=latents, actions=actions).action_contrastive_loss is None  # a training term only


def test_action_contrastive_loss_leaves_out_transitions_without_another_action():
    model = build(action_contrastive_weight=1.0).train()
    same = torch.ones(2, 4, 3)
    output = model(latents=latents_for(), actions=same)
    assert output.action_contrastive_loss.item() == 0.0
    output.loss.backward()  # still in the graph, with finite gradients
    assert all(torch.isfinite(p.grad).all() for p in model.predictor.parameters() if p.grad is not None)


# -- the position embedding -------------------------------------------------------------------------------------------
def test_the_position_embedding_tells_identical_tokens_apart_where_rope_cannot():
    """Identical tokens at every place of the grid, no action token: RoPE's attention weights differ by place, but over
    identical values, so every token's output is the same. The learned embedding of each place is what differs."""
    outputs = {}
    for with_embedding in (False, True):
        model = build(action_dim=0, predictor_position_embedding=with_embedding).eval()
        assert (model.predictor.position_embedding is not None) == with_embedding
        same = torch.randn(1, 1, 1, 32).expand(1, 3, 4, 32)  # (B, T, N, D): 3 steps, the 4 tokens alike
        with torch.no_grad():
            outputs[with_embedding] = model.predict(same)
    assert torch.allclose(outputs[False], outputs[False][:, :, :1].expand_as(outputs[False]), atol=1e-6)
    assert (outputs[True] - outputs[True][:, :, :1]).abs().amax(dim=(0, 1, 3))[1:].min() > 1e-4


# -- the actions at their place ---------------------------------------------------------------------------------------
def perturb_spatial(model, seed=7):
    """The per-place action map away from its zero start, as after some training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.predictor.action_spatial.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


@pytest.mark.parametrize("rank", [None, 2])
def test_a_new_spatial_embedding_starts_where_the_model_without_it_is(rank):
    plain = build(action_conditioning="adaln").eval()
    spatial = build(action_conditioning="adaln", action_spatial_embedding=True, action_spatial_rank=rank).eval()
    missing, unexpected = spatial.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".action_spatial." in name for name in missing)
    expected = 3 * 4 * 48 if rank is None else 3 * 2 + 2 * 4 * 48  # action_dim 3, grid 2 x 2, hidden 48
    assert sum(parameter.numel() for parameter in spatial.predictor.action_spatial.parameters()) == expected
    latents, actions = latents_for(), actions_for()
    with torch.no_grad():
        torch.testing.assert_close(spatial.predict(latents, actions), plain.predict(latents, actions), rtol=0, atol=0)
        perturb_spatial(spatial)
        assert not torch.allclose(spatial.predict(latents, actions), plain.predict(latents, actions), atol=1e-4)


def test_the_spatial_embedding_draws_an_action_at_its_place():
    """Identical tokens at every place of the grid and no position embedding: with the action token and AdaLN alone,
    every token's output is nearly the same whatever the action; the per-place map gives each place its own output,
    and another action another one."""
    same = torch.randn(1, 1, 1, 32).expand(1, 3, 4, 32)  # (B, T, N, D): 3 steps, the 4 tokens alike
    actions = actions_for(batch=1, steps=3)
    outputs = {}
    for spatial in (False, True):
        model = build(action_conditioning="adaln", action_spatial_embedding=spatial).eval()
        perturb_modulation(model)
        if spatial:
            perturb_spatial(model)
        with torch.no_grad():
            outputs[spatial] = model.predict(same, actions), model.predict(same, actions.flip(1))

    def spread(prediction):  # the least difference of a place's output from the first place's
        return (prediction - prediction[:, :, :1]).abs().amax(dim=(0, 1, 3))[1:].min()

    plain, drawn, other = outputs[False][0], *outputs[True]
    # Without it the places differ only by the action token's RoPE offset from each (a 1e-4 effect).
    assert spread(plain) < 1e-3 and spread(drawn) > 100 * spread(plain)
    assert (drawn - other).abs().amax() > 1e-2


def test_an_unknown_action_adds_nothing_at_any_place():
    model = build(action_spatial_embedding=True, action_dropout=0.5).eval()
    perturb_spatial(model)
    latents, actions = latents_for(batch=1, steps=3), actions_for(batch=1, steps=3)
    actions[:, 0, 0] = float("nan")  # one value of the row: the whole action is unknown, as for the null action
    without = build(action_spatial_embedding=True, action_dropout=0.5).eval()
    without.load_state_dict(model.state_dict())
    with torch.no_grad():
        spatial = model.predict(latents, actions)
        without.predictor.action_spatial.weight.zero_()
        zeroed = without.predict(latents, actions)
    assert torch.isfinite(spatial).all()
    # Step 1's action is unknown: its tokens get no per-place vector (and it sees no other step); step 2 gets its own.
    torch.testing.assert_close(spatial[:, 0], zeroed[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(spatial[:, 1], zeroed[:, 1], atol=1e-4)


@pytest.mark.parametrize(
    "overrides", [{"predictor_position_embedding": True}, {"action_spatial_embedding": True, "action_spatial_rank": 2}]
)
def test_the_per_place_levers_keep_the_cached_rollout_exact_and_load_back(tmp_path, overrides):
    model = build(action_conditioning="adaln", **overrides).eval()
    perturb_modulation(model)
    if model.predictor.action_spatial is not None:
        perturb_spatial(model)
    latents, candidates = latents_for(batch=2, steps=3), actions_for(batch=2, steps=5)
    with torch.no_grad():
        uncached = model.rollout(latents, candidates, steps=3, use_cache=False)
        cached = model.rollout(latents, candidates, steps=3)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = SurgicalWorldModel.from_pretrained(tmp_path).eval()
    assert {name: getattr(loaded.config, name) for name in overrides} == overrides
    torch.testing.assert_close(dict(loaded.predictor.named_parameters()), dict(model.predictor.named_parameters()))
    with torch.no_grad():
        torch.testing.assert_close(loaded.rollout(latents, candidates, steps=3), cached)


# -- the config and the command line -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"action_conditioning": "film"}, "action_conditioning"),
        ({"action_dropout": 1.0}, "action_dropout"),
        ({"action_contrastive_negatives": 0}, "action_contrastive_negatives"),
        ({"action_contrastive_temperature": 0.0}, "action_contrastive_temperature"),
        ({"action_change_weight": -1.0}, "action_change_weight"),
        ({"rollout_loss_weight": -0.5}, "rollout_loss_weight"),
        ({"action_dim": 0, "action_contrastive_weight": 0.5}, "need actions"),
        ({"predictor_position_embedding": "yes"}, "predictor_position_embedding"),
        ({"action_spatial_embedding": 1}, "action_spatial_embedding"),
        ({"action_spatial_rank": 0}, "action_spatial_rank"),
        ({"action_spatial_rank": True}, "action_spatial_rank"),
        ({"action_dim": 0, "action_spatial_embedding": True}, "need actions"),
    ],
)
def test_bad_lever_values_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_overrides_parse_and_refuse_with_one_line():
    from training_surgical_wm.arguments import parse_config_overrides

    assert parse_config_overrides("action_conditioning=adaln, action_dropout=0.1,rollout_loss_weight=2") == {
        "action_conditioning": "adaln", "action_dropout": 0.1, "rollout_loss_weight": 2}
    assert parse_config_overrides(None) == {}
    for text, message in [("action_dropout", "not NAME=VALUE"), ("dropout=0.1", "not a field"),
                          ("action_dim=3", "set by the data")]:
        with pytest.raises(SystemExit, match=message) as refused:
            parse_config_overrides(text)
        assert str(refused.value).startswith("error: --config_overrides:") and "\n" not in str(refused.value)


def test_load_world_model_applies_the_overrides_and_checks_their_values(tmp_path):
    from accelerate import PartialState

    from training_surgical_wm.arguments import ModelArguments
    from training_surgical_wm.world_model import load_world_model

    build().save_pretrained(tmp_path)
    spec = ["tool/a", "tool/b", "task/c"]
    args = ModelArguments(pretrained_checkpoint=str(tmp_path),
                          config_overrides="action_conditioning=adaln,action_contrastive_weight=0.5")
    PartialState()  # load_world_model logs through Accelerate, as train_hf.py runs it
    model = load_world_model(args, spec)
    assert model.config.action_conditioning == "adaln" and model.config.action_contrastive_weight == 0.5
    assert all(layer.adaln.weight.abs().sum() == 0 for layer in model.predictor.layers)
    args.config_overrides = "action_dropout=1.5"
    with pytest.raises(SystemExit, match="error: world model config: `action_dropout` must be in"):
        load_world_model(args, spec)

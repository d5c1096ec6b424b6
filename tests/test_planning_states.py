"""V-JEPA 2-AC's normalised predictions (`normalize_predictions`) and planning with states that follow each candidate's
actions (`state_rule`), on a toy world whose state integrates the actions."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_config
from modeling_surgical_wm import PredictorKVCache, SurgicalWorldModel
from planning_surgical_wm import (
    PLANNING_PRESETS,
    SurgicalWorldModelActionSampler,
    add_action,
    candidate_states,
    end_effector_pose,
)


def random_pair(**overrides) -> tuple[SurgicalWorldModel, SurgicalWorldModel]:
    """The same random tiny world model without and with `normalize_predictions`."""
    torch.manual_seed(0)
    plain = SurgicalWorldModel(tiny_config(state_dim=2, **overrides)).eval()
    with torch.no_grad():
        for parameter in plain.predictor.parameters():
            parameter.normal_(0.0, 0.2)
    normed = SurgicalWorldModel(tiny_config(state_dim=2, normalize_predictions=True, **overrides)).eval()
    normed.load_state_dict(plain.state_dict())
    return plain, normed


def layer_norm(values: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(values, values.shape[-1:])


def normed_latents(*shape) -> torch.Tensor:
    return layer_norm(torch.randn(*shape, generator=torch.Generator().manual_seed(1)))


# ------------------------------------------------------------------------------------------- normalize_predictions
def test_predictions_are_layer_normed_where_they_are_returned_fed_back_and_compared():
    plain, normed = random_pair()
    latents, actions, states = normed_latents(2, 3, 4, 32), torch.randn(2, 6, 3), torch.randn(2, 6, 2)
    with torch.no_grad():
        raw = plain.predict(latents, actions, states)
        predicted = normed.predict(latents, actions, states)
        # Meta's loop: each prediction layer-normed, then fed back as the next step's input.
        fed = latents
        for _ in range(3):
            following = layer_norm(plain.predictor(fed, actions[:, : fed.shape[1]], states[:, : fed.shape[1]])[:, -1:])
            fed = torch.cat([fed, following], dim=1)
        cached = normed.rollout(latents, actions, steps=3, states=states)
        uncached = normed.rollout(latents, actions, steps=3, states=states, use_cache=False)
        goal = normed_latents(2, 4, 32)
        energy = normed.energy(latents, goal, actions[:, None, 2:5], context_actions=actions[:, :2],
                               states=states[:, :5])
    assert (raw.std(-1, unbiased=False) - 1).abs().amax() > 0.1  # the plain model's predictions are not normed
    assert (predicted - layer_norm(raw)).abs().max() < 1e-5
    assert (cached - uncached).abs().max() < 1e-5
    assert (cached - fed[:, 3:]).abs().max() < 1e-5
    assert (energy[:, 0] - (fed[:, -1] - goal).abs().mean(dim=(1, 2))).abs().max() < 1e-5


def test_the_loss_is_vjepa2_ac_loss_on_normed_predictions():
    """`rollout_steps=2, rollout_loss_weight=1, contrastive_weight=0` with normed predictions: the mean L1 of the
    teacher-forced predictions plus that of a 2-step rollout from the first step (app/vjepa_droid/train.py)."""
    plain, normed = random_pair(contrastive_weight=0.0, rollout_steps=2)
    assert (normed.config.rollout_steps, normed.config.rollout_loss_weight) == (2, 1.0)
    latents, actions, states = normed_latents(2, 4, 4, 32), torch.randn(2, 4, 3), torch.randn(2, 4, 2)
    with torch.no_grad():
        output = normed(latents=latents, actions=actions, states=states)
        transitions = normed.transition_actions(actions)
        teacher_forced = layer_norm(plain.predictor(latents[:, :-1], transitions, states[:, :-1]))
        second = layer_norm(plain.predictor(torch.cat([latents[:, :1], teacher_forced[:, :1]], dim=1),
                                            transitions[:, :2], states[:, :2])[:, -1:])
        rollout = torch.cat([teacher_forced[:, :1], second], dim=1)
        expected = (teacher_forced - latents[:, 1:]).abs().mean() + (rollout - latents[:, 1:3]).abs().mean()
        plain_loss = plain(latents=latents, actions=actions, states=states).loss
    assert (output.predicted_latents - teacher_forced).abs().max() < 1e-5
    assert abs(float(output.loss) - float(expected)) < 1e-5
    assert abs(float(plain_loss) - float(expected)) > 1e-3  # without the flag, the predictions are not normed


def test_the_flag_is_off_for_existing_configs_and_saved_with_the_model(tmp_path):
    _, normed = random_pair()
    normed.save_pretrained(tmp_path)
    assert SurgicalWorldModel.from_pretrained(tmp_path).config.normalize_predictions is True
    older = tiny_config().to_dict()
    older.pop("normalize_predictions")
    assert type(tiny_config()).from_dict(older).normalize_predictions is False
    with pytest.raises(ValueError, match="needs `normalize_latents=True`"):
        tiny_config(normalize_predictions=True, normalize_latents=False)


# ------------------------------------------------------------------------------------------------ the toy world
GOAL = (1.6, -1.2)


def show(state: torch.Tensor, tokens: int = 4, width: int = 32) -> torch.Tensor:
    """The latent of a toy state `(..., S)`: every token holds the state, repeated over the channels."""
    channels = state.repeat(*([1] * (state.ndim - 1)), -(-width // state.shape[-1]))[..., :width]  # (..., width)
    return channels.unsqueeze(-2).expand(*state.shape[:-1], tokens, width)


class ToyPredictor(nn.Module):
    """A predictor whose next latent shows `rule(state, action)` of each step: the world follows the state token.
    Keeps its cache's step count as the real predictor does, and records the states it is given."""

    num_condition_tokens = 2

    def __init__(self, rule):
        super().__init__()
        self.rule, self.seen_states = rule, []

    def new_cache(self) -> PredictorKVCache:
        return PredictorKVCache()

    def forward(self, latents, actions=None, states=None, token_mask=None, output_hidden_states=False, cache=None,
                update_cache=True):
        batch_size, num_steps = latents.shape[:2]
        self.seen_states.append(states)
        if cache is not None:
            cache.check_batch(batch_size)
            if update_cache:
                key = latents.new_zeros(batch_size, 1, num_steps, 1)
                if cache.keys is not None:
                    key = torch.cat([cache.keys[0], key], dim=2)
                cache.update([key], [key], num_steps)
        following = self.rule(states.flatten(0, 1), actions.flatten(0, 1)).view(batch_size, num_steps, -1)
        return show(following, latents.shape[2], latents.shape[3])


def toy_world(dim: int = 2, rule=add_action) -> SurgicalWorldModel:
    model = SurgicalWorldModel(tiny_config(action_dim=dim, state_dim=dim, normalize_latents=False)).eval()
    model.predictor = ToyPredictor(rule)
    return model


def test_each_candidate_state_follows_its_own_actions():
    model = toy_world()
    start = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]])  # two context steps, the last at the origin
    context, goal = show(start), show(torch.tensor([[GOAL]]))
    candidates = torch.randn(1, 5, 3, 2, generator=torch.Generator().manual_seed(2))
    states = candidate_states(start, candidates, add_action)  # (1, 5, 4, 2)
    integrated = torch.cat([start[:, None].expand(-1, 5, -1, -1), candidates[:, :, :2].cumsum(2)], dim=2)
    assert torch.equal(states[:, :, :2], integrated[:, :, :2])
    assert (states - integrated).abs().max() < 1e-6 and (states[0, 0] - states[0, 1]).abs().max() > 0.1
    # The world ends where the integrated actions do; the energy measures how far from the goal that is.
    final = candidates.sum(2)  # (1, 5, 2): the last state plus the last action
    expected = (final - torch.tensor(GOAL)).abs().mean(-1)
    with torch.no_grad():
        for options in ({}, {"use_cache": False}, {"deduplicate": False}):
            energy = model.energy(context, goal, candidates, states=start, state_rule="add", chunk_size=5,
                                  **options)
            assert (energy - expected).abs().max() < 1e-5, options
            # The last step's input state: each candidate's own.
            assert (model.predictor.seen_states[-1][:, -1] - integrated[0, :, -1]).abs().max() < 1e-5, options
        by_callable = model.energy(context, goal, candidates, states=start, state_rule=lambda s, a: s + a,
                                   chunk_size=5)
        held = model.energy(context, goal, candidates, states=start, state_rule="hold", chunk_size=5)
    assert torch.equal(by_callable, energy)
    assert (held - (candidates[:, :, -1] - torch.tensor(GOAL)).abs().mean(-1)).abs().max() < 1e-5


def test_a_plan_with_states_reaches_a_goal_that_frozen_states_cannot():
    """Two steps of actions within +-1 reach (1.6, -1.2) only if the second step starts where the first ended."""
    model = toy_world()
    start = torch.zeros(1, 1, 2)
    context, goal = show(start), show(torch.tensor([[GOAL]]))
    search = dict(horizon=2, num_samples=64, iterations=6, top_k=8, bounds=(-1.0, 1.0), chunk_size=64)
    with torch.no_grad():
        moving = model.plan(context, goal, states=start, state_rule="add",
                            generator=torch.Generator().manual_seed(0), **search)
        frozen = model.plan(context, goal, states=start, state_rule="hold",
                            generator=torch.Generator().manual_seed(0), **search)
    assert moving.settings["state_rule"] == "add" and frozen.settings["state_rule"] == "hold"
    assert float(moving.energy[0]) < 0.1 < 0.35 < float(frozen.energy[0])  # frozen: at best (0.6 + 0.2) / 2
    assert (moving.actions[0].sum(0) - torch.tensor(GOAL)).abs().max() < 0.2


def test_the_end_effector_rule_composes_poses_as_scipy_does():
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    generator = torch.Generator().manual_seed(3)
    pose = torch.cat([torch.randn(6, 3, generator=generator), torch.rand(6, 3, generator=generator) - 0.5,
                      torch.tensor([[0.0], [0.2], [0.5], [0.9], [1.0], [0.3]])], dim=1).double()
    action = torch.cat([torch.randn(6, 3, generator=generator) * 0.05, torch.rand(6, 3, generator=generator) - 0.5,
                        torch.tensor([[-0.5], [0.5], [0.2], [0.5], [-0.25], [-0.75]])], dim=1).double()
    moved = end_effector_pose(pose, action)
    composed = [rotation.from_matrix(rotation.from_euler("xyz", change.numpy()).as_matrix()
                                     @ rotation.from_euler("xyz", angles.numpy()).as_matrix()).as_euler("xyz")
                for angles, change in zip(pose[:, 3:6], action[:, 3:6])]
    assert torch.allclose(moved[:, :3], pose[:, :3] + action[:, :3])
    composed = torch.tensor([angles.tolist() for angles in composed], dtype=torch.float64)
    assert (moved[:, 3:6] - composed).abs().max() < 1e-9
    assert moved[:, 6].tolist() == pytest.approx([0.0, 0.7, 0.7, 1.0, 0.75, 0.0])  # within [0, 1]


def test_the_droid_preset_keeps_meta_constraints_and_moves_poses():
    model = toy_world(7, end_effector_pose)
    calls, score = [], model._candidate_energies

    def record(context, goal, candidates, *args, **kwargs):
        calls.append(candidates.clone())
        return score(context, goal, candidates, *args, **kwargs)

    model._candidate_energies = record
    pose = torch.tensor([[[0.4, 0.0, 0.3, 3.0, 0.1, -1.5, 0.5]]])
    goal = show(torch.tensor([[[0.45, 0.05, 0.25, 3.0, 0.1, -1.5, 1.0]]]))
    with torch.no_grad():
        output = model.plan(show(pose), goal, states=pose, preset="vjepa2_ac_droid", num_samples=40, iterations=3,
                            generator=torch.Generator().manual_seed(0), chunk_size=40)
    sampled = torch.cat(calls, dim=1)  # (1, 120, 2, 7)
    assert output.settings["state_rule"] == "end_effector" and output.settings["num_samples"] == 40
    assert output.settings["top_k"] == PLANNING_PRESETS["vjepa2_ac_droid"]["top_k"] and sampled.shape[2] == 2
    assert torch.equal(sampled[..., 3:6], torch.zeros_like(sampled[..., 3:6]))  # rotation deltas held at 0
    assert sampled[..., :3].abs().max() <= 0.05 and sampled[..., 6].abs().max() <= 0.75
    assert sampled[..., :3].abs().max() > 0.04 and sampled[..., 6].abs().max() > 0.7  # the bounds are reached
    # The returned sequence's energy is that of the pose moved by both its actions, not of the context's pose held.
    first, second = output.actions[0]
    moved = end_effector_pose(end_effector_pose(pose[0], first[None]), second[None])
    held = end_effector_pose(pose[0], second[None])
    assert abs(float(output.energy[0]) - float((show(moved) - goal[0, 0]).abs().mean())) < 1e-6
    assert abs(float(output.energy[0]) - float((show(held) - goal[0, 0]).abs().mean())) > 1e-4


@pytest.mark.parametrize("gripper_goal", [1.0, 0.5])
def test_the_droid_preset_searches_as_meta_cem_does(gripper_goal, monkeypatch):
    """`mpc_utils.cem`: spreads that start at maxnorm for x, y, z and at 1 for the gripper, refit with the unbiased
    std of the top 10, and a final gripper mean under 0.25 in size set to 0 in the action returned, whose energy is
    returned. A goal that closes the gripper keeps its mean; a goal that leaves it where it is has it rounded away."""
    samplers, refits = [], []
    start, refit = SurgicalWorldModelActionSampler.__init__, SurgicalWorldModelActionSampler.refit

    def kept(self, *args, **kwargs):
        start(self, *args, **kwargs)
        samplers.append(self)
        refits.append(self.std.clone())

    def spy(self, elites, *args):
        refit(self, elites, *args)
        refits.append((elites.clone(), self.std.clone()))

    monkeypatch.setattr(SurgicalWorldModelActionSampler, "__init__", kept)
    monkeypatch.setattr(SurgicalWorldModelActionSampler, "refit", spy)
    model = toy_world(7, end_effector_pose)
    pose = torch.tensor([[[0.4, 0.0, 0.3, 3.0, 0.1, -1.5, 0.5]]])
    goal = show(torch.tensor([[[0.45, 0.05, 0.25, 3.0, 0.1, -1.5, gripper_goal]]]))
    with torch.no_grad():
        output = model.plan(show(pose), goal, states=pose, preset="vjepa2_ac_droid", num_samples=40, iterations=3,
                            generator=torch.Generator().manual_seed(0))
    assert refits[0][0, 0].tolist() == pytest.approx([0.05, 0.05, 0.05, 0.0, 0.0, 0.0, 1.0])
    previous = refits[0]
    for elites, spread in refits[1:]:
        assert elites.shape[1] == 10
        assert torch.allclose(spread, 0.15 * previous + 0.85 * elites.std(1), atol=1e-7)  # torch.std: unbiased
        assert not torch.allclose(spread, 0.15 * previous + 0.85 * elites.std(1, unbiased=False), atol=1e-5)
        previous = spread
    final = samplers[0].mean[0]  # (2, 7): the final Gaussian means the preset reads out
    gripper = output.actions[0, :, 6]
    assert torch.equal(output.actions[0, :, :6], final[:, :6])
    assert torch.equal(gripper, torch.where(final[:, 6].abs() < 0.25, torch.zeros_like(gripper), final[:, 6]))
    rounded = int((gripper == 0).sum())
    assert rounded == (0 if gripper_goal == 1.0 else 2) and bool((final[:, 6] != 0).all())
    moved = end_effector_pose(end_effector_pose(pose[0], output.actions[0, :1]), output.actions[0, 1:])
    assert abs(float(output.energy[0]) - float((show(moved) - goal[0, 0]).abs().mean())) < 1e-6
    assert output.settings["initial_std"] == [0.05, 0.05, 0.05, 0.0, 0.0, 0.0, 1.0]
    assert output.settings["unbiased_std"] is True and output.settings["round_below"][6] == 0.25


def test_state_rules_are_refused_clearly():
    plain, _ = random_pair()
    stateless = SurgicalWorldModel(tiny_config()).eval()
    context, goal, actions = normed_latents(1, 2, 4, 32), normed_latents(1, 4, 32), torch.zeros(1, 4, 2, 3)
    with pytest.raises(ValueError, match="moves the state token, but this model has none"):
        stateless.energy(context, goal, actions, state_rule="hold")
    with pytest.raises(ValueError, match="Unknown state rule 'drift'"):
        plain.energy(context, goal, actions, states=torch.zeros(1, 2, 2), state_rule="drift")
    with pytest.raises(ValueError, match=r"'add' .* state_dim \(2\) == action_dim \(3\)"):
        plain.energy(context, goal, actions, states=torch.zeros(1, 2, 2), state_rule="add")
    with pytest.raises(ValueError, match="'end_effector' moves 7-dimensional poses"):
        plain.plan(context, goal, states=torch.zeros(1, 2, 2), state_rule="end_effector", num_samples=4, top_k=2)
    with pytest.raises(ValueError, match="`states` cover 2 steps but 3 are needed"):
        plain.energy(context, goal, actions, states=torch.zeros(1, 2, 2))  # no rule: states over the horizon too
    with pytest.raises(ValueError, match="must return the next states with the shape"):
        plain.energy(context, goal, actions, states=torch.zeros(1, 2, 2), state_rule=lambda s, a: s[:, :1])
    with pytest.raises(ValueError, match="one number or 3"):
        plain.plan(context, goal, states=torch.zeros(1, 2, 2), state_rule="hold", preset="vjepa2_ac_droid")

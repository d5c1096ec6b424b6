"""Planning's action prior (`config.action_prior`, `plan(action_prior=..., seen_only=...)`) and its presets."""

import pytest
import torch

from conftest import tiny_config
from modeling_surgical_wm import SurgicalWorldModel
from planning_surgical_wm import PLANNING_PRESETS, SurgicalWorldModelActionSampler, empirical_action_prior, step_options


SPEC = ["move/left", "move/right", "move/up", "move/down", "paint/red", "paint/green", "paint/blue", "pressure"]
GROUPS = [("move", [0, 1, 2, 3]), ("paint", [4, 5, 6])]  # options: move 0-3 and 4 (none), paint 0-2 and 3 (none)


def actions_of(steps: list[tuple[int, int]]) -> torch.Tensor:
    """Per-step actions `(steps, 8)` from (move option, paint option) pairs; the last option of a group is none."""
    actions = torch.zeros(len(steps), len(SPEC))
    for row, (move, paint) in enumerate(steps):
        if move < 4:
            actions[row, move] = 1.0
        if paint < 3:
            actions[row, 4 + paint] = 1.0
    actions[:, 7] = 0.3  # a continuous dimension: no part of the prior
    return actions


def planning_model(prior: dict | None = None, seed: int = 0) -> SurgicalWorldModel:
    torch.manual_seed(seed)
    config = tiny_config(action_dim=len(SPEC), action_spec=SPEC, discrete_action_groups=["move", "paint"],
                         action_prior=prior)
    model = SurgicalWorldModel(config).eval()
    with torch.no_grad():
        for parameter in model.predictor.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def normed(*shape) -> torch.Tensor:
    return torch.nn.functional.layer_norm(torch.randn(*shape, generator=torch.Generator().manual_seed(5)), shape[-1:])


def recorded_candidates(model: SurgicalWorldModel) -> list[torch.Tensor]:
    """Every batch of candidates `(B, K, H, A)` the planner scores, in order."""
    calls, score = [], model._candidate_energies

    def record(context, goal, candidates, *args, **kwargs):
        calls.append(candidates.clone())
        return score(context, goal, candidates, *args, **kwargs)

    model._candidate_energies = record
    return calls


def test_the_prior_counts_what_the_labels_say():
    clips = torch.stack([
        actions_of([(0, 3), (0, 3), (1, 0), (4, 0)]),  # left/none, left/none, right/red, none/red
        actions_of([(1, 0), (1, 0), (1, 2), (0, 3)]),  # right/red, right/red, right/blue, left/none
    ])
    prior = empirical_action_prior(clips, GROUPS, SPEC)
    assert prior["steps"] == 8 and prior["transitions_counted"] == 6
    move, paint = prior["groups"]["move"], prior["groups"]["paint"]
    assert move["options"] == ["left", "right", "up", "down", "none"] and paint["options"] == ["red", "green", "blue",
                                                                                               "none"]
    assert move["marginal"] == pytest.approx([3 / 8, 4 / 8, 0, 0, 1 / 8])
    assert paint["marginal"] == pytest.approx([4 / 8, 0, 1 / 8, 3 / 8])
    expected_move = torch.zeros(5, 5, dtype=torch.long)
    for source, target in [(0, 0), (0, 1), (1, 4), (1, 1), (1, 1), (1, 0)]:
        expected_move[source, target] += 1
    assert torch.equal(torch.tensor(move["transitions"]), expected_move)
    expected_paint = torch.zeros(4, 4, dtype=torch.long)
    for source, target in [(3, 3), (3, 0), (0, 0), (0, 0), (0, 2), (2, 3)]:
        expected_paint[source, target] += 1
    assert torch.equal(torch.tensor(paint["transitions"]), expected_paint)
    assert prior["combinations"] == [[0, 3], [1, 0], [1, 2], [4, 0]]
    # A step holds the option that fills most of it (the mean of its frames), none when nothing does.
    half = torch.tensor([[0.75, 0.25, 0, 0, 0.5, 0, 0, 0.0]])
    assert step_options(half, GROUPS).tolist() == [[0, 3]]


SEEN = [[0, 3], [1, 0], [4, 2]]  # the only (move, paint) combinations of the training data below
TRAINING = torch.stack([actions_of([(0, 3), (1, 0), (4, 2), (1, 0)]), actions_of([(4, 2), (4, 2), (0, 3), (0, 3)])])


def test_a_plan_restricted_to_seen_combinations_never_proposes_an_unseen_one():
    prior = empirical_action_prior(TRAINING, GROUPS, SPEC)
    assert prior["combinations"] == SEEN
    settings = dict(horizon=2, num_samples=32, iterations=3, top_k=4, context_actions=torch.zeros(2, 1, len(SPEC)))
    context, goal = normed(2, 2, 4, 32), normed(2, 4, 32)

    def proposed(seen_only: bool) -> set:
        model = planning_model(prior)
        calls = recorded_candidates(model)
        output = model.plan(context, goal, generator=torch.Generator().manual_seed(0), seen_only=seen_only,
                            **settings)
        combinations = {tuple(row) for call in calls for row in step_options(call, GROUPS).flatten(0, 2).tolist()}
        assert {tuple(row) for row in step_options(output.actions, GROUPS).flatten(0, 1).tolist()} <= combinations
        assert output.settings["seen_only"] is seen_only
        return combinations

    assert proposed(True) <= {tuple(row) for row in SEEN}
    assert len(proposed(False) - {tuple(row) for row in SEEN}) > 5  # unrestricted, the search wanders off them


def test_a_prior_counted_in_another_group_order_plans_the_same_combinations():
    """MM-OR's evaluation plans its groups in another order than training counted them: the prior is matched by name,
    and its seen combinations are read column by column in the planner's order."""
    reordered = empirical_action_prior(TRAINING, list(reversed(GROUPS)), SPEC)
    assert list(reordered["groups"]) == ["paint", "move"] and reordered["combinations"] != SEEN
    model = planning_model(reordered)
    calls = recorded_candidates(model)
    model.plan(normed(2, 2, 4, 32), normed(2, 4, 32), horizon=2, num_samples=32, iterations=3, top_k=4,
               context_actions=actions_of([(0, 3)])[None].expand(2, -1, -1), action_prior="transition",
               seen_only=True, generator=torch.Generator().manual_seed(0))
    proposed = {tuple(row) for call in calls for row in step_options(call, GROUPS).flatten(0, 2).tolist()}
    assert proposed and proposed <= {tuple(row) for row in SEEN}


def test_the_search_starts_from_the_prior():
    # In training, "left" is always followed by "right" and "right" by "up"; "down" never occurs.
    training = torch.stack([actions_of([(0, 3), (1, 3), (2, 3), (4, 3)]), actions_of([(0, 0), (1, 0), (2, 1), (4, 1)])])
    model = planning_model(empirical_action_prior(training, GROUPS, SPEC))
    context, goal = normed(1, 2, 4, 32), normed(1, 4, 32)
    left = actions_of([(0, 3)])[None]  # the last context action

    def first_moves(prior: str) -> torch.Tensor:
        """The move options `(K, H)` of the first iteration's candidates."""
        calls = recorded_candidates(model)
        model.plan(context, goal, horizon=2, num_samples=64, iterations=2, top_k=4, context_actions=left,
                   action_prior=prior, generator=torch.Generator().manual_seed(1))
        return step_options(calls[0][0], GROUPS)[..., 0]

    moves = first_moves("transition")
    assert (moves[:, 0] == 1).all() and (moves[:, 1] == 2).all()  # left -> right -> up, as in training
    assert set(first_moves("marginal").flatten().tolist()) == {0, 1, 2, 4}  # never "down", the others all drawn
    assert set(first_moves("uniform").flatten().tolist()) == {0, 1, 2, 3, 4}


def test_a_preset_reaches_the_cem_and_explicit_arguments_override_it(monkeypatch):
    model = planning_model()
    momenta, refit = [], SurgicalWorldModelActionSampler.refit

    def spy(self, elites, elite_choices, momentum, std_momentum):
        momenta.append((momentum, std_momentum, elites.shape[1]))
        return refit(self, elites, elite_choices, momentum, std_momentum)

    monkeypatch.setattr(SurgicalWorldModelActionSampler, "refit", spy)
    calls = recorded_candidates(model)
    context, goal = normed(1, 1, 4, 32), normed(1, 4, 32)
    output = model.plan(context, goal, preset="vjepa2_ac_mpc_utils", num_samples=12, iterations=3,
                        generator=torch.Generator().manual_seed(0))
    preset = PLANNING_PRESETS["vjepa2_ac_mpc_utils"]
    assert (preset["top_k"], preset["horizon"], preset["momentum"], preset["std_momentum"]) == (10, 1, 0.25, 0.95)
    assert momenta == [(0.25, 0.95, 10)] * 3  # the preset's momenta and top 10, over the 3 iterations asked for
    # 12 samples asked for, the preset's horizon; then the final mean it returns, scored for its energy
    assert [tuple(call.shape[1:3]) for call in calls] == [(12, 1)] * 3 + [(1, 1)]
    assert (output.actions[..., 7].abs() <= 0.05 + 1e-7).all()  # the preset's bounds
    assert output.settings == {"preset": "vjepa2_ac_mpc_utils", "action_prior": "uniform", "seen_only": False,
                               "horizon": 1, "num_samples": 12, "iterations": 3, "top_k": 10, "momentum": 0.25,
                               "std_momentum": 0.95, "bounds": [-0.05, 0.05], "readout": "mean", "initial_std": None,
                               "round_below": None, "unbiased_std": True, "state_rule": None}
    momenta.clear()
    output = model.plan(context, goal, preset="vjepa2_ac_paper", num_samples=16, iterations=1, top_k=2, momentum=0.5,
                        std_momentum=0.1, horizon=2, bounds=(-0.2, 0.2), generator=torch.Generator().manual_seed(0))
    assert momenta == [(0.5, 0.1, 2)] and output.actions.shape == (1, 2, len(SPEC))
    assert output.settings["bounds"] == [-0.2, 0.2] and output.settings["preset"] == "vjepa2_ac_paper"


@pytest.mark.parametrize("seen_only", [False, True])
def test_the_mean_readout_acts_with_the_final_search_distribution(seen_only, monkeypatch):
    """Meta's planners act with CEM's final mean (the V-JEPA 2 paper's Figure 7, `mpc_utils.cem`, the wrapper that
    calls it): the presets named for them return it, `surgical_wm` the best sequence sampled. Both read out one
    search; a categorical group's part of the mean is its most probable option (among the seen combinations with
    `seen_only`), and the energy returned is the returned sequence's."""
    assert {name: preset["readout"] for name, preset in PLANNING_PRESETS.items()} == {
        "vjepa2_ac_paper": "mean", "vjepa2_ac_wrapper": "mean", "vjepa2_ac_mpc_utils": "mean",
        "vjepa2_ac_droid": "mean", "surgical_wm": "best"}
    samplers, start = [], SurgicalWorldModelActionSampler.__init__

    def kept(self, *args, **kwargs):
        start(self, *args, **kwargs)
        samplers.append(self)

    monkeypatch.setattr(SurgicalWorldModelActionSampler, "__init__", kept)
    model = planning_model(empirical_action_prior(TRAINING, GROUPS, SPEC))
    context, goal, context_actions = normed(2, 2, 4, 32), normed(2, 4, 32), actions_of([(0, 3)])[None].repeat(2, 1, 1)
    outputs = {readout: model.plan(context, goal, horizon=2, num_samples=32, iterations=3, top_k=4,
                                   context_actions=context_actions, action_prior="marginal", seen_only=seen_only,
                                   readout=readout, generator=torch.Generator().manual_seed(0))
               for readout in ("mean", "best")}
    mean, best = outputs["mean"], outputs["best"]
    assert (mean.settings["readout"], best.settings["readout"]) == ("mean", "best")
    assert torch.equal(mean.energy_per_iteration, best.energy_per_iteration)  # the same search
    assert torch.equal(mean.action_mean, best.action_mean)
    assert torch.equal(best.energy, best.energy_per_iteration.min(1).values)  # the lowest energy sampled
    # The Gaussian mean of the continuous dimension, and the most probable option of each group at each step.
    final = samplers[0]
    assert torch.equal(mean.actions[..., 7], final.mean[..., 0]) and not torch.equal(mean.actions, best.actions)
    options = step_options(mean.actions, GROUPS)  # (B, H, groups)
    if seen_only:
        seen = torch.tensor(SEEN)
        likelihood = final.probabilities[0][..., seen[:, 0]] * final.probabilities[1][..., seen[:, 1]]  # (B, H, K)
        assert torch.equal(options, seen[likelihood.argmax(-1)])
    else:
        assert torch.equal(options, torch.stack([probs.argmax(-1) for probs in final.probabilities], dim=-1))
    for output in (mean, best):
        assert torch.allclose(output.energy, model.energy(context, goal, output.actions,
                                                          context_actions=context_actions), atol=1e-6)
    # Where each group's most probable option makes an unseen combination (right, blue), the most probable seen one.
    probabilities = [torch.tensor([[[0.1, 0.5, 0.0, 0.0, 0.4]]]), torch.tensor([[[0.3, 0.0, 0.6, 0.1]]])]
    sampler = SurgicalWorldModelActionSampler(1, 1, len(SPEC), GROUPS, (-0.05, 0.05), torch.device("cpu"),
                                              probabilities, torch.tensor(SEEN) if seen_only else None)
    assert step_options(sampler.mode(), GROUPS).flatten().tolist() == ([4, 2] if seen_only else [1, 2])


def test_small_values_of_the_returned_sequence_are_rounded_away_and_it_is_scored_again():
    """`round_below` on the best sequence sampled: its continuous dimension set to 0 where smaller, the one-hot
    options kept, and the energy returned that of the rounded sequence, not of the sequence sampled."""
    model = planning_model()
    context, goal = normed(1, 1, 4, 32), normed(1, 4, 32)
    search = dict(horizon=2, num_samples=24, iterations=2, top_k=4, bounds=(-0.5, 0.5))
    best = model.plan(context, goal, generator=torch.Generator().manual_seed(0), **search)
    rounded = model.plan(context, goal, round_below=0.3, generator=torch.Generator().manual_seed(0), **search)
    pressure = best.actions[..., 7]
    assert bool((pressure.abs() < 0.3).any()) and bool((pressure.abs() >= 0.3).any())  # both cases occur
    assert torch.equal(rounded.actions[..., 7], torch.where(pressure.abs() < 0.3, torch.zeros_like(pressure), pressure))
    assert torch.equal(rounded.actions[..., :7], best.actions[..., :7])
    assert torch.allclose(rounded.energy, model.energy(context, goal, rounded.actions[:, None])[:, 0], atol=1e-6)
    assert not torch.allclose(rounded.energy, best.energy, atol=1e-6)


def test_a_prior_or_preset_that_cannot_be_used_is_refused_clearly():
    context, goal = normed(1, 1, 4, 32), normed(1, 4, 32)
    with pytest.raises(ValueError, match="Unknown planning preset 'vjepa2'"):
        planning_model().plan(context, goal, preset="vjepa2")
    with pytest.raises(ValueError, match="need the training data's action statistics"):
        planning_model().plan(context, goal, action_prior="marginal")
    with pytest.raises(ValueError, match="need the training data's action statistics"):
        planning_model().plan(context, goal, seen_only=True)
    with pytest.raises(ValueError, match="`action_prior` must be one of"):
        planning_model().plan(context, goal, action_prior="learnt")
    with pytest.raises(ValueError, match="`readout` must be one of mean, best, got 'median'"):
        planning_model().plan(context, goal, readout="median")
    with pytest.raises(ValueError, match="`unbiased_std` needs `top_k` >= 2"):
        planning_model().plan(context, goal, preset="vjepa2_ac_paper", top_k=1)
    for name in ("initial_std", "round_below"):
        with pytest.raises(ValueError, match=f"`{name}` must be one number or 8 .* each >= 0, got \\(0.1, 0.2\\)"):
            planning_model().plan(context, goal, num_samples=8, top_k=2, **{name: (0.1, 0.2)})
        with pytest.raises(ValueError, match=f"`{name}` must be one number or 8"):
            planning_model().plan(context, goal, num_samples=8, top_k=2, **{name: -0.1})
    other = empirical_action_prior(TRAINING[..., :4], [("move", [0, 1, 2, 3])], SPEC)
    with pytest.raises(ValueError, match="no statistics of 4 options for the action group 'paint'"):
        planning_model(other).plan(context, goal, num_samples=8, top_k=2, action_prior="marginal")

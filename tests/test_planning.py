"""KV-cached rollouts, the goal energy and CEM planning (`SurgicalWorldModel.rollout / energy / plan`)."""

from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from modeling_surgical_wm import SurgicalWorldModel


def random_model(seed: int = 0, **overrides) -> SurgicalWorldModel:
    """A tiny world model whose predictor weights are large enough for actions and history to matter."""
    torch.manual_seed(seed)
    model = SurgicalWorldModel(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for parameter in model.predictor.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def normed(*shape) -> torch.Tensor:
    """Random latents, layer-normed per token as `encode` makes them."""
    return torch.nn.functional.layer_norm(torch.randn(*shape), shape[-1:])


# ------------------------------------------------------------------------------------------------ the KV cache
@pytest.mark.parametrize("frames_per_step", [1, 2])
def test_the_cached_rollout_equals_the_uncached_one(frames_per_step):
    model = random_model(frames_per_step=frames_per_step, state_dim=2)
    clip = torch.randn(2, 3 * frames_per_step, 3, 32, 32)
    with torch.no_grad():
        context = model.encode(clip)  # (2, 3, N, D): three steps of history
        actions, states = torch.randn(2, 10, 3), torch.randn(2, 10, 2)
        uncached = model.rollout(context, actions, steps=8, states=states, use_cache=False)
        cached = model.rollout(context, actions, steps=8, states=states)
    assert context.shape[1] == 3 and cached.shape == uncached.shape == (2, 8, *context.shape[2:])
    assert (cached - uncached).abs().max() < 1e-5
    # The rollout moves: a cache that dropped the history or the actions would not match a fresh, longer prediction.
    assert (cached[:, -1] - cached[:, 0]).abs().mean() > 1e-2


def test_candidates_share_their_history_without_changing_the_result():
    model = random_model()
    context = normed(2, 4, 4, 32)  # two contexts of four steps
    history = torch.randn(2, 3, 3)
    candidates = torch.randn(2, 6, 5, 3)  # six candidate continuations per context
    sequences = torch.cat([history[:, None].expand(-1, 6, -1, -1), candidates], dim=2).flatten(0, 1)  # (12, 8, 3)
    with torch.no_grad():
        batched = model.rollout(context, sequences, steps=5)
        alone = torch.cat([model.rollout(context[row // 6 : row // 6 + 1], sequences[row : row + 1], steps=5,
                                         use_cache=False) for row in range(12)])
        # Candidates that differ in their history cannot share it: each row gets its own.
        sequences[1, 0] += 1.0
        diverged = model.rollout(context, sequences, steps=5)
        diverged_alone = model.rollout(context[:1], sequences[1:2], steps=5, use_cache=False)
    assert (batched - alone).abs().max() < 1e-5
    assert (diverged[1] - diverged_alone[0]).abs().max() < 1e-5
    assert (diverged[1] - batched[1]).abs().max() > 1e-3


def test_a_shared_prefix_is_stored_once_per_context():
    model = random_model()
    predictor = model.predictor
    context, actions = normed(2, 3, 4, 32), torch.randn(2, 3, 3)
    cache = predictor.new_cache()
    with torch.no_grad():
        predictor(context[:, :2], actions[:, :2], cache=cache)
        history = cache
        cache = history.share(5)
        step = predictor(context[:, 2:].repeat_interleave(5, 0), actions[:, 2:].repeat_interleave(5, 0), cache=cache)
        full = predictor(context, actions)
    assert cache.shared_keys[0].shape[0] == 2 and cache.keys[0].shape[0] == 10
    assert cache.shared_keys[0] is history.keys[0]  # the history's own tensors, not a copy
    assert cache.num_steps == 3 and cache.num_shared_steps == 2 and history.num_steps == 2
    assert (step[:, -1] - full[:, -1].repeat_interleave(5, 0)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="The cache holds 10 rows, the input has 2"):
        predictor(context[:, 2:], actions[:, 2:], cache=cache)
    fresh = history.share(5)
    with pytest.raises(ValueError, match="serves 2 groups of 5 rows, the input has 4"):
        predictor(context[:, 2:].repeat_interleave(2, 0), actions[:, 2:].repeat_interleave(2, 0), cache=fresh)


def test_the_cache_selects_crops_and_is_changed_only_by_its_methods():
    model = random_model()
    predictor = model.predictor
    context, actions = normed(1, 4, 4, 32), torch.randn(1, 4, 3)
    with torch.no_grad():
        history = predictor.new_cache()
        predictor(context[:, :2], actions[:, :2], cache=history)
        # Three candidate next steps after one shared history, then candidates 2, 0, 0 continue.
        step = history.share(3)
        candidates = torch.randn(3, 1, 3)
        predicted = predictor(context[:, 2:3].expand(3, -1, -1, -1), candidates, cache=step)
        assert step.get_seq_length() == 3 and history.get_seq_length() == 2
        rows = torch.tensor([2, 0, 0])
        chosen = step.select(rows)
        assert chosen.get_seq_length() == 3 and chosen.keys[0].shape[0] == 3 and chosen.shared_keys is history.keys
        after = predictor(predicted[rows], actions[:, 3:].expand(3, -1, -1), cache=chosen, update_cache=False)
        assert chosen.get_seq_length() == 3  # update_cache=False: the last step of a rollout keeps no keys
        full = predictor(torch.cat([context[:, :3].expand(3, -1, -1, -1), predicted[rows]], 1),
                         torch.cat([actions[:, :2].expand(3, -1, -1), candidates[rows], actions[:, 3:].expand(3, -1, -1)],
                                   1))
        assert (after[:, -1] - full[:, -1]).abs().max() < 1e-5
        longer = predictor.new_cache()
        predictor(context, actions, cache=longer)
        longer.crop(2)
        assert longer.get_seq_length() == 2 and longer.keys[0].shape == history.keys[0].shape
        assert torch.allclose(longer.keys[0], history.keys[0], atol=1e-6)
    with pytest.raises(ValueError, match="serves 2 groups"):
        two = predictor.new_cache()
        with torch.no_grad():
            predictor(context[:, :1].expand(2, -1, -1, -1), actions[:, :1].expand(2, -1, -1), cache=two)
            shared = two.share(2)
            predictor(context[:, 1:2].expand(4, -1, -1, -1), actions[:, 1:2].expand(4, -1, -1), cache=shared)
        shared.select(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="Can crop to"):
        longer.crop(5)


def test_gradients_through_the_cached_rollout_match_the_uncached_ones():
    """Training's rollout loss goes through the cache, also under gradient checkpointing."""
    grads = {}
    for name, use_cache, checkpointing in (("uncached", False, False), ("cached", True, False),
                                            ("checkpointed", True, True)):
        model = random_model()
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        context = normed(2, 2, 4, 32)
        imagined = model.rollout(context, torch.ones(2, 4, 3), steps=3, use_cache=use_cache)
        imagined.square().mean().backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.predictor.parameters() if p.grad is not None])
    assert grads["cached"].abs().sum() > 0
    torch.testing.assert_close(grads["cached"], grads["uncached"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads["checkpointed"], grads["uncached"], rtol=1e-4, atol=1e-6)


def test_rollout_refuses_candidates_that_do_not_divide_among_the_contexts():
    model = random_model()
    with pytest.raises(ValueError, match="3 rows of actions for 2 contexts"):
        model.rollout(normed(2, 1, 4, 32), torch.randn(3, 2, 3), steps=2)


# ------------------------------------------------------------------------------------------------- planning
SPEC = ["move/left", "move/right", "move/up", "move/down", "paint/red", "paint/green", "paint/blue", "pressure"]


def planning_model(seed: int = 0) -> SurgicalWorldModel:
    return random_model(seed, action_dim=len(SPEC), action_spec=SPEC, discrete_action_groups=["move", "paint"])


def test_plan_is_deterministic_with_a_generator_and_keeps_to_the_action_space():
    model = planning_model()
    context, goal = normed(2, 2, 4, 32), normed(2, 4, 32)
    settings = dict(horizon=3, num_samples=24, iterations=3, top_k=4, bounds=(-0.5, 0.5),
                    context_actions=torch.zeros(2, 1, len(SPEC)))
    first = model.plan(context, goal, generator=torch.Generator().manual_seed(3), **settings)
    again = model.plan(context, goal, generator=torch.Generator().manual_seed(3), **settings)
    other = model.plan(context, goal, generator=torch.Generator().manual_seed(4), **settings)
    for field in ("actions", "energy", "energy_per_iteration", "elite_energy_per_iteration", "action_mean"):
        assert torch.equal(first[field], again[field]), field
    assert not torch.equal(first.actions, other.actions)

    actions = first.actions  # (2, 3, 8)
    assert actions.shape == (2, 3, len(SPEC)) and first.energy_per_iteration.shape == (2, 3)
    for dims in ([0, 1, 2, 3], [4, 5, 6]):  # a one-hot or none, never two options at once
        group = actions[..., dims]
        assert set(group.unique().tolist()) <= {0.0, 1.0} and (group.sum(-1) <= 1).all()
    assert (actions[..., 7].abs() <= 0.5).all()
    # The best energy is the lowest of all iterations, and is the energy of the returned actions.
    assert torch.allclose(first.energy, first.energy_per_iteration.min(1).values)
    recomputed = model.energy(context, goal, actions, context_actions=torch.zeros(2, 1, len(SPEC)))
    assert torch.allclose(recomputed, first.energy, atol=1e-6)
    assert (first.elite_energy_per_iteration >= first.energy_per_iteration - 1e-7).all()


def test_batched_planning_equals_a_per_sample_loop():
    model = random_model(1, action_dim=7, action_spec=[f"arm{a}/{t}" for a in range(2) for t in "abc"] + ["task/x"],
                         discrete_action_groups=["arm0", "arm1", "task"])
    context, goal = normed(1, 3, 4, 32), normed(1, 4, 32)
    settings = dict(horizon=2, num_samples=20, iterations=3, top_k=5, context_actions=torch.zeros(1, 2, 7))
    step_passes = []  # rows x steps through the predictor, per call
    model.predictor.register_forward_hook(
        lambda module, args, output: step_passes.append(args[0].shape[0] * args[0].shape[1])
    )
    batched = model.plan(context, goal, generator=torch.Generator().manual_seed(0), **settings)
    batched_passes, step_passes[:] = list(step_passes), []
    loop = model.plan(context, goal, generator=torch.Generator().manual_seed(0), chunk_size=1, use_cache=False,
                      deduplicate=False, **settings)
    assert torch.equal(batched.actions, loop.actions)
    torch.testing.assert_close(batched.energy_per_iteration, loop.energy_per_iteration, rtol=1e-5, atol=1e-6)
    # The loop runs each of the 60 samples alone over the whole history at every step: 3 + 4 step passes. The
    # batched search runs the 2 history steps once, then the last context step once per distinct first action and
    # the next step once per distinct sequence, many per call.
    assert step_passes == [3, 4] * 60
    assert batched_passes[0] == 2 and len(batched_passes) < len(step_passes) / 10
    assert sum(batched_passes[1:]) < 2 * 60


def test_plan_refuses_bad_input_clearly():
    model = planning_model()
    clip = torch.randn(1, 2, 3, 32, 32)
    with pytest.raises(ValueError, match="Planning needs a `goal` observation"):
        model.plan(clip)
    with pytest.raises(ValueError, match="`goal`: Frames are 64x64 but the encoder was built for 32x32"):
        model.plan(clip, torch.randn(1, 2, 3, 64, 64))
    with pytest.raises(ValueError, match="another encoder or another resolution"):
        model.plan(clip, normed(1, 4, 48))  # a wider encoder's latents
    with pytest.raises(ValueError, match="not layer-normed"):
        model.plan(clip, torch.randn(1, 4, 32) * 3 + 1)
    with pytest.raises(ValueError, match="one goal per context"):
        model.plan(clip, normed(2, 4, 32))
    with pytest.raises(ValueError, match="`top_k` \\(8\\) cannot exceed `num_samples` \\(4\\)"):
        model.plan(clip, normed(1, 4, 32), num_samples=4, top_k=8)
    with pytest.raises(ValueError, match="`momentum` must be in"):
        model.plan(clip, normed(1, 4, 32), momentum=1.0)
    with pytest.raises(ValueError, match="`context_actions` must have shape \\(1, 1, 8\\)"):
        model.plan(clip, normed(1, 4, 32), context_actions=torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="low <= high"):
        model.plan(clip, normed(1, 4, 32), bounds=(0.1, -0.1))
    with pytest.raises(ValueError, match=r"\['tool'\] name no dimension"):
        model.plan(clip, normed(1, 4, 32), discrete_groups=["tool"])
    with pytest.raises(ValueError, match="no actions"):
        random_model(action_dim=0).plan(clip, normed(1, 4, 32))


def test_the_config_checks_its_action_groups():
    with pytest.raises(ValueError, match="which is not set"):
        tiny_config(discrete_action_groups=["move"])
    with pytest.raises(ValueError, match="name no dimension"):
        tiny_config(action_dim=2, action_spec=["a/x", "a/y"], discrete_action_groups=["b"])
    config = tiny_config(action_dim=len(SPEC), action_spec=SPEC, discrete_action_groups=["paint", "move"])
    assert config.action_groups() == [("paint", [4, 5, 6]), ("move", [0, 1, 2, 3])]


def test_planning_and_action_inference_choose_the_same_groups():
    """`categorical_groups` is what plan.py and the evaluation's action inference both plan over: the config's named
    groups, else the action spec's prefixes in their order (returned too, for `plan(discrete_groups=...)`), else
    none."""
    named = tiny_config(action_dim=len(SPEC), action_spec=SPEC, discrete_action_groups=["paint"])
    assert named.categorical_groups() == ([("paint", [4, 5, 6])], None)
    derived = tiny_config(action_dim=len(SPEC), action_spec=SPEC)
    assert derived.categorical_groups() == ([("move", [0, 1, 2, 3]), ("paint", [4, 5, 6])], ["move", "paint"])
    assert tiny_config(action_dim=len(SPEC)).categorical_groups() == ([], None)


# --------------------------------------- a world whose motion is set by the actions: plan, then infer the actions
GRID, CELL = 2, 16  # a square on a 2x2 grid of 16-px cells: one latent token per cell
MOVES = [(0, -1), (0, 1), (-1, 0), (1, 0)]  # left, right, up, down, stopped at the edges; "none" stays
COLOURS = [(1.0, -1.0, -1.0), (-1.0, 1.0, -1.0), (-1.0, -1.0, 1.0)]
STATES = [(row, col, colour) for row in range(GRID) for col in range(GRID) for colour in range(len(COLOURS))]


def render(row: int, col: int, colour: int) -> torch.Tensor:
    frame = torch.full((3, GRID * CELL, GRID * CELL), -0.5)
    frame[:, row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = torch.tensor(COLOURS[colour])[:, None, None]
    return frame


def step(state: tuple[int, int, int], move: int, paint: int) -> tuple[int, int, int]:
    """The true dynamics: `move` (4 = none) shifts the square, `paint` (3 = none) recolours it."""
    row, col, colour = state
    if move < len(MOVES):
        row = min(max(row + MOVES[move][0], 0), GRID - 1)
        col = min(max(col + MOVES[move][1], 0), GRID - 1)
    return row, col, paint if paint < len(COLOURS) else colour


def action_vector(move: int, paint: int) -> torch.Tensor:
    vector = torch.zeros(len(SPEC))
    if move < 4:
        vector[move] = 1.0
    if paint < 3:
        vector[4 + paint] = 1.0
    return vector


def decode_action(vector: torch.Tensor) -> tuple[int, int]:
    """(move, paint) of an action vector, 4 / 3 for none."""
    move = int(vector[:4].argmax()) if vector[:4].max() > 0.5 else 4
    paint = int(vector[4:7].argmax()) if vector[4:7].max() > 0.5 else 3
    return move, paint


def random_action(generator: torch.Generator) -> tuple[int, int]:
    return int(torch.randint(5, (1,), generator=generator)), int(torch.randint(4, (1,), generator=generator))


def train_motion_world() -> tuple[SurgicalWorldModel, torch.Tensor]:
    """The tiny world model, trained briefly (about 10 s) on trajectories whose motion and colour the actions set,
    and the latent of every state of the world. One action token and a 2-step rollout loss, the settings its brief
    training was sized for: with AdaLN's zero-started modulation the same 10 s infer fewer moves.
    (`benchmarks/compare_presets.py` plans in it too.)"""
    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config(action_dim=len(SPEC), action_spec=SPEC, discrete_action_groups=["move", "paint"],
                                           contrastive_weight=0.0, action_conditioning="token", rollout_steps=2))
    with torch.no_grad():
        table = model.encode(torch.stack([render(*state) for state in STATES])[:, None])[:, 0]  # (12, 4, 32)
    generator = torch.Generator().manual_seed(0)

    def trajectories(count: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows, actions = [], []
        for _ in range(count):
            state = STATES[int(torch.randint(len(STATES), (1,), generator=generator))]
            visited, taken = [STATES.index(state)], []
            for _ in range(length - 1):
                move, paint = random_action(generator)
                state = step(state, move, paint)
                visited.append(STATES.index(state))
                taken.append(action_vector(move, paint))
            rows.append(visited)
            # Per-step labels: the move made between steps t and t + 1 is in force at t + 1, and the model pairs
            # each transition with the labels at its end.
            actions.append(torch.stack([torch.zeros(len(SPEC))] + taken))
        return table[torch.tensor(rows)], torch.stack(actions)

    assert model.config.action_pairing == "next"
    optimizer = torch.optim.AdamW(model.predictor.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small only lose time to a second thread
    try:
        for _ in range(400):
            latents, actions = trajectories(32, 4)
            loss = model(latents=latents, actions=actions).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), table


@pytest.fixture(scope="module")
def motion_world():
    return train_motion_world()


def reach_goals(model, table, cases: int = 24, horizon: int = 2, **plan_options) -> dict:
    """Plans toward `cases` goals `horizon` random actions away and plays each plan in the true world: the goals
    reached, those expected of 64 random sequences, and the planned and random sequences' mean energies per case.
    `plan_options` go to `plan` (the search settings)."""
    generator = torch.Generator().manual_seed(1)
    planned_energy, random_energy, reached, reached_by_random = [], [], 0, 0
    for case in range(cases):
        start = state = STATES[int(torch.randint(len(STATES), (1,), generator=generator))]
        for _ in range(horizon):
            state = step(state, *random_action(generator))
        context, goal = table[STATES.index(start)][None, None], table[STATES.index(state)][None]
        result = model.plan(context, goal, horizon=horizon, generator=torch.Generator().manual_seed(case),
                            **plan_options)
        candidates = [[random_action(generator) for _ in range(horizon)] for _ in range(64)]
        vectors = torch.stack([torch.stack([action_vector(*action) for action in sequence]) for sequence in candidates])
        planned_energy.append(result.energy.item())
        random_energy.append(model.energy(context, goal, vectors[None]).mean().item())

        def played(sequence) -> tuple[int, int, int]:
            current = start
            for action in sequence:
                current = step(current, *action)
            return current

        reached += int(played([decode_action(a) for a in result.actions[0]]) == state)
        reached_by_random += sum(played(sequence) == state for sequence in candidates) / len(candidates)
    return {"reached": reached, "reached_by_random": reached_by_random, "planned_energy": planned_energy,
            "random_energy": random_energy}


def infer_actions(model, table, cases: int = 48, **plan_options) -> dict[str, int]:
    """From `cases` random states and one random action each, the move and the colour the planner infers from the
    state before and after: how many match the true ones. `plan_options` go to `plan`."""
    generator = torch.Generator().manual_seed(2)
    matches = {"move": 0, "paint": 0}
    for case in range(cases):
        start = STATES[int(torch.randint(len(STATES), (1,), generator=generator))]
        move, paint = random_action(generator)
        goal = table[STATES.index(step(start, move, paint))][None]
        result = model.plan(table[STATES.index(start)][None, None], goal, horizon=1,
                            generator=torch.Generator().manual_seed(case), **plan_options)
        inferred = decode_action(result.actions[0, 0])
        matches["move"] += int(inferred[0] == move)
        matches["paint"] += int(inferred[1] == paint)
    return matches


def test_planned_actions_reach_the_goal_and_beat_random_ones(motion_world):
    """Horizon 2, as V-JEPA 2-AC plans: lower energy than random actions, and the goal reached more often when the
    planned actions are played in the true world."""
    cases = 24
    found = reach_goals(*motion_world, cases=cases, horizon=2, num_samples=64, iterations=4, top_k=8)
    reached, reached_by_random = found["reached"], found["reached_by_random"]
    planned_energy, random_energy = found["planned_energy"], found["random_energy"]
    print(f"horizon 2, {cases} cases: goal reached {reached} by the plan, {reached_by_random:.1f} expected at random; "
          f"mean energy {sum(planned_energy) / cases:.4f} planned, {sum(random_energy) / cases:.4f} random")
    assert all(p < r for p, r in zip(planned_energy, random_energy)), (planned_energy, random_energy)
    assert reached / cases > 1.5 * reached_by_random / cases, (reached, reached_by_random)


def test_inferred_actions_match_the_true_ones_more_often_than_chance(motion_world):
    """Action inference: from each frame and the next, the move and the colour that explain them."""
    cases = 48
    matches = infer_actions(*motion_world, cases=cases, num_samples=64, iterations=4, top_k=8)
    print(f"inferred actions, {cases} cases: move {matches['move']}, colour {matches['paint']} match")
    # Chance is 1/5 for the move and 1/4 for the colour (each with "none"). Some actions are indistinguishable (a
    # move into the edge is no move; painting the colour it has is no paint), so even a perfect model stays below 1.
    assert matches["move"] / cases > 1.5 * (1 / 5), matches
    assert matches["paint"] / cases > 1.5 * (1 / 4), matches


def test_the_preset_comparison_reads_both_readouts_of_each_preset(motion_world, monkeypatch, capsys):
    """`benchmarks/compare_presets.py`, scaled down, on this module's motion world: a row per preset and readout,
    the two readouts of one preset from the same searches, and its last line the mean readout over the best."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import compare_presets

    monkeypatch.setattr(compare_presets, "train_motion_world", lambda: motion_world)
    threads = torch.get_num_threads()
    try:
        compare_presets.main(["--presets", "surgical_wm,vjepa2_ac_mpc_utils", "--num_samples", "12", "--iterations",
                              "2", "--goals", "3", "--inferences", "4"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ") for line in printed if line.startswith("| `")]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("| `surgical_wm`", "12 x 2", "mean"), ("| `surgical_wm`", "12 x 2", "best"),
        ("| `vjepa2_ac_mpc_utils`", "12 x 2", "mean"), ("| `vjepa2_ac_mpc_utils`", "12 x 2", "best")]
    expected = reach_goals(*motion_world, cases=3, horizon=2, preset="vjepa2_ac_mpc_utils", readout="best",
                           num_samples=12, iterations=2)
    assert rows[3][3] == str(expected["reached"]) and rows[3][4] == f"{expected['reached_by_random']:.1f}"
    assert printed[-1].startswith("mean over best readout, summed over 2 preset(s): goals ")
    with pytest.raises(SystemExit):
        compare_presets.parse_args(["--presets", "vjepa2_ac_droid"])
    assert "the motion world has none of" in capsys.readouterr().err

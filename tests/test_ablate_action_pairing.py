"""The scores of `benchmarks/ablate_action_pairing.py`: own and swapped actions, at label changes and elsewhere."""

import importlib.util
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, tiny_config
from configuration_surgical_wm import SurgicalWorldModelConfig
from modeling_surgical_wm import SurgicalWorldModel
from planning_surgical_wm import step_options


def load_benchmark(name: str):
    """A benchmark script as a module (benchmarks/ is a folder of scripts, not a package)."""
    path = os.path.join(REPO_ROOT, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ablation = load_benchmark("ablate_action_pairing")


class ShiftModel:
    """A world model whose next latent is the last one plus the option of the transition's action, plus 0.1: with
    the true actions it misses by exactly 0.1 at every transition, so every score has an answer worked by hand."""

    config = SimpleNamespace(action_pairing="next")

    def transition_actions(self, labels: torch.Tensor) -> torch.Tensor:
        return labels[:, 1:]

    def predict(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return latents + actions.argmax(-1)[:, :, None, None] + 0.1

    def rollout(self, context: torch.Tensor, actions: torch.Tensor, steps: int) -> torch.Tensor:
        imagined = [context[:, -1]]
        for step in range(steps):
            imagined.append(imagined[-1] + actions[:, step].argmax(-1)[:, None, None] + 0.1)
        return torch.stack(imagined[1:], 1)


def one_hot_labels(options: list[list[int]]) -> torch.Tensor:
    """Per-step one-hot labels `(C, S, 3)` from each clip's option per step."""
    return torch.nn.functional.one_hot(torch.tensor(options), 3).float()


# 3 clips of 5 transitions, 1 + 0 + 2 of them where the labels change.
OPTIONS = [[0, 0, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2], [1, 1, 1, 0, 0, 2]]


def test_scores_split_the_error_at_label_changes_and_compare_swapped_with_own_actions():
    labels = one_hot_labels(OPTIONS)
    torch.manual_seed(0)
    moves = torch.tensor(OPTIONS).float()
    moves[:, 0] = 0
    latents = torch.randn(3, 1, 4, 8) + moves.cumsum(1)[:, :, None, None]  # (C, S, N, D): z_t+1 = z_t + option
    row = ablation.scores(ShiftModel(), latents, labels, torch.tensor([2, 0, 1]))
    assert row["changes"] == pytest.approx(3 / 15)
    for name in ("own", "own_first", "own_change", "own_same"):
        assert row[name] == pytest.approx(0.1), name
    assert row["rollout"] == pytest.approx(0.4)  # 0.1 more at each of 4 steps
    # Clip c takes clip c - 1's labels; each transition then misses by |swapped option - own option + 0.1|:
    # clip 0: 1.1 0.1* 0.9 0.9 1.1, clip 1: 1.9 0.9 0.9 0.9 0.9, clip 2: 1.1 1.1 2.1* 2.1 0.1* (* a label change).
    assert row["ratio"] == pytest.approx(16.1 / 15 / 0.1)
    assert row["ratio_change"] == pytest.approx(2.3 / 3 / 0.1)
    assert row["ratio_same"] == pytest.approx(13.8 / 12 / 0.1)


def test_a_world_model_scores_swapped_as_own_when_every_clip_has_the_same_labels():
    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config()).eval()
    latents = torch.nn.functional.layer_norm(torch.randn(3, 6, 4, 32), (32,))  # (C, S, N, D), as `encode` makes them
    row = ablation.scores(model, latents, one_hot_labels(OPTIONS[:1] * 3), torch.tensor([1, 2, 0]))
    assert row["changes"] == pytest.approx(1 / 5)
    assert row["ratio"] == row["ratio_change"] == row["ratio_same"] == 1.0
    assert row["own"] == pytest.approx(0.2 * row["own_change"] + 0.8 * row["own_same"], rel=1e-5)


def test_levers_names_the_action_levers_set_away_from_their_defaults():
    assert ablation.levers(SurgicalWorldModelConfig()) == "-"
    config = SurgicalWorldModelConfig(action_contrastive_weight=0.1, rollout_steps=2, action_pairing="current")
    assert ablation.levers(config) == "action_contrastive_weight=0.1, rollout_steps=2"


def test_label_visibility_measures_how_far_the_latent_moves_when_only_the_labels_change():
    """Frames rendered twice at the same moments: identical labels give identical latents, and every kind of change
    moves them; the task, whose anatomy fills much of the view, moves them more than one arm's tool."""
    visibility = load_benchmark("label_visibility")
    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config()).eval()
    renderer = visibility._Renderer(np.random.default_rng(0), visibility.WIDTH, visibility.HEIGHT)
    arms = [(0, 0.0), None, (3, 0.0), None]
    frames = [renderer.frame(arms, 2, 10 + step / 4) for step in range(4)]
    assert torch.equal(visibility.encode(model, frames), visibility.encode(model, frames))
    results = visibility.measure(model, clips=3, steps=4, fps=4.0, seed=0)
    assert all(len(values) == 3 and min(values) > 0 for values in results.values())
    assert np.mean(results["the task"]) > np.mean(results["one arm's tool"])


class CopyModel:
    """A world model that copies the last latent whatever the actions: its error at a transition is how far the
    latent moved, and swapped actions change nothing."""

    config = SimpleNamespace(action_pairing="next", action_spec=["task/a", "task/b", "USM1/x", "USM1/y"])

    def transition_actions(self, labels: torch.Tensor) -> torch.Tensor:
        return labels[:, 1:]

    def predict(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return latents

    def rollout(self, context: torch.Tensor, actions: torch.Tensor, steps: int) -> torch.Tensor:
        return context[:, -1:].expand(-1, steps, -1, -1)


def test_the_changes_are_split_into_task_changes_and_tool_only_changes():
    """Clips whose latent moves 1.0 where the task changes (whatever the tools do), 0.5 where only the tool does, 0
    elsewhere: the copying model's error is exactly that move in each subset."""
    tasks = [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    tools = [[0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0]]
    labels = torch.cat([torch.nn.functional.one_hot(torch.tensor(tasks), 2),
                        torch.nn.functional.one_hot(torch.tensor(tools), 2)], -1).float()  # (C, S, 4)
    task_change = torch.tensor(tasks).diff(dim=1) != 0
    tool_change = torch.tensor(tools).diff(dim=1) != 0
    moves = torch.where(task_change, 1.0, torch.where(tool_change, 0.5, 0.0))  # (C, S - 1)
    latents = torch.cat([torch.zeros(3, 1), moves.cumsum(1)], 1)[:, :, None, None].expand(-1, -1, 2, 4)
    row = ablation.scores(CopyModel(), latents, labels, torch.tensor([1, 2, 0]))
    assert row["task_changes"] == task_change.sum() == 2
    assert row["tools_changes"] == (tool_change & ~task_change).sum() == 5
    assert row["own_task_change"] == pytest.approx(1.0) and row["own_tools_change"] == pytest.approx(0.5)
    assert row["ratio_task_change"] == row["ratio_tools_change"] == pytest.approx(1.0)


def test_case_memory_scores_the_step_before_a_removed_tool_came_in_against_a_step_with_it_in_view():
    """One clip, an arm (USM1, options x / none) and the task (a / b / Other): the tool is in from step 2 to 5 and
    removed after 5, where the view of step 1 comes back; the task goes a -> b after step 1 and back to a after 4.
    The copying model's error at a transition is how far the latent moves; the memory is exact where the tool goes."""
    memory = load_benchmark("case_memory")
    groups = [("USM1", [0]), ("task", [1, 2])]
    arm = [None, None, 0, 0, 0, 0, None, None]
    task = [0, 0, 1, 1, 1, 0, 0, 0]
    actions = torch.zeros(8, 3)
    for step in range(8):
        if arm[step] is not None:
            actions[step, 0] = 1
        actions[step, 1 + task[step]] = 1
    options = step_options(actions, groups)  # as the script takes them
    assert options.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [0, 0], [1, 0], [1, 0]]
    latents = torch.arange(8.0)[:, None, None].repeat(1, 2, 1) * torch.tensor([1.0, 3.0])[None, :, None]  # (S, N, D)
    latents[6] = latents[1]  # the tissue under the tool, as before it came in
    rows = []
    for t in range(7):
        rows += memory.transition_records(CopyModel(), latents, actions, options, t, context=3, groups=groups)
    kinds = [kind for kind, _ in rows]
    assert kinds == ["no change", "a tool installed", "the task changes (no memory in the clip)", "no change",
                     "no change", "the task changes", "a tool removed", "no change"]
    removed = rows[kinds.index("a tool removed")][1]
    move = (latents[5] - latents[6]).abs().mean().item()  # tokens 1 and 3 apart per step: |5 - 1| and |15 - 3|
    assert removed[:2] == [pytest.approx(move), pytest.approx(move)]  # the copy misses by the move
    assert removed[2] == 0 and removed[3] == 0  # the memory (step 1) is the next latent
    control = (latents[3] - latents[6]).abs().mean().item()  # the middle of the tool's run, (2 + 5) // 2
    assert removed[4] == pytest.approx(min(control, move)) and removed[4] > 0
    assert removed[5] == 4  # step 1 remembered at step 5
    task_change = rows[kinds.index("the task changes")][1]  # b -> a after step 4: task a last at step 1, control 3
    assert task_change[2] == pytest.approx((latents[1] - latents[5]).abs().mean().item())
    assert task_change[4] == pytest.approx(torch.minimum((latents[4] - latents[5]).abs().mean(-1),
                                                         (latents[3] - latents[5]).abs().mean(-1)).mean().item())
    summary = memory.summarise(rows)
    assert summary["no change"][0] == 4 and np.isnan(summary["no change"][1][2])
    assert summary["a tool removed"] == (1, pytest.approx(removed))


def test_task_change_tokens_finds_each_anatomy_in_the_encoder_s_view():
    """The generator's anatomy discs, cropped as the builder and the V-JEPA 2 preprocessing crop them, onto the 4 x 4
    tokens of a 64-pixel crop: Range of motion in the middle, Rectal artery/vein at the lower left, Other nowhere."""
    tokens = load_benchmark("task_change_tokens")
    middle = tokens.anatomy_coverage(0, 64, 16).view(4, 4)
    assert middle[1:3, 1:3].min() > 0.99 and middle[0, 0] == middle[0, 3] == middle[3, 0] == middle[3, 3] == 0
    vessel = tokens.anatomy_coverage(1, 64, 16).view(4, 4)
    assert vessel[2:, 0].min() > 0.9 and vessel[:2].max() < 0.05 and vessel[:, 2:].max() == 0
    assert tokens.anatomy_coverage(len(tokens._TASK_ANATOMY), 64, 16).max() == 0  # Other shows no anatomy
    kinds = tokens.token_kinds(0, 1, 64, 16, coverage=0.25).view(4, 4)  # Range of motion -> Rectal artery/vein
    assert kinds.tolist() == [[2, 2, 2, 2], [2, 1, 1, 2], [0, 0, 1, 1], [0, 0, 1, 2]]


def test_task_change_tokens_scores_each_kind_of_token_and_the_unchanged_transitions():
    """Two clips of 3 steps whose latent moves by the task's option at every transition (ShiftModel's world, off by
    0.1 with the true actions) and, where clip 0's task changes, by 1 more on the tokens the old anatomy leaves: the
    own error is 0.9 there and 0.1 everywhere else, and clip 0 scored with clip 1's labels misses by 1.1 before the
    change."""
    tokens = load_benchmark("task_change_tokens")
    options = torch.tensor([[0, 0, 1], [1, 1, 1]])  # task per step: clip 0 goes Range of motion -> Rectal artery/vein
    labels = torch.nn.functional.one_hot(options, 2).float()
    assert torch.equal(tokens.step_tasks(labels, ["task/Range of motion", "task/Rectal artery/vein"]), options)
    kinds = tokens.token_kinds(0, 1, 64, 16, coverage=0.25)  # (16,)
    moves = options[:, 1:, None].float().expand(-1, -1, 16).clone()  # (C, S - 1, N)
    moves[0, 1] += (kinds == 1).float()
    latents = torch.cat([torch.zeros(2, 1, 16), moves.cumsum(1)], 1)[..., None].expand(-1, -1, -1, 2)
    model = ShiftModel()
    model.config = SimpleNamespace(encoder_config=SimpleNamespace(crop_size=64, patch_size=16))
    summary = tokens.scores(model, latents, labels, options, torch.tensor([1, 0]), coverage=0.25)
    assert summary["the new anatomy"] == (4, [pytest.approx(0.1), pytest.approx(0.1), pytest.approx(1.0)])
    assert summary["the old anatomy only"] == (5, [pytest.approx(0.9), pytest.approx(0.9), pytest.approx(2.0)])
    assert summary["neither"] == (7, [pytest.approx(0.1), pytest.approx(0.1), pytest.approx(1.0)])
    # Unchanged: clip 0's first transition (its partner's option 1 misses by 1.1) and clip 1's two (0.9, then 0.1).
    assert summary["no change"] == (48, [pytest.approx(0.1), pytest.approx(0.7), pytest.approx(2 / 3)])
    with pytest.raises(SystemExit, match="no task/"):
        tokens.step_tasks(labels, ["USM1/a", "USM1/b"])

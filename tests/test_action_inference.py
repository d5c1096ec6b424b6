"""The evaluation's action inference (scripts/evaluate_surgical_model.py): the planned actions between held-out
moments scored against the labels, next to copying the last context action and to chance."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, TINY_PREDICTOR
from training_surgical_wm.evaluation import swap_partners


SPEC = ["arm/grasper", "arm/scissors", "task/cut", "task/suture", "task/clip"]
GROUPS = {"arm": [0, 1], "task": [2, 3, 4]}  # 3 and 4 options with none
NUM_STEPS, CONTEXT = 6, 3


def one_hot_actions(options: np.ndarray) -> torch.Tensor:
    """Per-step actions `(clips, steps, 5)` from each step's option per group `(clips, steps, 2)` (last: none)."""
    actions = torch.zeros(*options.shape[:2], len(SPEC))
    for index, dims in enumerate(GROUPS.values()):
        for option, dim in enumerate(dims):
            actions[..., dim] += torch.from_numpy(options[..., index] == option).float()
    return actions


def persistent_options(rng: np.random.Generator, clips: int) -> np.ndarray:
    """Options that mostly stay from step to step (a change in about one transition in three per group)."""
    options = np.zeros((clips, NUM_STEPS, len(GROUPS)), dtype=np.int64)
    for index, dims in enumerate(GROUPS.values()):
        options[:, 0, index] = rng.integers(len(dims) + 1, size=clips)
        for step in range(1, NUM_STEPS):
            change = rng.random(clips) < 0.35
            options[:, step, index] = np.where(change, rng.integers(len(dims) + 1, size=clips),
                                               options[:, step - 1, index])
    return options


def actions_split(actions: torch.Tensor):
    import datasets

    features = datasets.Features({"actions": datasets.Array2D((NUM_STEPS, len(SPEC)), "float32")})
    return datasets.Dataset.from_dict({"actions": actions.numpy()}, features=features)


@pytest.fixture(scope="module")
def explained_clips():
    """A tiny world model and clips whose every step is the model's prediction from the CONTEXT steps before it under
    the labelled actions (paired with transitions as the model pairs them): from a context of CONTEXT steps the
    labelled actions reach each goal exactly, so the planner's answer is known. Returns the model, the scored clips, their options per step and the training clips' options."""
    from conftest import tiny_config
    from modeling_surgical_wm import SurgicalWorldModel

    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config(action_dim=len(SPEC), action_spec=SPEC, normalize_latents=False)).eval()
    with torch.no_grad():  # not the zero output of a new predictor, which ignores the actions
        torch.nn.init.trunc_normal_(model.predictor.output_proj.weight, std=model.config.initializer_range)
    rng = np.random.default_rng(5)
    options = persistent_options(rng, 10)
    actions = one_hot_actions(options)
    config = model.config
    latents = torch.randn(len(options), 1, config.tokens_per_step, config.latent_dim)
    with torch.no_grad():
        for step in range(NUM_STEPS - 1):  # from the last CONTEXT steps, as the planner sees them
            first = max(0, step + 1 - CONTEXT)
            paired = model.transition_actions(actions[:, first : step + 2])  # transitions first -> ... -> step + 1
            following = model.predict(latents[:, first:], paired)[:, -1:]
            latents = torch.cat([latents, following], dim=1)
    clips = [{"latents": latents[index], "actions": actions[index], "sample_id": torch.tensor(index)}
             for index in range(len(options))]
    return model, clips, options, persistent_options(rng, 30)


def test_planned_actions_copy_last_and_chance_are_what_the_labels_say(explained_clips, capsys):
    from evaluate_surgical_model import action_inference

    model, clips, options, train_options = explained_clips
    args = SimpleNamespace(action_inference_moments=1000, action_inference_context=CONTEXT,
                           action_inference_horizon=1, action_inference_samples=48, action_inference_iterations=3,
                           action_inference_prior="uniform", action_inference_seen_only=False,
                           action_inference_readout="best", seed=0, batch_size=len(clips), num_workers=0)
    scored = actions_split(one_hot_actions(options))
    indices = list(range(len(clips)))
    section = action_inference(args, model, scored, indices, clips, actions_split(one_hot_actions(train_options)),
                               torch.device("cpu"))
    assert "moments planned in" in capsys.readouterr().out

    # Every start with 3 steps up to it and one after it: steps 2, 3 and 4 of every clip; with the default pairing
    # the transition from the start takes the labels of the step after it, the last context transition the start's.
    assert model.config.action_pairing == "next"
    assert "force at step t + 1" in section["pairing"]
    starts = [(clip, start) for clip in indices for start in range(CONTEXT - 1, NUM_STEPS - 1)]
    assert section["moments"] == section["moments_drawn"] == section["moments_possible"] == len(starts) == 30
    for index, name in enumerate(GROUPS):
        labels = np.array([options[clip, start + 1, index] for clip, start in starts])
        last = np.array([options[clip, start, index] for clip, start in starts])
        changes = labels != last
        assert 0 < changes.sum() < len(labels)  # the test sees both kinds of transition
        train_labels = train_options[:, 1:, index].flatten()  # every training transition's label
        prevalence = np.bincount(train_labels, minlength=len(GROUPS[name]) + 1) / len(train_labels)
        group = section["groups"][name]
        assert group["options"] == [SPEC[dim].split("/")[1] for dim in GROUPS[name]] + ["none"]
        for subset, mask in (("overall", np.ones(len(labels), dtype=bool)), ("at_changes", changes)):
            values = group[subset]
            assert values["transitions"] == mask.sum()
            assert values["copy_last"] == pytest.approx((labels[mask] == last[mask]).mean(), abs=1e-12)
            assert values["chance"] == pytest.approx(sum(prevalence[option] * (labels[mask] == option).mean()
                                                         for option in range(len(prevalence))), abs=1e-12)
            assert values["planned"] == 1.0, (name, subset)  # the labels explain every goal exactly
            # and so does the energy alone: every other option of the group, the rest labelled, misses the goal
            assert values["identified"] == 1.0, (name, subset)
            assert values["one_of_options"] == 1 / (len(GROUPS[name]) + 1)
            assert values["options_below"] == 0.0 and values["options_below_at_random"] == len(GROUPS[name]) / 2
        assert group["at_changes"]["copy_last"] == 0.0
    energy = section["energy"]
    assert energy["labelled"] < 1e-5 and energy["inferred"] <= energy["labelled"] + 1e-6

    # The teacher-forced L1 of every transition after a clip's first, under its own actions and under its swap
    # partner's (the split names no case: each clip is its own video), split by whether its labels differ from the
    # transition's before.
    latents, actions = torch.stack([clip["latents"] for clip in clips]), one_hot_actions(options)
    partners = torch.from_numpy(swap_partners(indices, seed=0))
    assert (partners != torch.arange(len(clips))).all()
    with torch.no_grad():
        own = (model.predict(latents[:, :-1], actions[:, 1:]) - latents[:, 1:]).abs().mean((2, 3))[:, 1:]
        swapped = (model.predict(latents[:, :-1], actions[partners][:, 1:]) - latents[:, 1:]).abs().mean((2, 3))
    changed = torch.from_numpy((options[:, 2:] != options[:, 1:-1]).any(-1))  # transition t takes the labels at t + 1
    for key, mask in (("with_change", changed), ("without_change", ~changed)):
        values = section["swapped_over_own"][key]
        assert values["transitions"] == mask.sum() > 0
        assert values["own_l1"] == pytest.approx(own[mask].mean().item(), rel=1e-5)
        assert values["ratio"] == pytest.approx((swapped[:, 1:][mask].mean() / own[mask].mean()).item(), rel=1e-5)
    overall = section["swapped_over_own"]["overall"]
    assert overall["transitions"] == own.numel()
    assert overall["ratio"] == pytest.approx((swapped[:, 1:].mean() / own.mean()).item(), rel=1e-5)
    move = (latents[:, 2:] - latents[:, 1:-1]).abs().mean((2, 3))  # copying the step before
    assert overall["latent_move"] == pytest.approx(move.mean().item(), rel=1e-5)

    # The same by group: where its option changes from "none", to "none" or between two of its options.
    before, after = torch.from_numpy(options[:, 1:-1]), torch.from_numpy(options[:, 2:])
    kinds_seen = 0
    for index, (name, dims) in enumerate(GROUPS.items()):
        moved, none = before[..., index] != after[..., index], len(dims)
        for key, mask in (("from_none", moved & (before[..., index] == none)),
                          ("to_none", moved & (after[..., index] == none)),
                          ("between_options", moved & (before[..., index] != none) & (after[..., index] != none))):
            values = section["swapped_over_own"]["by_group"][name][key]
            assert values["transitions"] == mask.sum()
            if mask.any():
                kinds_seen += 1
                assert values["own_l1"] == pytest.approx(own[mask].mean().item(), rel=1e-5)
                assert values["ratio"] == pytest.approx((swapped[:, 1:][mask].mean() / own[mask].mean()).item(),
                                                        rel=1e-5)
                assert values["latent_move"] == pytest.approx(move[mask].mean().item(), rel=1e-5)
            else:
                assert values["ratio"] is None
    assert kinds_seen >= 4  # the fixture's labels change in most ways


def test_chance_reads_the_config_s_action_prior_and_recounts_only_without_one(explained_clips, monkeypatch):
    """Training writes the option counts into `config.action_prior`: the evaluation reads them (per transition, as the
    model pairs labels with transitions) instead of counting the training labels again; an export without a prior
    recounts, and both counts agree on the same labels."""
    import evaluate_surgical_model
    from evaluate_surgical_model import action_inference, prior_option_counts, train_option_counts
    from planning_surgical_wm import empirical_action_prior

    model, clips, options, train_options = explained_clips
    groups = model.config.categorical_groups()[0]
    train_split = actions_split(one_hot_actions(train_options))
    recounted = train_option_counts(model, train_split, groups)
    assert prior_option_counts(model.config, groups) is None  # the fixture's model records no prior
    written = empirical_action_prior(one_hot_actions(train_options), groups, SPEC)
    for pairing, steps in (("next", slice(1, None)), ("current", slice(None, -1))):
        counts = prior_option_counts(SimpleNamespace(action_prior=written, action_pairing=pairing), groups)
        for index, (_, dims) in enumerate(groups):
            expected = np.bincount(train_options[:, steps, index].flatten(), minlength=len(dims) + 1)
            np.testing.assert_array_equal(counts[index], expected)
            if pairing == model.config.action_pairing:
                np.testing.assert_array_equal(recounted[index], expected)

    # A prior of other labels than the training split's: the report's prevalence is the prior's, never recounted.
    other = persistent_options(np.random.default_rng(9), 30)
    monkeypatch.setattr(model.config, "action_prior", empirical_action_prior(one_hot_actions(other), groups, SPEC))

    def recount(*args, **kwargs):
        raise AssertionError("the training labels were counted again although the config holds them")

    monkeypatch.setattr(evaluate_surgical_model, "train_option_counts", recount)
    args = SimpleNamespace(action_inference_moments=4, action_inference_context=CONTEXT, action_inference_horizon=1,
                           action_inference_samples=8, action_inference_iterations=1,
                           action_inference_prior="transition", action_inference_seen_only=False,
                           action_inference_readout="best", seed=0, batch_size=len(clips), num_workers=0)
    section = action_inference(args, model, actions_split(one_hot_actions(options)), list(range(len(clips))), clips,
                               train_split, torch.device("cpu"))
    assert section["train_prevalence_from"].startswith("config.action_prior")
    for index, (name, dims) in enumerate(groups):
        labels = other[:, 1:, index].flatten()
        prevalence = np.bincount(labels, minlength=len(dims) + 1) / len(labels)
        assert not np.allclose(prevalence, recounted[index] / recounted[index].sum())  # the two sources differ
        np.testing.assert_allclose(section["groups"][name]["train_prevalence"], prevalence, rtol=0, atol=1e-12)


def test_the_planner_starts_from_the_prior_the_section_names(explained_clips, capsys):
    """A predictor that ignores its actions gives every candidate the same energy, so the plan is the first candidate
    drawn. From training statistics in which no option ever changes (`--action_inference_prior transition`) that is
    the last context action in every moment, so the planned accuracy is copy-last's; from uniform options it is not.
    A model without training statistics plans from uniform options, and the section says so. The energy alone, which
    needs no prior, identifies no option of such a model."""
    import copy

    from evaluate_surgical_model import action_inference
    from planning_surgical_wm import empirical_action_prior

    model, clips, options, _ = explained_clips
    blind = copy.deepcopy(model)
    with torch.no_grad():
        blind.predictor.output_proj.weight.zero_()
        blind.predictor.output_proj.bias.zero_()
    steady = np.array([[arm, task] for arm in range(3) for task in range(4)])[:, None].repeat(NUM_STEPS, 1)
    train = one_hot_actions(steady)  # every combination, none ever changing
    scored = actions_split(one_hot_actions(options))

    def section(prior: str, statistics: dict | None) -> dict:
        blind.config.action_prior = statistics
        args = SimpleNamespace(action_inference_moments=1000, action_inference_context=CONTEXT,
                               action_inference_horizon=1, action_inference_samples=8, action_inference_iterations=1,
                               action_inference_prior=prior, action_inference_seen_only=False,
                               action_inference_readout="best", seed=0, batch_size=len(clips), num_workers=0)
        return action_inference(args, blind, scored, list(range(len(clips))), clips, actions_split(train),
                                torch.device("cpu"))

    statistics = empirical_action_prior(train, blind.config.action_groups(blind.config.spec_groups(SPEC)), SPEC)
    chained, uniform = section("transition", statistics), section("uniform", statistics)
    assert chained["planner"]["action_prior"] == "transition" and uniform["planner"]["action_prior"] == "uniform"
    for name in GROUPS:
        assert chained["groups"][name]["overall"]["planned"] == chained["groups"][name]["overall"]["copy_last"] < 1
        assert chained["groups"][name]["at_changes"]["planned"] == 0.0
        # Whatever the prior, an energy that ignores the actions ties every option: the energy alone finds none.
        for result in (chained, uniform):
            assert result["groups"][name]["overall"]["identified"] == 0.0
            # every option ties: half of the others count below the labelled one, as at random
            assert result["groups"][name]["overall"]["options_below"] == len(GROUPS[name]) / 2
    assert any(uniform["groups"][name]["overall"]["planned"] != uniform["groups"][name]["overall"]["copy_last"]
               for name in GROUPS)
    capsys.readouterr()
    assert section("transition", None)["planner"]["action_prior"] == "uniform"
    assert "the model's config has no training action statistics" in capsys.readouterr().out


def test_the_moments_are_a_seeded_choice_of_the_scored_clips_starts():
    from evaluate_surgical_model import draw_moments

    every = draw_moments(5, NUM_STEPS, 1000, CONTEXT, 2, seed=0)
    assert every == [(clip, start) for clip in range(5) for start in (2, 3)]
    chosen = draw_moments(5, NUM_STEPS, 4, CONTEXT, 2, seed=0)
    assert chosen == draw_moments(5, NUM_STEPS, 4, CONTEXT, 2, seed=0) and len(set(chosen)) == 4
    assert set(chosen) < set(every) and chosen == sorted(chosen)
    assert chosen != draw_moments(5, NUM_STEPS, 4, CONTEXT, 2, seed=1)


def run_evaluation(args: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "evaluate_surgical_model.py"),
                           *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TQDM_DISABLE": "1"})


@pytest.mark.slow
def test_the_evaluation_reports_and_plots_the_action_inference(surgvu_sample, tiny_vjepa2_dir, tmp_path_factory):
    """On the SurgVU sample, with a world model that has SurgVU's action spec: the section, its figure and its
    printed headline; none of it with 0 moments."""
    from dataset_surgvu import action_names
    from load_vjepa2_pretrained import main as build

    out = tmp_path_factory.mktemp("action-inference")
    (out / "spec.json").write_text(json.dumps(action_names()))
    sizes = [str(item) for name, value in TINY_PREDICTOR.items() for item in (f"--{name}", value)]
    assert build(["--encoder", tiny_vjepa2_dir, "--save_path", str(out / "model"), "--action_spec",
                  str(out / "spec.json"), *sizes]) == 0
    data = ["--checkpoint", out / "model", "--data_root", surgvu_sample[0], "--dataset_cache_dir", out / "arrow",
            "--num_workers", 0, "--device", "cpu"]
    result = run_evaluation([*data, "--output", out / "report.json", "--plots", out / "plots",
                             "--max_clips", 4, "--action_inference_moments", 12, "--action_inference_samples", 24,
                             "--action_inference_iterations", 2])
    assert result.returncode == 0, result.stderr[-3000:]
    section = json.loads((out / "report.json").read_text())["action_inference"]
    assert section["moments"] == section["moments_drawn"] == 12 < section["moments_possible"]
    assert list(section["groups"]) == ["USM1", "USM2", "USM3", "USM4", "task"]
    for group in section["groups"].values():
        assert group["overall"]["transitions"] == 12
        assert 0 <= group["overall"]["planned"] <= 1 and 0 <= group["overall"]["chance"] <= 1
        assert group["at_changes"]["copy_last"] in (None, 0.0)  # wrong by definition at a change, horizon 1
    assert (out / "plots" / "action_inference.png").stat().st_size > 0
    assert "Action inference: 12 held-out moments" in result.stdout
    assert "teacher-forced L1, swapped over own actions" in result.stdout

    result = run_evaluation([*data, "--output", out / "off.json", "--max_clips", 2, "--action_inference_moments", 0])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "action_inference" not in json.loads((out / "off.json").read_text())
    assert "Action inference" not in result.stdout

    result = run_evaluation([*data, "--output", out / "bad.json", "--action_inference_context", 1])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--action_inference_context at least 2" in result.stderr


def test_swap_partners_are_clips_of_other_videos_drawn_evenly_by_the_seed():
    """The swapped-actions test gives each clip the actions of a clip of another video (neighbouring clips of one video
    share most of their labels), each such clip as likely, reproducibly by seed; a split of one video draws among its
    other clips, a single clip has none."""
    videos = ["case_a"] * 5 + ["case_b"] * 3 + ["case_c"] * 2
    draws = np.stack([swap_partners(videos, seed) for seed in range(2000)])  # (seeds, clips)
    assert all(videos[partner] != videos[clip] for row in draws for clip, partner in enumerate(row))
    assert np.allclose(np.bincount(draws[:, 0], minlength=10)[5:] / 2000, 1 / 5, atol=0.03)  # clip 0: cases b and c
    assert np.allclose(np.bincount(draws[:, 9], minlength=10)[:8] / 2000, 1 / 8, atol=0.03)  # clip 9: cases a and b
    assert (swap_partners(videos, 3) == swap_partners(videos, 3)).all()
    assert (swap_partners(videos, 3) != swap_partners(videos, 4)).any()
    one_video = np.stack([swap_partners(["case_a"] * 4, seed) for seed in range(2000)])
    assert (one_video != np.arange(4)).all()
    assert np.allclose(np.bincount(one_video[:, 1], minlength=4)[[0, 2, 3]] / 2000, 1 / 3, atol=0.04)
    assert swap_partners(["case_a"], 0).tolist() == [-1] and swap_partners([], 0).tolist() == []

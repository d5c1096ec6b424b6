"""scripts/plan.py: the actions a tiny world model infers over a span of a SurgVU-format video, next to the labels."""

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, TINY_PREDICTOR


pytestmark = pytest.mark.slow

SEARCH = ["--num_samples", "16", "--iterations", "2", "--top_k", "4", "--seed", "3", "--device", "cpu"]
CEM = [*SEARCH, "--context_steps", "1"]  # spans from 0.5 s: a context of the start frame alone
GROUPS = ["USM1", "USM2", "USM3", "USM4", "task"]
ROW = re.compile(r"^\s*(?:(\d+)\s{2,}(\S+ -> \S+)\s{2,})?(USM\d|task)\s{2,}(.+?)\s{2,}(.+?)(?:\s{2,}(yes|no))?$")


@pytest.fixture(scope="module")
def world_model(tiny_vjepa2_dir, tmp_path_factory):
    """A tiny world model with SurgVU's action spec, as scripts/load_vjepa2_pretrained.py --action_spec builds it:
    its config names no discrete_action_groups, so plan.py derives them."""
    from dataset_surgvu import action_names
    from load_vjepa2_pretrained import main as build

    out = tmp_path_factory.mktemp("plan-world-model")
    (out / "spec.json").write_text(json.dumps(action_names()))
    sizes = [str(item) for name, value in TINY_PREDICTOR.items() for item in (f"--{name}", value)]
    assert build(["--encoder", tiny_vjepa2_dir, "--save_path", str(out / "model"), "--action_spec",
                  str(out / "spec.json"), *sizes]) == 0
    assert json.loads((out / "model" / "config.json").read_text()).get("discrete_action_groups") is None
    return out / "model"


@pytest.fixture(scope="module")
def span(surgvu_sample):
    """Part 2 of the two-part case, 0.5 s to 1.5 s (4 steps at 4 fps): inside a task segment that starts in part 1,
    so the labels are right only if the parts are placed on the case timeline as the builder places them."""
    root, manifest = surgvu_sample
    case = manifest["cases"]["case_001"]
    part_start = case["parts"][0]["num_frames"] / manifest["fps"]
    (segment,) = [s for s in case["tasks"] if s["start"] < part_start + 0.5 and s["stop"] > part_start + 1.5]
    assert segment["start"] < part_start  # it spans the two parts
    video = root / case["parts"][1]["path"]
    return {"root": root, "video": video, "start": 0.5, "goal": 1.5, "task": segment["task"],
            "duration": case["parts"][1]["num_frames"] / manifest["fps"]}


def plan_script(args, timeout=300):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "plan.py"), *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def printed_steps(stdout: str) -> dict:
    """{step: {group: (inferred, labelled, match)}} from the printed table."""
    lines = stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("step  from -> to"))
    steps, current = {}, None
    for line in lines[header + 1:]:
        if not line.strip():
            break  # the end of the table
        match = ROW.match(line)
        assert match is not None, line
        if match is None:
            continue
        step, _, group, inferred, labelled, mark = match.groups()
        if step is not None:
            current = int(step)
        steps.setdefault(current, {})[group] = (inferred, labelled, mark)
    return steps


@pytest.fixture(scope="module")
def planned(world_model, span, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    args = ["--checkpoint", world_model, "--video", span["video"], "--start", span["start"], "--goal", span["goal"],
            *CEM]
    runs = [plan_script([*args, "--json", out / f"plan{index}.json"]) for index in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    return runs, [json.loads((out / f"plan{index}.json").read_text()) for index in range(2)]


def test_the_table_puts_inferred_and_labelled_surgvu_names_side_by_side(planned, span):
    from dataset_surgvu import TASK_CLASSES, TOOL_CLASSES

    (run, _), (result, _) = planned
    assert re.search(r"step\s+from -> to \(s\)\s+group\s+inferred\s+labelled\s+match", run.stdout)
    steps = printed_steps(run.stdout)
    assert sorted(steps) == [1, 2, 3, 4] and result["horizon"] == 4
    for step, groups in steps.items():
        assert list(groups) == GROUPS
        for group, (inferred, labelled, mark) in groups.items():
            names = (TASK_CLASSES if group == "task" else TOOL_CLASSES) + ("none",)
            assert inferred in names and labelled in names, (step, group, inferred, labelled)
            assert mark == ("yes" if inferred == labelled else "no")
        assert groups["task"][1] == span["task"]  # the labelled task, across the part boundary
    # The JSON holds what was printed.
    for step in result["steps"]:
        for group in GROUPS:
            assert steps[step["step"]][group][:2] == (step["inferred"][group], step["labelled"][group])
    for group in GROUPS:
        yes = sum(steps[step][group][2] == "yes" for step in steps)
        entry = result["matches"][group]
        assert (entry["matches"], entry["steps"]) == (yes, 4)
        assert entry["chance"] == pytest.approx(1 / 9 if group == "task" else 1 / 13)
        assert re.search(rf"^\s+{group}\s+{yes}/4\s+\(rate {yes / 4:.2f}, chance {entry['chance']:.2f}\)$", run.stdout,
                         flags=re.MULTILINE)
    # The model's config names no groups: derived from the action_spec prefixes, said once.
    assert result["groups_derived_from_action_spec"] is True
    assert run.stderr.count("using the action_spec prefixes ['USM1', 'USM2', 'USM3', 'USM4', 'task']") == 1


@pytest.fixture(scope="module")
def builder_rows(span, tmp_path_factory):
    """Every clip row the dataset builder makes of the sample."""
    from dataset_surgvu import load_surgvu

    dataset = load_surgvu(span["root"], cache_dir=tmp_path_factory.mktemp("arrow"))
    return [row for split in dataset.values() for row in split]


def test_frames_and_labels_are_the_dataset_builders(planned, span, builder_rows):
    _, (result, _) = planned
    (row,) = [row for row in builder_rows
              if row["video_path"].endswith(span["video"].name) and result["frame_indices"]["context"][0]
              in row["frame_indices"]]
    position = row["frame_indices"].index(result["frame_indices"]["context"][0])
    assert result["frame_indices"]["goal"] == [row["frame_indices"][position + 4]]
    assert result["crop_box"] == row["crop_box"]
    assert result["start_used"] == pytest.approx(row["timestamps"][position])
    assert result["goal_used"] == pytest.approx(row["timestamps"][position + 4])
    # One frame per step, and a new model pairs a step with the labels at its end: the labelled action of planned
    # step i is the builder's action at frame position + i + 1.
    assert result["action_pairing"] == "next"
    np.testing.assert_array_equal(np.array(result["labelled_actions"]),
                                  np.array(row["actions"][position + 1:position + 5]))


def test_the_labelled_actions_follow_the_models_action_pairing(world_model, builder_rows, tmp_path):
    """Over a span where the labels change, each planned step is compared with the labels at its end for a new model
    and with those at its start for an export without `action_pairing` (trained that way, and loaded so)."""
    row, position = next((row, position) for row in builder_rows if row["has_labels"]
                         for position in range(len(row["actions"]) - 4)
                         if row["actions"][position:position + 4] != row["actions"][position + 1:position + 5])
    older = tmp_path / "older"
    shutil.copytree(world_model, older)
    config = json.loads((older / "config.json").read_text())
    del config["action_pairing"]
    (older / "config.json").write_text(json.dumps(config))
    for checkpoint, pairing, offset in ((world_model, "next", 1), (older, "current", 0)):
        out = tmp_path / f"{pairing}.json"
        run = plan_script(["--checkpoint", checkpoint, "--video", row["video_path"], "--start",
                           row["timestamps"][position], "--goal", row["timestamps"][position + 4], *CEM, "--json", out])
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["action_pairing"] == pairing and f"(action_pairing '{pairing}')" in run.stdout
        np.testing.assert_array_equal(np.array(result["labelled_actions"]),
                                      np.array(row["actions"][position + offset:position + offset + 4]))
    assert len(result["actions"]) == 4 and all(len(action) == 56 for action in result["actions"])


def test_energies_are_finite_and_the_best_so_far_never_rises(planned):
    (run, _), (result, _) = planned
    best, elite, so_far = (result[key] for key in ("energy_per_iteration", "elite_energy_per_iteration",
                                                   "best_energy_so_far"))
    assert len(best) == len(elite) == len(so_far) == 2
    assert all(math.isfinite(value) for value in best + elite + so_far + [result["energy"], result["labelled_energy"]])
    assert all(later <= earlier for earlier, later in zip(so_far, so_far[1:]))
    assert all(low <= mean + 1e-7 for low, mean in zip(best, elite))
    assert result["energy"] == pytest.approx(so_far[-1]) and result["energy"] > 0
    printed = re.findall(r"iteration\s+(\d+): ([\d.]+)  ([\d.]+)  ([\d.]+)", run.stdout)
    assert [int(index) for index, *_ in printed] == [1, 2]
    for (_, *values), expected in zip(printed, zip(best, elite, so_far)):
        assert [float(value) for value in values] == pytest.approx(expected, abs=1e-5)
    assert f"energy of the labelled actions: {result['labelled_energy']:.5f}" in run.stdout


def test_the_same_seed_gives_the_same_plan(planned):
    runs, results = planned
    tables = [run.stdout.split("\nplan: ")[0] for run in runs]
    assert tables[0] == tables[1] and "energy of the inferred actions" in tables[0]
    assert results[0] == results[1]


def test_config_groups_plan_as_the_derived_ones(world_model, span, tmp_path, capsys, caplog):
    """A model whose config names its groups (as train_hf.py's do) plans exactly as the derived groups do."""
    from plan import main

    caplog.set_level(logging.INFO, logger="plan")
    named = tmp_path / "named"
    shutil.copytree(world_model, named)
    config = json.loads((named / "config.json").read_text())
    config["discrete_action_groups"] = GROUPS
    (named / "config.json").write_text(json.dumps(config))
    results = []
    for checkpoint in (world_model, named):
        caplog.clear()
        assert main(["--checkpoint", str(checkpoint), "--video", str(span["video"]), "--start", "0.5", "--goal",
                     "1.25", *CEM, "--json", str(tmp_path / "plan.json")]) == 0
        derived = "using the action_spec prefixes" in caplog.text
        results.append((json.loads((tmp_path / "plan.json").read_text()), derived))
    capsys.readouterr()
    (first, first_derived), (second, second_derived) = results
    assert (first_derived, second_derived) == (True, False)
    assert first["horizon"] == 3 and first["steps"] == second["steps"]
    assert first["energy_per_iteration"] == second["energy_per_iteration"]


def test_the_fps_comes_from_the_config_else_from_the_runs_trainer_state(world_model, span, tmp_path, capsys, caplog):
    """The model's config gives the steps' fps; an export from before the config held one falls back to the run's
    data options in trainer_state.json, and says so."""
    from plan import main

    caplog.set_level(logging.INFO, logger="plan")
    caplog.set_level(logging.INFO, logger="training_surgical_wm.loading")  # where the time base is read and logged
    with_fps, older = tmp_path / "with_fps", tmp_path / "older"
    for directory, config_fps, run_fps in ((with_fps, 2.0, 8.0), (older, None, 2.0)):
        shutil.copytree(world_model, directory)
        config = json.loads((directory / "config.json").read_text())
        config.pop("fps", None)
        if config_fps is not None:
            config["fps"] = config_fps
        (directory / "config.json").write_text(json.dumps(config))
        (directory / "trainer_state.json").write_text(json.dumps({"training_arguments": {"fps": run_fps}}))
    results = {}
    for directory in (with_fps, older):
        caplog.clear()
        assert main(["--checkpoint", str(directory), "--video", str(span["video"]), "--start", "0.5", "--goal", "1.5",
                     *CEM, "--json", str(tmp_path / "plan.json")]) == 0
        results[directory.name] = json.loads((tmp_path / "plan.json").read_text()), caplog.text
    capsys.readouterr()
    result, log = results["with_fps"]
    assert result["fps"] == 2.0 and result["fps_from"].startswith("the model's config")
    assert result["horizon"] == 2  # 0.5 s to 1.5 s at 2 fps
    assert "one step: 1 frame(s) at 2 fps (fps from the model's config" in log and "has no fps" not in log
    result, log = results["older"]
    assert result["fps"] == 2.0 and result["fps_from"] == str(older / "trainer_state.json")
    assert f"the model's config has no fps (an export from before it held one): the run's fps from {older}" in log
    assert result["steps"] == results["with_fps"][0]["steps"]  # the same time base: the same plan


def test_a_case_without_labels_prints_the_inferred_actions_only(world_model, surgvu_sample, capsys):
    from plan import main

    root, manifest = surgvu_sample
    (unlabelled,) = [case for case in manifest["cases"].values() if not case["labeled"]]
    video = root / unlabelled["parts"][0]["path"]
    assert main(["--checkpoint", str(world_model), "--video", str(video), "--start", "1", "--goal", "1.5",
                 *SEARCH]) == 0
    stdout = capsys.readouterr().out
    assert "context: 4 step(s) ending at 1.00 s" in stdout  # the default context: the second before the start
    assert "labels: none (no tools.csv and tasks.csv for" in stdout
    steps = printed_steps(stdout)
    assert sorted(steps) == [1, 2] and all(list(groups) == GROUPS for groups in steps.values())
    assert all(labelled == "-" and mark is None for groups in steps.values() for _, labelled, mark in groups.values())
    assert "matches per group" not in stdout and "energy of the inferred actions" in stdout


def test_bad_inputs_fail_clearly(world_model, span, tmp_path):
    from plan import main

    def error(**changes) -> str:
        options = {"checkpoint": world_model, "video": span["video"], "start": 0.5, "goal": 1.5, **changes}
        argv = [item for name, value in options.items() for item in (f"--{name}", str(value))]
        with pytest.raises(SystemExit) as raised:
            main([*CEM, *argv])  # options given here come last, and win
        return str(raised.value)

    message = error(start=1.5, goal=1.0)
    assert message.startswith("error: ") and "--goal (1 s) must come after --start (1.5 s)" in message
    message = error(goal=span["duration"] + 5)
    assert str(span["video"]) in message and f"(duration {span['duration']:.2f} s)" in message
    missing = tmp_path / "case_009_video_part_001.mp4"
    assert error(video=missing) == f"error: {missing}: no such video file"
    not_a_video = tmp_path / "case_009_video_part_002.mp4"
    not_a_video.write_bytes(b"not an mp4")
    message = error(video=not_a_video)
    assert str(not_a_video) in message and "not a readable video" in message
    assert "shorter than one step (1 frame(s) at 4 fps = 0.25 s)" in error(start=1.0, goal=1.1)
    assert "no room for 3 context step(s)" in error(start=0.25, context_steps=3)
    assert error(checkpoint=tmp_path / "nowhere") == f"error: {tmp_path / 'nowhere'}: no such checkpoint directory"
    bare = tmp_path / "bare"
    shutil.copytree(world_model, bare)
    config = json.loads((bare / "config.json").read_text())
    config.pop("action_spec")
    (bare / "config.json").write_text(json.dumps(config))
    assert "has no action_spec" in error(checkpoint=bare)


def test_the_json_names_the_preset_and_the_prior_and_a_seen_only_plan_keeps_to_seen_combinations(world_model, span,
                                                                                                  tmp_path, capsys):
    """A preset's values reach the search unless a flag overrides them; a prior written into the config (as
    train_hf.py writes it) with --seen_only proposes only combinations of tools and task seen in training."""
    import torch

    from dataset_surgvu import action_names
    from configuration_surgical_wm import SurgicalWorldModelConfig
    from plan import main
    from planning_surgical_wm import empirical_action_prior

    spec = action_names()
    groups = SurgicalWorldModelConfig.from_pretrained(world_model).action_groups(GROUPS)
    seen = torch.zeros(1, 2, len(spec))  # two steps: USM1 needle driver and the first task, then nothing
    seen[0, 0, [groups[0][1][0], groups[4][1][0]]] = 1.0
    prior = empirical_action_prior(seen, groups, spec)
    with_prior = tmp_path / "with-prior"
    shutil.copytree(world_model, with_prior)
    config = json.loads((with_prior / "config.json").read_text())
    (with_prior / "config.json").write_text(json.dumps({**config, "action_prior": prior}))
    common = ["--video", str(span["video"]), "--start", "0.5", "--goal", "1.25", "--context_steps", "1", "--device",
              "cpu", "--json", str(tmp_path / "plan.json")]

    assert main(["--checkpoint", str(with_prior), *common, "--preset", "vjepa2_ac_mpc_utils", "--iterations", "2",
                 "--num_samples", "12"]) == 0
    printed, result = capsys.readouterr().out, json.loads((tmp_path / "plan.json").read_text())
    assert {key: result["settings"][key] for key in ("preset", "num_samples", "iterations", "top_k", "momentum",
                                                     "std_momentum", "action_prior", "seen_only", "horizon",
                                                     "readout", "unbiased_std")} == {
        "preset": "vjepa2_ac_mpc_utils", "num_samples": 12, "iterations": 2, "top_k": 10, "momentum": 0.25,
        "std_momentum": 0.95, "action_prior": "uniform", "seen_only": False, "horizon": 3, "readout": "mean",
        "unbiased_std": True}
    assert "CEM (vjepa2_ac_mpc_utils): 12 samples, 2 iterations, top 10" in printed and "mean readout" in printed
    assert "(spread 0.95, unbiased)" in printed
    assert "action prior: uniform" in printed

    assert main(["--checkpoint", str(with_prior), *common, *SEARCH, "--action_prior", "marginal", "--seen_only",
                 "--readout", "mean"]) == 0
    printed, result = capsys.readouterr().out, json.loads((tmp_path / "plan.json").read_text())
    assert (result["settings"]["action_prior"], result["settings"]["seen_only"]) == ("marginal", True)
    assert result["settings"]["preset"] == "surgical_wm" and result["settings"]["readout"] == "mean"
    assert "action prior: marginal, combinations seen in training only" in printed
    first_task = spec[groups[4][1][0]].split("/", 1)[1]
    allowed = [{"USM1": "needle driver", "USM2": "none", "USM3": "none", "USM4": "none", "task": first_task},
               {group: "none" for group in GROUPS}]
    assert all(step["inferred"] in allowed for step in result["steps"])

    with pytest.raises(SystemExit) as raised:
        main(["--checkpoint", str(world_model), *common, *SEARCH, "--action_prior", "transition"])
    message = str(raised.value)
    assert message.startswith(f"error: {world_model}") and "need the training data's action statistics" in message
    assert "\n" not in message


def test_a_model_with_a_state_token_plans_from_the_given_states_by_a_state_rule(world_model, span, tmp_path, capsys):
    """SurgVU has no states: a model with a state token takes the context's from --states, and its candidates' states
    follow their actions by --state_rule (or the preset's); without them, one line says what is missing."""
    from plan import main

    stated = tmp_path / "stated"
    shutil.copytree(world_model, stated)
    config = json.loads((stated / "config.json").read_text())
    (stated / "config.json").write_text(json.dumps({**config, "state_dim": 2}))
    (tmp_path / "states.json").write_text(json.dumps([[0.1, 0.2], [0.3, 0.4]]))
    common = ["--video", str(span["video"]), "--start", "0.5", "--goal", "1.0", *SEARCH, "--context_steps", "2",
              "--json", str(tmp_path / "plan.json")]

    def error(*argv) -> str:
        with pytest.raises(SystemExit) as raised:
            main([*common, *argv])
        return str(raised.value)

    assert "give the context's states with --states" in error("--checkpoint", str(stated))
    assert "--preset surgical_wm has no state rule: give --state_rule" in error(
        "--checkpoint", str(stated), "--states", str(tmp_path / "states.json"))
    (tmp_path / "short.json").write_text(json.dumps([[0.1, 0.2]]))
    message = error("--checkpoint", str(stated), "--states", str(tmp_path / "short.json"), "--state_rule", "hold")
    assert message == (f"error: {tmp_path / 'short.json'}: expected a list of 2 lists (one per context step) of 2 "
                       "numbers (the model's state_dim)")
    assert "no state token (state_dim=0)" in error("--checkpoint", str(world_model), "--state_rule", "hold")
    assert main(["--checkpoint", str(stated), *common, "--states", str(tmp_path / "states.json"), "--state_rule",
                 "hold"]) == 0
    printed, result = capsys.readouterr().out, json.loads((tmp_path / "plan.json").read_text())
    assert result["settings"]["state_rule"] == "hold" and "by the 'hold' rule" in printed
    assert math.isfinite(result["energy"]) and math.isfinite(result["labelled_energy"])

"""Stage 2: train_hf.py --dataset mmor continues a stage-1 (SurgVU) world model on MM-OR video; the evaluation's
MM-OR section (phase and next-action probes, sterility-breach detection supervised and by surprise)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import evaluate_surgical_model
from conftest import REPO_ROOT, train


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stages(train_inputs, tmp_path_factory):
    """A stage-1 run on the SurgVU sample, then stage 2 from its best/ on a synthetic MM-OR sample."""
    from dataset_mmor.synthetic import make_synthetic_mmor

    root = tmp_path_factory.mktemp("stages")
    stage1, stage2, mmor = root / "stage1", root / "stage2", root / "mmor"
    result = train([*train_inputs, "--output_dir", str(stage1), "--num_epochs", "1", "--max_train_steps", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    make_synthetic_mmor(mmor, seed=0)
    result = train(["--dataset", "mmor", "--data_root", str(mmor), "--dataset_cache_dir", str(root / "arrow"),
                    "--pretrained_checkpoint", str(stage1 / "best"), "--output_dir", str(stage2), "--device", "cpu",
                    "--report_to", "none", "--num_workers", "0", "--batch_size", "2", "--num_epochs", "1",
                    "--max_train_steps", "3", "--learning_rate", "1e-3", "--seed", "7"])
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "stage1": stage1, "stage2": stage2, "mmor": mmor, "log": result.stderr}


def test_stage_two_continues_a_stage_one_run_on_mmor(stages):
    from dataset_mmor import get_mmor_action_spec
    from transformers import AutoModel

    stage1, stage2 = stages["stage1"], stages["stage2"]
    # SurgVU's 56 action dimensions (tools per arm, task) become MM-OR's 21 (robot phase, next action).
    assert "the action embedding starts from scratch" in stages["log"]
    assert "latent cache:" in stages["log"]
    model = AutoModel.from_pretrained(str(stage2 / "best"), trust_remote_code=True).eval()
    assert model.config.action_spec == get_mmor_action_spec() and model.config.action_dim == 21
    # The encoder stayed frozen through both stages; the predictor's body came from stage 1 and trained on.
    before, after = load_file(str(stage1 / "best" / "model.safetensors")), load_file(
        str(stage2 / "best" / "model.safetensors"))
    encoder = [name for name in before if name.startswith("encoder.")]
    assert encoder and all(torch.equal(before[name], after[name]) for name in encoder)
    assert not torch.equal(before["predictor.latent_proj.weight"], after["predictor.latent_proj.weight"])
    assert after["predictor.action_proj.weight"].shape[1] == 21
    state = json.loads((stage2 / "best" / "trainer_state.json").read_text())
    assert state["training_arguments"]["dataset"] == "mmor" and state["global_step"] == 3
    assert os.path.isdir(stage2 / "latent_cache" / "test")  # the official test takes are encoded for evaluation
    with torch.no_grad():
        crop = model.config.encoder_config.crop_size
        output = model(torch.randn(1, 8, 3, crop, crop), torch.zeros(1, 8, 21))
    assert torch.isfinite(output.loss)


def test_the_evaluation_has_an_mmor_section(stages, tmp_path):
    from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, precision_score, recall_score,
                                 roc_auc_score)

    data = ["--dataset", "mmor", "--data_root", str(stages["mmor"]), "--dataset_cache_dir",
            str(stages["root"] / "arrow-stride1"), "--clip_stride", "1", "--num_workers", "0"]
    report_path, plots = tmp_path / "report.json", tmp_path / "plots"
    result = subprocess.run(  # no --split: MM-OR scores its test takes by default
        [sys.executable, "scripts/evaluate_surgical_model.py", "--checkpoint", str(stages["stage2"] / "best"), *data,
         "--train_probes", "--probe_epochs", "2", "--probe_dir", str(tmp_path / "probes"),
         "--output", str(report_path), "--plots", str(plots), "--device", "cpu"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    # The three probes read one latent cache under --probe_dir: the clips are encoded once, not once per probe.
    assert (tmp_path / "probes" / "latent_cache").is_dir()
    assert not [target for target in ("phase", "next_action", "breach")
                if (tmp_path / "probes" / target / "latent_cache").exists()]
    report = json.loads(report_path.read_text())
    manifest = json.loads((stages["mmor"] / "synthetic_manifest.json").read_text())
    mmor = report["mmor"]
    assert report["split"] == mmor["split"] == "test" and mmor["calibration_split"] == "validation"
    assert mmor["takes"] == ["004_PKA"]  # the official test take of the sample
    # One record per timepoint that ends a clip of 8: every timepoint but the take's first 7.
    assert mmor["timepoints"] == manifest["takes"]["004_PKA"]["timepoints"] - 7
    # The figures again, from scores recomputed here with the saved models and scikit-learn.
    test_scores = recomputed_scores(stages, tmp_path / "probes", "test")
    validation_scores = recomputed_scores(stages, tmp_path / "probes", "validation")
    test_breach = test_scores["breach"]
    for target in ("phase", "next_action"):
        pooled = mmor[target]["pooled"]
        labels = test_scores[target]
        keep = labels >= 0  # null next actions are skipped
        predictions = test_scores[f"{target}_scores"].argmax(-1)
        assert pooled["timepoints"] == keep.sum()
        assert pooled["accuracy"] == pytest.approx(accuracy_score(labels[keep], predictions[keep]), abs=1e-9)
        assert "macro avg" in pooled["classification_report"]
        assert set(mmor[target]["per_take"]) == {"004_PKA"}
    assert mmor["next_action"]["skipped_null"] == (test_scores["next_action"] < 0).sum() > 0
    breach = mmor["breach"]
    assert breach["positives"] == test_breach.sum() == sum(manifest["takes"]["004_PKA"]["breach"][7:]) > 0
    for way, score in (("supervised", "breach_scores"), ("surprise", "surprise")):
        # The threshold is the F1-best one among the validation takes' scores (ties: the highest), applied as is.
        threshold = f1_best_threshold(validation_scores[score], validation_scores["breach"])
        assert breach[way]["threshold"] == pytest.approx(threshold, rel=1e-5), way
        assert (breach[way]["calibration_split"], breach[way]["scored_split"]) == ("validation", "test")
        scores, values = test_scores[score], breach[way]["pooled"]
        predicted = scores >= np.float32(breach[way]["threshold"])
        expected = {"precision": precision_score(test_breach, predicted, zero_division=0),
                    "recall": recall_score(test_breach, predicted, zero_division=0),
                    "f1": f1_score(test_breach, predicted, zero_division=0),
                    "auroc": roc_auc_score(test_breach, scores), "auprc": average_precision_score(test_breach, scores)}
        for key, value in expected.items():
            assert values[key] == pytest.approx(value, abs=1e-6), (way, key)
        assert values["predicted_positives"] == predicted.sum()
        assert "breach" in breach[way]["classification_report"]
    assert "surprise" in breach["surprise"]["note"]
    assert (plots / "surprise_over_time.png").read_bytes()[:4] == b"\x89PNG"
    assert "sterility breach" in result.stdout
    table = result.stdout[result.stdout.index("sterility breach"):].splitlines()
    assert "calibrated on" in table[1] and all(line.split()[-2:] == ["validation", "test"] for line in table[2:4])


def test_breach_thresholds_are_fitted_on_the_validation_takes_only():
    """Scored takes whose own F1-best thresholds lie elsewhere: the report applies the validation takes' thresholds,
    names both splits, and its F1 is the test takes' F1 at those thresholds."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)

    def records(takes: list[str], shift: float) -> dict:
        breach = (rng.random(60) < 0.2).astype(np.int64)
        breach[:2] = 1, -1  # a breach, and a timepoint without a label (left out)
        surprise = (breach + rng.normal(0, 0.6, 60) + shift).astype(np.float32)
        probability = 1 / (1 + np.exp(-(2 * breach + rng.normal(0, 1.5, 60) - shift)))
        return {"take": [takes[i % len(takes)] for i in range(60)], "breach": breach, "surprise": surprise,
                "breach_scores": np.stack([1 - probability, probability], 1).astype(np.float32)}

    validation, test = records(["002_PKA"], 0.0), records(["004_PKA", "005_PKA"], 0.5)
    breach = evaluate_surgical_model.mmor_section(test, validation, "test")["breach"]
    keep_validation, keep_test = validation["breach"] >= 0, test["breach"] >= 0
    labels = test["breach"][keep_test]
    for way, scores in (("supervised", lambda r: r["breach_scores"][:, 1]), ("surprise", lambda r: r["surprise"])):
        fitted = f1_best_threshold(scores(validation)[keep_validation], validation["breach"][keep_validation])
        on_test = f1_best_threshold(scores(test)[keep_test], labels)
        assert breach[way]["threshold"] == pytest.approx(fitted, abs=1e-6) and abs(fitted - on_test) > 1e-3, way
        assert (breach[way]["calibration_split"], breach[way]["scored_split"]) == ("validation", "test")
        f1 = f1_score(labels, scores(test)[keep_test] >= breach[way]["threshold"], zero_division=0)
        assert breach[way]["pooled"]["f1"] == pytest.approx(f1, abs=1e-9), way
        assert set(breach[way]["per_take"]) == {"004_PKA", "005_PKA"}


def test_scoring_the_takes_the_thresholds_are_calibrated_on_is_refused():
    with pytest.raises(SystemExit) as stopped:  # refused before any model or data is read
        evaluate_surgical_model.main(["--dataset", "mmor", "--split", "validation", "--checkpoint", "unused",
                                      "--test_data", "unused", "--device", "cpu"])
    message = str(stopped.value.code)
    assert message.startswith("error: --split validation: ") and "\n" not in message
    assert "calibrated on the validation takes" in message and "--split test" in message


def f1_best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The evaluation's documented calibration rule, by brute force over the distinct scores: the threshold whose
    `score >= threshold` has the best F1 of the breach class, the highest of those that tie."""
    from sklearn.metrics import f1_score

    f1 = {float(value): f1_score(labels, scores >= value, zero_division=0) for value in np.unique(scores)}
    best = max(f1.values())
    return max(value for value, score in f1.items() if score >= best - 1e-12)


@torch.no_grad()
def recomputed_scores(stages: dict, probe_dir, split: str) -> dict[str, np.ndarray]:
    """Per clip of `split` (every timepoint after a take's first 7 ends one): the labels at the clip's last
    timepoint, the world model's surprise there (L1 of that step predicted from the ones before) and the trained
    probes' probabilities, computed from the saved models without the evaluation script."""
    from dataset_mmor import MMORClipTransform, load_mmor
    from dataset_surgvu import SurgVUClips
    from transformers import AutoModel, AutoModelForVideoClassification

    world_model = AutoModel.from_pretrained(str(stages["stage2"] / "best"), trust_remote_code=True).eval()
    probes = {target: AutoModelForVideoClassification.from_pretrained(str(probe_dir / target / "best"),
                                                                      trust_remote_code=True).eval()
              for target in ("phase", "next_action", "breach")}
    rows = load_mmor(str(stages["mmor"]), clip_stride=1, cache_dir=str(stages["root"] / "arrow-stride1"))[split]
    clips = SurgVUClips(rows, MMORClipTransform(crop_size=world_model.config.encoder_config.crop_size))
    found = {name: [] for name in ("phase", "next_action", "breach", "surprise",
                                   *(f"{target}_scores" for target in probes))}
    for batch in torch.utils.data.DataLoader(clips, batch_size=8, shuffle=False):
        latents = world_model.encode(batch["pixel_values_videos"])  # (B, T, N, D), one step per timepoint
        predicted = world_model.predict(latents[:, :-1], world_model.transition_actions(batch["actions"]))
        found["surprise"].append((predicted[:, -1] - latents[:, -1]).abs().mean((1, 2)))
        for name in ("phase", "next_action", "breach"):
            found[name].append(batch[name][:, -1])
        for target, probe in probes.items():
            found[f"{target}_scores"].append(probe(latents=latents).logits.softmax(-1))
    found = {name: torch.cat(values).numpy() for name, values in found.items()}
    found["breach_scores"] = found["breach_scores"][:, 1]  # the probability of a breach
    return found

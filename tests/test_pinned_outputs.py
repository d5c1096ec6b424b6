"""Pinned outputs: the numbers the project computes, fixed by seeds on the tiny model, so that moving code between
files cannot change them unnoticed.

Pinned: `encode`, `predict`, `rollout` (cached and not), `forward`'s losses, `energy` and `plan` of a tiny world
model whose weights are drawn per parameter name (not in construction order, so that a module moved to another file
draws the same weights); one training step of `train_hf.py`, one probe step of `scripts/train_probe.py` and the
evaluation report of `scripts/evaluate_surgical_model.py` on the synthetic SurgVU sample. Each value must match
`tests/pinned_outputs.json` within 1e-6 (relative and absolute). A change that moves a number on purpose regenerates
the file and says why in its commit:

    PIN_OUTPUTS=write .venv/bin/python -m pytest tests/test_pinned_outputs.py
"""

import json
import math
import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, tiny_config


PINNED = Path(__file__).with_name("pinned_outputs.json")
TOLERANCE = 1e-6


def fingerprint(tensor: torch.Tensor) -> list[float]:
    """A tensor's numbers in short: its mean absolute value, its root mean square (both far from 0 unless the tensor
    is, so a relative tolerance applies), its first six and its last value, in float64."""
    values = tensor.detach().double().flatten()
    return [values.abs().mean().item(), values.square().mean().sqrt().item(), *values[:6].tolist(),
            values[-1].item()]


def seeded_weights(model: torch.nn.Module) -> None:
    """Every parameter and buffer drawn from a generator seeded by its name: the same weights however the modules
    are built. Layer-norm weights around 1, everything else around 0."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            values = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * 0.05
            if "norm" in name and name.endswith("weight"):
                values += 1.0
            tensor.copy_(values.to(tensor.dtype))


def model_outputs() -> dict:
    from modeling_surgical_wm import SurgicalWorldModel

    torch.set_num_threads(1)
    spec = [f"tool/{name}" for name in ("a", "b", "c")] + ["speed", "grip"]
    config = tiny_config(action_dim=5, state_dim=2, action_spec=spec, discrete_action_groups=["tool"],
                         use_mask_aux=True, rollout_steps=2)
    model = SurgicalWorldModel(config).eval()
    seeded_weights(model)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 4, 3, 32, 32, generator=generator)
    actions = torch.rand(2, 6, 5, generator=generator)
    states = torch.randn(2, 6, 2, generator=generator)
    outputs = {}
    with torch.no_grad():
        latents = model.encode(pixels)
        outputs["encode"] = fingerprint(latents)
        outputs["predict"] = fingerprint(model.predict(latents, actions, states))
        outputs["rollout_cached"] = fingerprint(model.rollout(latents[:, :2], actions, 3, states, use_cache=True))
        outputs["rollout_uncached"] = fingerprint(model.rollout(latents[:, :2], actions, 3, states, use_cache=False))
        token_mask = torch.rand(2, 3, latents.shape[2], generator=generator) < 0.5
        forward = model(pixel_values_videos=pixels, actions=actions[:, :4], states=states[:, :4],
                        token_mask=token_mask, return_rollout_error=True)
        for name in ("loss", "teacher_forcing_loss", "rollout_loss", "contrastive_loss", "mask_loss",
                     "rollout_error", "copy_context_error"):
            outputs[f"forward_{name}"] = fingerprint(getattr(forward, name))
        goal = latents[:, -1]
        candidates = torch.rand(2, 7, 2, 5, generator=generator)
        outputs["energy"] = fingerprint(model.energy(latents[:, :2], goal, candidates, context_actions=actions[:, :1],
                                                     states=states[:, :3]))
    plan = model.plan(latents[:, :2], goal, horizon=2, num_samples=24, iterations=3, top_k=4,
                      generator=torch.Generator().manual_seed(1), context_actions=actions[:, :1], states=states[:, :3])
    for name in ("actions", "energy", "energy_per_iteration", "elite_energy_per_iteration", "action_mean"):
        outputs[f"plan_{name}"] = fingerprint(getattr(plan, name))
    return outputs


def run(command: list[str]) -> None:
    import subprocess

    result = subprocess.run([sys.executable, *map(str, command)], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


def weights_fingerprint(path: Path, prefix: str) -> list[float]:
    from safetensors.torch import load_file

    weights = load_file(str(path))
    return fingerprint(torch.cat([weights[name].flatten().double() for name in sorted(weights)
                                  if name.startswith(prefix)]))


def pipeline_outputs(data_root: Path, world_model_dir: str, work: Path) -> dict:
    """One optimizer step of train_hf.py, one probe step, and the evaluation report with that probe."""
    data = ["--data_root", data_root, "--dataset_cache_dir", work / "arrow", "--num_workers", "0", "--device", "cpu"]
    run(["train_hf.py", *data, "--pretrained_checkpoint", world_model_dir, "--output_dir", work / "run",
         "--batch_size", "2", "--learning_rate", "1e-3", "--warmup_epochs", "0", "--seed", "7", "--num_epochs", "1",
         "--max_train_steps", "1", "--report_to", "none", "--use_mask_aux"])
    state = json.loads((work / "run" / "final" / "trainer_state.json").read_text())
    outputs = {"train_step_predictor": weights_fingerprint(work / "run" / "final" / "model.safetensors", "predictor."),
               "train_step_history": state["history"]}
    run(["scripts/train_probe.py", "--world_model", work / "run" / "final", "--target", "task", *data,
         "--cache_dir", work / "probe_cache", "--output_dir", work / "probe", "--num_epochs", "1",
         "--max_train_steps", "1", "--batch_size", "4", "--probe_num_layers", "1", "--report_to", "none",
         "--seed", "3"])
    probe_state = json.loads((work / "probe" / "final" / "trainer_state.json").read_text())
    outputs["probe_step_head"] = weights_fingerprint(work / "probe" / "final" / "model.safetensors", "pooler.")
    outputs["probe_step_history"] = probe_state["history"]
    run(["scripts/evaluate_surgical_model.py", "--checkpoint", work / "run" / "final", *data,
         "--task_probe", work / "probe" / "final", "--output", work / "report.json", "--batch_size", "3",
         "--action_inference_moments", "0"])
    # The report names each video by its path: the sample's folder is the test's own.
    report = json.loads((work / "report.json").read_text().replace(str(data_root), "DATA"))
    outputs["report"] = numbers(report)
    return outputs


def numbers(value, path: str = "") -> dict:
    """Every number of a JSON report, by its path."""
    found = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(numbers(item, f"{path}/{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.update(numbers(item, f"{path}/{index}"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        found[path] = float(value)
    return found


def mismatches(expected, actual, path: str = "") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or expected.keys() != actual.keys():
            missing = sorted(set(expected) - set(actual or {}))
            extra = sorted(set(actual or {}) - set(expected))
            return [f"{path}: keys differ (missing {missing[:5]}, new {extra[:5]})"]
        return [line for key in expected for line in mismatches(expected[key], actual[key], f"{path}/{key}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            return [f"{path}: {len(expected)} values pinned, got {actual!r}"]
        return [line for index, (a, b) in enumerate(zip(expected, actual))
                for line in mismatches(a, b, f"{path}/{index}")]
    if isinstance(expected, float) and math.isnan(expected):
        return [] if isinstance(actual, float) and math.isnan(actual) else [f"{path}: pinned NaN, got {actual}"]
    if not math.isclose(expected, actual, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
        return [f"{path}: pinned {expected!r}, got {actual!r}"]
    return []


def check_or_write(section: str, actual: dict) -> None:
    """Compares `actual` with the pinned section, or with PIN_OUTPUTS=write stores it there instead."""
    pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
    if os.environ.get("PIN_OUTPUTS") == "write":
        pinned[section] = actual
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        return
    assert section in pinned, f"{PINNED.name} has no {section!r} section (PIN_OUTPUTS=write pytest {__file__})"
    found = mismatches(pinned[section], actual)
    assert not found, "\n".join(found[:20] + found[-10:])


def test_model_outputs_are_pinned():
    check_or_write("model", model_outputs())


@pytest.mark.slow
def test_training_probe_and_evaluation_are_pinned(surgvu_sample, world_model_dir, tmp_path):
    check_or_write("pipeline", pipeline_outputs(surgvu_sample[0], world_model_dir, tmp_path))


def test_a_changed_number_is_caught():
    """The comparison itself can fail: a value off by 1e-5 relative is reported with its path."""
    pinned = {"a": [1.0, 2.0], "b": {"c": 3.0}}
    assert mismatches(pinned, {"a": [1.0, 2.0], "b": {"c": 3.0}}) == []
    assert mismatches(pinned, {"a": [1.0, 2.00002], "b": {"c": 3.0}}) == ["/a/1: pinned 2.0, got 2.00002"]
    assert mismatches(pinned, {"a": [1.0], "b": {"c": 3.0}})

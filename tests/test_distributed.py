"""Two real CPU processes (gloo): validation that does not depend on the process count, and FSDP2 sharding with an
export that reloads through AutoModel. The work itself is in tests/distributed_checks.py."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CHECKS = os.path.join(REPO_ROOT, "tests", "distributed_checks.py")


def run_checks(args, processes, tmp_path):
    if processes == 1:
        command = [sys.executable, CHECKS, *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   os.path.join(REPO_ROOT, "configs", "accelerate", "cpu_2proc.yaml"), CHECKS, *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_validation_metrics_per_clip_are_the_same_on_one_and_two_processes(world_model_dir, surgvu_sample,
                                                                           train_inputs, tmp_path):
    root, _ = surgvu_sample
    cache = train_inputs[train_inputs.index("--dataset_cache_dir") + 1]
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"validation-{processes}.json"
        run_checks(["validation", world_model_dir, str(root), cache, str(out)], processes, tmp_path)
        results[processes] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert two["processes"] == 2
    # Every clip exactly once: the clip padded into the last batch of the 2-process run is dropped.
    assert sorted(one["sample_ids"]) == sorted(two["sample_ids"]) == list(range(5))
    for name in ("temporal_loss", "mask_loss", "rollout_error", "copy_context_error"):
        by_id = [dict(zip(result["sample_ids"], result["per_clip"][name])) for result in (one, two)]
        for sample_id in range(5):
            torch.testing.assert_close(torch.tensor(by_id[1][sample_id]), torch.tensor(by_id[0][sample_id]),
                                       atol=1e-5, rtol=1e-5, msg=f"{name} of clip {sample_id}")
    assert min(one["per_clip"]["mask_loss"]) > 0  # the seeded mask really masked tokens


def test_fsdp2_on_two_cpu_processes_trains_and_exports_a_model_that_reloads(world_model_dir, tmp_path):
    run_checks(["fsdp2", world_model_dir, str(tmp_path)], 2, tmp_path)
    result = json.loads((tmp_path / "fsdp2.json").read_text())
    assert result["processes"] == 2
    assert result["sharded"] and result["local_share"] < 0.75  # each rank holds about half of every parameter
    assert len(result["losses"]) == 3 and all(math.isfinite(loss) for loss in result["losses"])
    assert result["same_keys"]
    assert any(name.startswith("predictor.") for name in result["moved"])  # training moved the predictor...
    assert not any(name.startswith("encoder.") for name in result["moved"])  # ...and not the frozen encoder
    assert result["reloaded_class"] == "SurgicalWorldModel"
    assert result["architectures"] == ["SurgicalWorldModel"]
    assert result["max_abs_difference"] < 1e-5  # the reloaded export predicts what the sharded model predicted

"""The Accelerate configs in configs/accelerate/: they load, `accelerate launch` reads them as intended, the FSDP
wrap classes exist in the model, and the 2-CPU-process config really starts two gloo processes."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import ComputeEnvironment, DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "accelerate"

# name -> (distributed_type, launcher flag that `accelerate launch` derives from the file, mixed precision)
EXPECTED = {
    "single_gpu": (DistributedType.NO, None, "bf16"),
    "multi_gpu_ddp": (DistributedType.MULTI_GPU, "multi_gpu", "bf16"),
    "multi_node": (DistributedType.MULTI_GPU, "multi_gpu", "bf16"),
    "fsdp_vitg": (DistributedType.FSDP, "use_fsdp", "bf16"),
    "deepspeed_zero2": (DistributedType.DEEPSPEED, "use_deepspeed", "bf16"),
    "cpu_2proc": (DistributedType.MULTI_GPU, "multi_gpu", "no"),
}
LAUNCHER_FLAGS = ("multi_gpu", "use_fsdp", "use_deepspeed", "cpu")


def config_path(name: str) -> Path:
    return CONFIG_DIR / f"{name}.yaml"


def launch_args(name: str):
    """What `accelerate launch --config_file <name>.yaml script.py` makes of the file, without launching."""
    args = launch_command_parser().parse_args(["--config_file", str(config_path(name)), "script.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    return args, defaults, mp_from_config


def test_every_config_is_expected_and_documented():
    found = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert found == set(EXPECTED), f"configs/accelerate has {sorted(found)}, the tests know {sorted(EXPECTED)}"
    readme = (CONFIG_DIR / "README.md").read_text()
    for name in EXPECTED:
        assert f"{name}.yaml" in readme, f"configs/accelerate/README.md does not mention {name}.yaml"
        head = config_path(name).read_text().split("compute_environment")[0]
        assert f"accelerate launch --config_file configs/accelerate/{name}.yaml" in head, (
            f"{name}.yaml should start with a comment showing its launch command"
        )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_launch_reads_it(name):
    config = load_config_from_file(str(config_path(name)))
    assert isinstance(config, ClusterConfig)
    distributed_type, flag, precision = EXPECTED[name]
    assert config.compute_environment == ComputeEnvironment.LOCAL_MACHINE
    assert config.distributed_type == distributed_type
    args, _, _ = launch_args(name)
    assert args.mixed_precision == precision
    for launcher_flag in LAUNCHER_FLAGS:
        assert bool(getattr(args, launcher_flag)) == (launcher_flag == flag), (
            f"{name}: accelerate launch sets {launcher_flag}={getattr(args, launcher_flag)}"
        )
    assert args.num_processes >= 1 and args.num_processes % args.num_machines == 0


def test_multi_node_has_the_placeholders_explained():
    config = load_config_from_file(str(config_path("multi_node")))
    assert config.num_machines > 1 and config.num_processes % config.num_machines == 0
    assert config.main_process_port not in (None, 0), "a port of 0 cannot be agreed on across nodes"
    text = config_path("multi_node").read_text()
    for placeholder in ("machine_rank", "main_process_ip", "main_process_port", "num_processes"):
        comments = [line for line in text.splitlines() if line.lstrip().startswith("#") and placeholder in line]
        assert comments, f"multi_node.yaml does not explain {placeholder} in a comment"


def _classes_in(path: Path) -> dict[str, ast.ClassDef]:
    tree = ast.parse(path.read_text())
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def _no_split_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_no_split_modules" for t in node.targets):
            names.update(ast.literal_eval(node.value))
    return names


def test_fsdp_wraps_the_model_layers_and_shards_checkpoints():
    args, _, _ = launch_args("fsdp_vitg")
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "1"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "true"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    assert env["FSDP_USE_ORIG_PARAMS"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    wrapped = set(env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(","))
    assert wrapped == {"VJEPA2Layer", "SurgicalWorldModelPredictorLayer"}

    # The classes must exist where the model gets them, and be the model's declared no-split modules.
    vjepa2 = Path(importlib.util.find_spec("transformers.models.vjepa2.modeling_vjepa2").origin)
    assert "VJEPA2Layer" in _classes_in(vjepa2)
    modeling = ROOT / "modeling_surgical_wm.py"
    assert "SurgicalWorldModelPredictorLayer" in _classes_in(modeling)
    assert wrapped == _no_split_modules(modeling), "FSDP wrap classes and _no_split_modules disagree"


def test_deepspeed_is_zero2_bf16_and_leaves_accumulation_to_the_script():
    args, defaults, mp_from_config = launch_args("deepspeed_zero2")
    # what `accelerate launch` does right before the DeepSpeed launcher
    fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["ACCELERATE_GRADIENT_CLIPPING"] == "1.0"
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env, (
        "a gradient_accumulation_steps in the DeepSpeed config would override train_hf.py's flag"
    )


RANK_SCRIPT = """
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

accelerator = Accelerator()
total = accelerator.reduce(torch.tensor([accelerator.process_index + 1.0]), reduction="sum")
# One file per rank: two ranks printing to one stdout can interleave their lines.
Path(sys.argv[1], f"rank{accelerator.process_index}.json").write_text(json.dumps({
    "rank": accelerator.process_index,
    "world": accelerator.num_processes,
    "type": str(accelerator.distributed_type),
    "backend": accelerator.state.backend,
    "device": accelerator.device.type,
    "sum": total.item(),
}))
accelerator.wait_for_everyone()
# As train_hf.py does: a gloo process that exits without destroying its process group can abort at
# interpreter shutdown ("terminate called without an active exception", SIGABRT), now and then.
accelerator.end_training()
"""


@pytest.mark.slow
def test_cpu_2proc_starts_two_gloo_processes(tmp_path):
    """The exact command from the top of cpu_2proc.yaml, with a script that all-reduces across the ranks."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--config_file", str(config_path("cpu_2proc")), str(script), str(tmp_path)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"launch failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert [r["rank"] for r in reports] == [0, 1], result.stdout
    for report in reports:
        assert report["world"] == 2
        assert report["type"] == "DistributedType.MULTI_CPU"
        assert report["backend"] == "gloo"
        assert report["device"] == "cpu"
        assert report["sum"] == 3.0  # (0 + 1) + (1 + 1): the processes really talk to each other

"""A Hub user without this repository: the saved folder alone must load through AutoModel and plan."""

import os
import shutil
import subprocess
import sys
import textwrap

import torch

from conftest import tiny_config

# The project's modules, which the venv's editable install (and a clone on sys.path) would otherwise provide.
PROJECT_MODULES = ("configuration_surgical_wm", "modeling_surgical_wm", "planning_surgical_wm", "losses_surgical_wm",
                   "train_hf", "dataset_surgvu", "dataset_mmor", "conftest", "scripts", "benchmarks")
# What the model files import relatively, and so what `save_pretrained` must copy next to them.
MODEL_FILES = ("configuration_surgical_wm.py", "modeling_surgical_wm.py", "planning_surgical_wm.py",
               "losses_surgical_wm.py")

USER_CODE = textwrap.dedent("""
    import importlib.abc
    import sys

    BLOCKED = set({blocked!r})

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in BLOCKED:
                raise ImportError(f"{{fullname}} is not available to a Hub user")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in sorted(BLOCKED):
        try:
            __import__(name)
        except ImportError:
            continue
        raise SystemExit(f"{{name}} can be imported: the check would prove nothing")

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained({folder!r}, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    config = model.config
    generator = torch.Generator().manual_seed(0)
    def latents(steps):
        values = torch.randn(1, steps, config.tokens_per_step, config.latent_dim, generator=generator)
        return torch.nn.functional.layer_norm(values, (config.latent_dim,))
    context, goal = latents(2), latents(1)
    output = model.plan(context, goal, horizon=2, num_samples=8, iterations=2, top_k=2,
                        generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(output.energy).all()
    print("energy", float(output.energy[0]))
""")


def test_a_saved_world_model_loads_and_plans_without_the_repository(tmp_path):
    from modeling_surgical_wm import SurgicalWorldModel

    torch.manual_seed(0)
    model = SurgicalWorldModel(tiny_config(action_spec=["USM1/a", "USM1/b", "grip"], discrete_action_groups=["USM1"]))
    model.register_for_auto_class("AutoModel")  # as train_hf's export does
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    for name in MODEL_FILES:
        assert (saved / name).is_file(), f"save_pretrained did not copy {name}: {sorted(os.listdir(saved))}"

    # A bare folder away from the repository, loaded from a working directory with nothing else in it.
    bare = tmp_path / "bare"
    shutil.copytree(saved, bare / "model")
    code = USER_CODE.format(blocked=PROJECT_MODULES, folder=str(bare / "model"))
    environment = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", code], cwd=bare, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "energy" in result.stdout

    with torch.no_grad():
        expected = model.plan(*_same_inputs(model.config), horizon=2, num_samples=8, iterations=2, top_k=2,
                              generator=torch.Generator().manual_seed(0)).energy
    assert abs(float(result.stdout.split("energy")[-1]) - float(expected[0])) < 1e-6


def _same_inputs(config):
    generator = torch.Generator().manual_seed(0)

    def latents(steps):
        values = torch.randn(1, steps, config.tokens_per_step, config.latent_dim, generator=generator)
        return torch.nn.functional.layer_norm(values, (config.latent_dim,))

    return latents(2), latents(1)

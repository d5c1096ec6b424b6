"""Checks that need several real processes, run by tests/test_distributed.py under `accelerate launch` (gloo, CPU).

    python tests/distributed_checks.py validation WORLD_MODEL DATA_ROOT ARROW_CACHE OUT.json
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml tests/distributed_checks.py validation ...
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml tests/distributed_checks.py fsdp2 MODEL OUT_DIR

`validation`: the training script's validation on the first clips of the sample's train split (a count that does not
divide evenly between processes); rank 0 writes the per-clip metrics by sample id.
`fsdp2`: shards the world model with torch's FSDP2 (`fully_shard` on a CPU mesh) as configs/accelerate/fsdp_vitg.yaml
wraps it (each of the model's `_no_split_modules` layers, then the root), trains a few steps, exports through the
training script's `export_model` (gathered on every rank, written by rank 0) and writes what rank 0 measured.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.export import export_model
from training_surgical_wm.world_model import validation_per_clip


VALIDATION_CLIPS = 5  # over 2 processes with batches of 2: the last batch is padded with repeated clips


def check_validation(world_model: str, data_root: str, arrow_cache: str, out: str) -> None:
    from dataset_surgvu import ClipTransform, SurgVUClips, load_surgvu

    accelerator = Accelerator(cpu=True)
    set_seed(0)  # the mask token is new (use_mask_aux): the same initial value on every rank and run
    model = SurgicalWorldModel.from_pretrained(world_model, use_mask_aux=True, mask_ratio=0.5)
    with accelerator.main_process_first():
        split = load_surgvu(data_root, cache_dir=arrow_cache)["train"].select(range(VALIDATION_CLIPS))
    clips = SurgVUClips(split, ClipTransform(crop_size=model.config.encoder_config.crop_size))
    model, loader = accelerator.prepare(model, DataLoader(clips, batch_size=2, shuffle=False))
    per_clip = validation_per_clip(accelerator, model, loader, seed=3)
    if accelerator.is_main_process:
        ids = per_clip.pop("sample_id").tolist()
        result = {"processes": accelerator.num_processes, "sample_ids": ids,
                  "per_clip": {name: values.tolist() for name, values in per_clip.items()}}
        Path(out).write_text(json.dumps(result))
    accelerator.wait_for_everyone()


def check_fsdp2(world_model: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    accelerator = Accelerator(cpu=True)
    set_seed(0)
    model = SurgicalWorldModel.from_pretrained(world_model)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    mesh = init_device_mesh("cpu", (accelerator.num_processes,))
    layers = [module for module in model.modules() if type(module).__name__ in model._no_split_modules]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = all(isinstance(parameter, DTensor) for parameter in model.parameters())
    local_share = sum(p.to_local().numel() for p in model.parameters()) / sum(p.numel() for p in model.parameters())

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(10 + accelerator.process_index)  # each rank its own data
    size, action_dim = model.config.encoder_config.crop_size, model.config.action_dim
    losses = []
    for _ in range(3):
        pixels, actions = torch.randn(2, 4, 3, size, size, generator=generator), torch.rand(2, 4, action_dim)
        loss = model(pixels, actions).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    model.eval()
    probe = torch.Generator().manual_seed(99)  # the same probe clip on every rank
    pixels, actions = torch.randn(2, 4, 3, size, size, generator=probe), torch.rand(2, 4, action_dim, generator=probe)
    with torch.no_grad():
        trained = model(pixels, actions).predicted_latents
    export = Path(out_dir) / "export"
    export_model(accelerator, model, export, {"global_step": 3}, "# FSDP2 export\n")

    if accelerator.is_main_process:
        from safetensors.torch import load_file
        from transformers import AutoModel

        reloaded = AutoModel.from_pretrained(export, trust_remote_code=True).eval()
        with torch.no_grad():
            again = reloaded(pixels, actions).predicted_latents
        saved = load_file(export / "model.safetensors")
        moved = [name for name in initial if not torch.equal(saved[name], initial[name])]
        result = {
            "processes": accelerator.num_processes,
            "sharded": sharded,
            "local_share": local_share,
            "losses": losses,
            "max_abs_difference": (again - trained).abs().max().item(),
            "same_keys": sorted(saved) == sorted(initial),
            "moved": moved,
            "reloaded_class": type(reloaded).__name__,
            "architectures": json.loads((export / "config.json").read_text()).get("architectures"),
        }
        (Path(out_dir) / "fsdp2.json").write_text(json.dumps(result))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"validation": check_validation, "fsdp2": check_fsdp2}[command](*arguments)

#!/usr/bin/env python
"""Is a fine-tuned world model's export the size of a frozen one's?

Both sides in one process, through train_hf.py's `export_model` (Accelerate on the CPU, random weights): a world model
with a frozen encoder, and the same world model with `freeze_encoder=False`, which also holds the encoder's EMA target
(what `--finetune_encoder` trains and its resumable checkpoints keep). Each is exported as train_hf.py exports `best/`
and `final/` (the fine-tuned one with its EMA target as the encoder, the default `--export_encoder target`), and, for
reference, the fine-tuned one's whole state dict, both encoders, as a checkpoint holds it. The first model is deleted
before the second is built. Prints the bytes of each `model.safetensors`; the last line `fine-tuned / frozen: N.NNNx`.

    .venv/bin/python benchmarks/bench_export_size.py [--preset vitl]   # ViT-L, the default 1024 x 24 predictor
    .venv/bin/python benchmarks/bench_export_size.py --tiny            # the demo's tiny encoder and predictor
"""

import argparse
import gc
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from configuration_surgical_wm import SurgicalWorldModelConfig
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.export import export_model


# The demo's tiny V-JEPA 2 (scripts/make_tiny_vjepa2.py) and its predictor.
TINY_ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "mlp_ratio": 2.0, "crop_size": 64,
                "patch_size": 16, "frames_per_clip": 16, "tubelet_size": 2}
DEMO_PREDICTOR = {"predictor_hidden_size": 96, "predictor_num_hidden_layers": 2, "predictor_num_attention_heads": 4}


def export_bytes(config: SurgicalWorldModelConfig, directory: Path, freeze_encoder: bool) -> dict[str, int]:
    """Exports a seeded model (the same weights on both sides) and returns the bytes of what it wrote."""
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    config.freeze_encoder = freeze_encoder
    model = accelerator.prepare(SurgicalWorldModel(config))
    name = "frozen" if freeze_encoder else "fine-tuned"
    export_model(accelerator, model, directory / name, {}, f"# {name}\n")
    sizes = {name: (directory / name / "model.safetensors").stat().st_size}
    if not freeze_encoder:
        both = directory / "both_encoders.safetensors"
        save_file({key: tensor.contiguous() for key, tensor in model.state_dict().items()}, str(both))
        sizes["fine-tuned, both encoders"] = both.stat().st_size
    del model, accelerator
    gc.collect()
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vitl", help="encoder size: vitl, vith, vitg, vitg384")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny encoder and predictor instead")
    parser.add_argument("--output_dir", default=None, help="where the exports go (default: a temporary directory)")
    args = parser.parse_args()
    overrides = {"encoder_config": TINY_ENCODER, **DEMO_PREDICTOR} if args.tiny else {}
    config = SurgicalWorldModelConfig.from_preset(args.preset, action_dim=56, **overrides)
    with tempfile.TemporaryDirectory(dir=args.output_dir) as directory:
        sizes = {}
        for freeze_encoder in (True, False):
            sizes.update(export_bytes(config, Path(directory), freeze_encoder))
    for name, size in sizes.items():
        print(f"{name}: {size:,} B ({size / 1e9:.3f} GB)")
    print(f"fine-tuned / frozen: {sizes['fine-tuned'] / sizes['frozen']:.3f}x")


if __name__ == "__main__":
    main()

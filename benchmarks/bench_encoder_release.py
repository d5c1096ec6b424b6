#!/usr/bin/env python
"""How much memory does training from a complete latent cache save by releasing the frozen encoder?

One side per process (peak memory is per process): a world model on a V-JEPA 2 encoder of `--preset`'s size with
random weights and the demo's predictor, prepared by Accelerate on the CPU as train_hf.py prepares it; with
`--release`, `release_encoder` (what train_hf.py calls once the cache is complete) then drops the encoder's weights.
Then `--steps` AdamW steps on random cached-latent batches, as a cached run trains. Prints the resident memory after
the model is built (and after the release), then the peak resident memory of the training steps alone: the kernel's
peak is reset before them (`/proc/self/clear_refs`, which also resets what `getrusage` and `/usr/bin/time` report).
Last line `training peak: N.NN GiB`.

    .venv/bin/python benchmarks/bench_encoder_release.py --preset vitg            # the encoder stays
    .venv/bin/python benchmarks/bench_encoder_release.py --preset vitg --release  # the encoder leaves
"""

import argparse
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator

from bench_utils import random_actions, random_latents
from configuration_surgical_wm import SurgicalWorldModelConfig
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.world_model import release_encoder


def resident_gib(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process, in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**20
    raise SystemExit(f"error: /proc/self/status has no {field}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vitg", help="encoder size: vitl, vith, vitg, vitg384")
    parser.add_argument("--release", action="store_true", help="release the encoder as a complete cache does")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = SurgicalWorldModelConfig.from_preset(args.preset, predictor_hidden_size=96, predictor_num_hidden_layers=2,
                                                  predictor_num_attention_heads=4, action_dim=56)
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(SurgicalWorldModel(config))
    encoder_parameters = sum(parameter.numel() for parameter in model.encoder.parameters())
    print(f"{args.preset} encoder {encoder_parameters / 1e6:.0f} M parameters; built: {resident_gib('VmRSS'):.2f} GiB "
          "resident")
    with tempfile.TemporaryDirectory() as directory:
        if args.release:
            release_encoder(accelerator, model, Path(directory) / "frozen_encoder.safetensors")
            print(f"released: {resident_gib('VmRSS'):.2f} GiB resident")
        optimizer = torch.optim.AdamW([parameter for parameter in model.parameters() if parameter.requires_grad])
        Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
        generator = torch.Generator().manual_seed(0)
        for _ in range(args.steps):
            latents = random_latents(config, generator, args.batch_size, 8)
            loss = model(latents=latents, actions=random_actions(config, generator, args.batch_size, 8)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    print(f"training peak: {resident_gib('VmHWM'):.2f} GiB")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""How much memory does training from a complete latent cache save by releasing the frozen encoder?

Both sides in one process, on the same weights and the same batches: a world model on a V-JEPA 2 encoder of
`--preset`'s size with random weights and the demo's predictor, prepared by Accelerate on the CPU as train_hf.py
prepares it; then `--steps` AdamW steps on random cached-latent batches, as a cached run trains.
- resident: the encoder's weights stay in memory (as before a complete cache released them);
- released: `release_encoder` (what train_hf.py calls once the cache is complete) drops them before the steps.

Each side starts with the kernel's peak reset (`/proc/self/clear_refs`, which also resets what `getrusage` and
`/usr/bin/time` report) and reports the peak resident memory (`VmHWM`) of building the model, then, the peak reset
again, of its training steps alone. The first side is deleted and collected before the second starts, and glibc's
mmap threshold is fixed so that what it frees leaves the process (`fix_mmap_threshold`). Last line
`released / resident: N.NNx` (the training peaks).

    .venv/bin/python benchmarks/bench_encoder_release.py [--preset vitg --steps 3 --batch_size 1]
"""

import argparse
import ctypes
import csv
import gc
import os
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator

from bench_utils import random_actions, random_latents
from configuration_surgical_wm import SurgicalWorldModelConfig
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.world_model import release_encoder


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fix_mmap_threshold(size: int = 128 * 1024) -> None:
    """Every block of `size` bytes or more gets its own mapping, which `free` returns to the kernel. glibc raises the
    threshold to the largest mapped block freed so far: after the first side's frees, the second side's tensors
    would land on the heap, whose freed memory stays resident, and its release would seem to save nothing. Setting
    it once turns that off."""
    if not ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, size):
        raise SystemExit("error: glibc's mallopt refused M_MMAP_THRESHOLD")


def resident_gib(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak since the last reset) of this process, in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**20
    raise SystemExit(f"error: /proc/self/status has no {field}")


def reset_peak() -> None:
    """From here on `VmHWM` is the peak of what follows: the kernel sets it to the current resident memory."""
    Path("/proc/self/clear_refs").write_text("5")


def run_side(config: SurgicalWorldModelConfig, release: bool, steps: int, batch_size: int, directory: Path) -> dict:
    """Builds the model (seeded: both sides get the same weights), releases its encoder or not, trains `steps`
    steps; the peak resident memory of the build and of the steps, in GiB."""
    reset_peak()
    start = resident_gib("VmRSS")
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(SurgicalWorldModel(config))
    encoder_parameters = sum(parameter.numel() for parameter in model.encoder.parameters())
    if release:
        release_encoder(accelerator, model, directory / "frozen_encoder.safetensors")
    built, build_peak = resident_gib("VmRSS"), resident_gib("VmHWM")
    optimizer = torch.optim.AdamW([parameter for parameter in model.parameters() if parameter.requires_grad])
    generator = torch.Generator().manual_seed(0)
    reset_peak()
    for _ in range(steps):
        latents = random_latents(config, generator, batch_size, 8)
        loss = model(latents=latents, actions=random_actions(config, generator, batch_size, 8)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    result = {"side": "released" if release else "resident", "encoder_parameters": encoder_parameters,
              "start_gib": start, "built_gib": built, "build_peak_gib": build_peak,
              "training_peak_gib": resident_gib("VmHWM"), "last_loss": loss.item()}
    del model, optimizer, accelerator, loss
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vitg", help="encoder size: vitl, vith, vitg, vitg384")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--csv", default=os.path.join(REPO_ROOT, "benchmarks", "results", "encoder_release.csv"))
    args = parser.parse_args()
    fix_mmap_threshold()
    config = SurgicalWorldModelConfig.from_preset(args.preset, predictor_hidden_size=96, predictor_num_hidden_layers=2,
                                                  predictor_num_attention_heads=4, action_dim=56)
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for release in (False, True):
            result = run_side(config, release, args.steps, args.batch_size, Path(directory))
            print(f"{result['side']}: encoder {result['encoder_parameters'] / 1e6:.0f} M parameters; start "
                  f"{result['start_gib']:.2f} GiB, built {result['built_gib']:.2f} GiB (build peak "
                  f"{result['build_peak_gib']:.2f}), training peak {result['training_peak_gib']:.2f} GiB, "
                  f"last loss {result['last_loss']:.6f}")
            results.append(result)
    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["preset", *results[0]])
        writer.writeheader()
        writer.writerows({"preset": args.preset, **result} for result in results)
    resident, released = (result["training_peak_gib"] for result in results)
    print(f"{args.preset}, {args.steps} steps at batch {args.batch_size}: training peak {resident:.2f} GiB resident, "
          f"{released:.2f} GiB released")
    print(f"released / resident: {released / resident:.2f}x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Does `SurgicalWorldModel.encode` cost more than the bare V-JEPA 2 encoder doing the same work?

Both sides run in this process on the same weights (a ViT-L-shaped V-JEPA 2 encoder, random weights) and the same
clip (default 8 frames at 256 px): each frame is repeated into one tubelet and encoded on its own, then layer-normed.
The bare side is `VJEPA2Model(..., skip_predictor=True)` on the frames stacked as a batch of tubelets.
Runs alternate between the sides; the last line is `overhead: N.NNx`, median time of ours over the bare model's.
"""

import argparse
import csv
import os
import statistics
import time

import torch
import torch.nn.functional as F

from transformers import VJEPA2Config, VJEPA2Model

from configuration_surgical_wm import VJEPA2_PRESETS, SurgicalWorldModelConfig
from modeling_surgical_wm import SurgicalWorldModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vitl", choices=sorted(VJEPA2_PRESETS))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--crop_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--csv", default=os.path.join(REPO_ROOT, "benchmarks", "results", "encoder.csv"))
    args = parser.parse_args()

    torch.manual_seed(0)
    encoder_config = VJEPA2Config(**{**VJEPA2_PRESETS[args.preset]["encoder"], "crop_size": args.crop_size})
    bare = VJEPA2Model(encoder_config).eval()
    config = SurgicalWorldModelConfig(
        encoder_config=encoder_config.to_dict(), predictor_hidden_size=64, predictor_num_hidden_layers=1,
        predictor_num_attention_heads=4, action_dim=1,
    )
    ours = SurgicalWorldModel(config).eval()
    ours.encoder.load_state_dict(bare.encoder.state_dict())
    clip = torch.randn(1, args.frames, 3, args.crop_size, args.crop_size)
    tubelet = encoder_config.tubelet_size

    def run_bare():
        with torch.no_grad():
            steps = clip.reshape(args.frames, 1, 3, args.crop_size, args.crop_size).expand(-1, tubelet, -1, -1, -1)
            hidden = bare(steps, skip_predictor=True).last_hidden_state
            return F.layer_norm(hidden, (hidden.shape[-1],))

    def run_ours():
        return ours.encode(clip)

    torch.testing.assert_close(run_ours()[0], run_bare(), atol=1e-4, rtol=1e-4)  # warm-up and same result
    timings = {"bare": [], "ours": []}
    for _ in range(args.repeats):
        for name, function in (("bare", run_bare), ("ours", run_ours)):
            start = time.perf_counter()
            function()
            timings[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(values) for name, values in timings.items()}
    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scenario", "side", "median_s", "runs", "threads"])
        for name, value in medians.items():
            writer.writerow([f"{args.preset}-{args.frames}f-{args.crop_size}px", name, f"{value:.4f}",
                             args.repeats, torch.get_num_threads()])
    print(f"encoder {args.preset}, {args.frames} frames at {args.crop_size} px, {torch.get_num_threads()} threads, "
          f"{args.repeats} runs each")
    print(f"bare VJEPA2Model: {medians['bare']:.3f} s (median)")
    print(f"SurgicalWorldModel.encode: {medians['ours']:.3f} s (median)")
    print(f"overhead: {medians['ours'] / medians['bare']:.2f}x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""How much faster is the live surprise monitor's KV-cached stream than recomputing each step's context, and does
it keep up with the video?

One process, the demo's world model (`--checkpoint`, default the demo's `demo_output/run/final`; without one, a model of
the demo's size is built here: tiny V-JEPA 2 encoder, 64 px, predictor 96 wide x 2 layers, 4 heads, random weights,
as `scripts/demo.py` builds its starting point) and a synthetic SurgVU-format video (`--seconds`, 320x180 at 30 fps,
made once under `benchmarks/.cache/`). The video's steps at the model's fps are decoded and encoded once (timed);
then on the same latents, alternating `--repeats` rounds:
- streaming: `SurpriseMonitor(model, window).push` per step (each step once through the KV-cached predictor, and
  every `window // 2` steps a new context's first `window // 2 + 1` steps at once);
- recompute: `window_surprise` (the predictor run afresh over each step's context).
Both must give the same surprise within 1e-5 (checked; the run stops otherwise). Steps per second of each side
(medians), and the real-time factor of the whole live path (decode, crop and preprocess, encode, stream) against the
video's duration, reported, not asserted: above 1, the monitor keeps up with a video played at its own speed.
Rows go to benchmarks/results/monitor.csv (appended). The last line: `streaming speed-up: N.Nx`.
"""

import argparse
import csv
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench_utils import load, make_video
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.surprise import SurpriseMonitor, video_steps, window_surprise

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSV_FIELDS = ["run", "checkpoint", "window", "steps", "fps", "video_seconds", "streaming_steps_per_s",
              "recompute_steps_per_s", "speed_up", "max_difference", "decode_s", "encode_s", "real_time_factor",
              "threads", "torch", "load"]


def demo_sized_model(directory: str) -> str:
    """A world model of the demo's size in `directory`, built as scripts/demo.py builds its starting point."""
    encoder, model = os.path.join(directory, "tiny-vjepa2"), os.path.join(directory, "init")
    for command in (["scripts/make_tiny_vjepa2.py", "--out", encoder, "--seed", "0"],
                    ["scripts/load_vjepa2_pretrained.py", "--encoder", encoder, "--save_path", model, "--action_dim",
                     "56", "--predictor_hidden_size", "96", "--predictor_num_hidden_layers", "2",
                     "--predictor_num_attention_heads", "4", "--seed", "0"]):
        subprocess.run([sys.executable, *command], check=True, cwd=REPO_ROOT, capture_output=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=os.path.join(REPO_ROOT, "demo_output", "run", "final"))
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--csv", default=os.path.join(REPO_ROOT, "benchmarks", "results", "monitor.csv"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint if os.path.isdir(args.checkpoint) else demo_sized_model(scratch)
        model = SurgicalWorldModel.from_pretrained(checkpoint).eval()
    config = model.config
    fps = float(config.fps or 4.0)
    video = make_video(os.path.join(REPO_ROOT, "benchmarks", ".cache"), args.seconds, 320, 180, 30)

    started = time.perf_counter()
    steps = list(video_steps(video, fps, config.frames_per_step, config.encoder_config.crop_size))
    decode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    # One step at a time, as the live path encodes them.
    latents = torch.cat([model.encode_targets(step.pixels[None])[0] for step in steps])  # (S, N, D)
    encode_seconds = time.perf_counter() - started
    video_seconds = steps[-1].time
    print(f"{checkpoint}: predictor {config.predictor_hidden_size} x {config.predictor_num_hidden_layers}, "
          f"{config.tokens_per_step} tokens per step; {video}: {len(steps)} steps at {fps:g} fps "
          f"({video_seconds:.0f} s); window {args.window}; {torch.get_num_threads()} threads, {load()}")

    def streaming():
        monitor = SurpriseMonitor(model, args.window)
        return torch.tensor([monitor.push(latent) for latent in latents][1:])

    sides = {"streaming": streaming, "recompute": lambda: window_surprise(model, latents, args.window)}
    results = {name: function() for name, function in sides.items()}  # warm-up
    difference = float((results["streaming"] - results["recompute"]).abs().max())
    if difference > 1e-5:
        raise SystemExit(f"error: streaming and recomputed surprise differ by {difference:.2e} (more than 1e-5)")
    timings = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, function in sides.items():
            start = time.perf_counter()
            function()
            timings[name].append(time.perf_counter() - start)
    rates = {name: len(latents) / statistics.median(values) for name, values in timings.items()}
    speed_up = rates["streaming"] / rates["recompute"]
    live_seconds = decode_seconds + encode_seconds + len(latents) / rates["streaming"]
    real_time = video_seconds / live_seconds

    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    new = not os.path.exists(args.csv)
    with open(args.csv, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({
            "run": datetime.datetime.now().isoformat(timespec="seconds"), "checkpoint": checkpoint,
            "window": args.window, "steps": len(latents), "fps": fps, "video_seconds": f"{video_seconds:.1f}",
            "streaming_steps_per_s": f"{rates['streaming']:.1f}", "recompute_steps_per_s": f"{rates['recompute']:.1f}",
            "speed_up": f"{speed_up:.2f}", "max_difference": f"{difference:.1e}", "decode_s": f"{decode_seconds:.2f}",
            "encode_s": f"{encode_seconds:.2f}", "real_time_factor": f"{real_time:.1f}",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "load": load(),
        })
    print(f"same surprise: largest difference {difference:.1e}")
    print(f"streaming: {rates['streaming']:.1f} steps/s; recompute: {rates['recompute']:.1f} steps/s "
          f"(medians of {args.repeats})")
    print(f"live path: decode {decode_seconds:.2f} s, encode {encode_seconds:.2f} s, stream "
          f"{len(latents) / rates['streaming']:.2f} s for {video_seconds:.0f} s of video: {real_time:.1f}x real time")
    print(f"streaming speed-up: {speed_up:.1f}x")


if __name__ == "__main__":
    main()

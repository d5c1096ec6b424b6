#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""How far does a world model's encoder latent move when only the labels of the synthetic SurgVU frames change?
Renders clips with the synthetic generator's renderer (`dataset_surgvu/synthetic.py`), once as drawn and once with
one thing changed at the same moments (an arm's tool, the task, the task set to Other, every label at once), encodes
both as the model's encoder does for its targets (tool band and black margins cropped, V-JEPA 2 preprocessing, one
frame per step as the builder samples them) and prints the latent L1 between them, next to the L1 between consecutive
steps of the unchanged clip. This is what the actions could explain at most: if a change of labels barely moves the
latent, no predictor can use them; if it moves it far, a predictor that does not is where to look.

    python benchmarks/label_visibility.py --checkpoint demo_output/run/final

Prints one line per kind of change, the mean over `--clips` clips; the last line is the ratio of the latent L1 of a
task change to that of a step of the unchanged clip.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_surgvu.labels import OTHER_TASK, TOOL_CLASSES  # noqa: E402
from dataset_surgvu.synthetic import MARGIN_FRACTION, _Renderer  # noqa: E402
from dataset_surgvu.transforms import vjepa2_preprocess  # noqa: E402
from modeling_surgical_wm import SurgicalWorldModel  # noqa: E402

WIDTH, HEIGHT = 320, 180  # make_synthetic_surgvu.py's defaults
TOOL_BAND_FRACTION = 0.08  # the builder's default crop of the tool-name band


def builder_crop(video: torch.Tensor) -> torch.Tensor:
    """Frames `(T, 3, H, W)` of the generator's default size without the tool-name band and the black side margins,
    as the builder crops them."""
    margin = int(round(WIDTH * MARGIN_FRACTION))
    return video[:, :, : int(HEIGHT * (1 - TOOL_BAND_FRACTION)), margin : WIDTH - margin]


@torch.no_grad()
def encode(model: SurgicalWorldModel, frames: list[np.ndarray]) -> torch.Tensor:
    """Target latents `(steps, tokens, dim)` of frames `[H, W, 3]` uint8, one frame per step."""
    video = builder_crop(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2))  # (T, 3, H, W)
    video = video.repeat_interleave(model.config.frames_per_step, dim=0)  # one frame per step, as the builder samples
    pixels = vjepa2_preprocess(video, crop_size=model.config.encoder_config.crop_size)[None]
    return model.encode_targets(pixels)[0]


def measure(model: SurgicalWorldModel, clips: int, steps: int, fps: float, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    num_tools = len(TOOL_CLASSES)
    results = {"a step of the unchanged clip": [], "one arm's tool": [], "the task": [], "the task set to Other": [],
               "every label": []}
    for clip in range(clips):
        renderer = _Renderer(np.random.default_rng([seed, clip]), WIDTH, HEIGHT)
        start = rng.uniform(10, 60)
        times = [start + step / fps for step in range(steps)]
        installed = start - 5  # every tool fully inserted

        def tools():
            return [(int(rng.integers(num_tools)), installed) if rng.random() < 0.7 else None for _ in range(4)]

        arms, task = tools(), int(rng.integers(OTHER_TASK))
        base = encode(model, [renderer.frame(arms, task, time) for time in times])
        results["a step of the unchanged clip"].append((base[1:] - base[:-1]).abs().mean().item())
        arm = int(rng.integers(4))
        other_arms = list(arms)
        tool = -1 if arms[arm] is None else arms[arm][0]
        other_arms[arm] = ((tool + 1 + int(rng.integers(num_tools - 1))) % num_tools, installed)
        other_task = (task + 1 + int(rng.integers(OTHER_TASK - 1))) % OTHER_TASK
        for name, (changed_arms, changed_task) in {"one arm's tool": (other_arms, task),
                                                    "the task": (arms, other_task),
                                                    "the task set to Other": (arms, OTHER_TASK),
                                                    "every label": (tools(), other_task)}.items():
            changed = encode(model, [renderer.frame(changed_arms, changed_task, time) for time in times])
            results[name].append((changed - base).abs().mean().item())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a world model export (its encoder gives the latents)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--fps", type=float, default=4.0, help="the builder's sampling rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = SurgicalWorldModel.from_pretrained(args.checkpoint).eval()
    results = measure(model, args.clips, args.steps, args.fps, args.seed)
    print(f"latent L1 (the encoder's normalised target latents), mean over {args.clips} clips of {args.steps} steps:")
    for name, values in results.items():
        print(f"  {'changing ' + name if name != 'a step of the unchanged clip' else name:>32}: {np.mean(values):.4f}")
    ratio = np.mean(results["the task"]) / np.mean(results["a step of the unchanged clip"])
    print(f"a task change over a step of the unchanged clip: {ratio:.2f}x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Where in the view does a world model miss where the task changes, and where do its actions count there?

Each task of the synthetic SurgVU data but Other shows its anatomy, a disc in a place of its own
(`dataset_surgvu/synthetic.py`). Where the task changes, the old disc goes and uncovers what lay under it, the new one
comes where the new task's label puts it, and every instrument moves onto the new task's path. Scores a world model's
teacher-forced prediction per latent token at the task changes of one split's clips of its latent cache (as
`ablate_action_pairing.py` reads them), the tokens sorted by what the change puts in their patch of the view, found
by drawing each disc as the generator does and cropping it as the builder and the V-JEPA 2 preprocessing do:

- the new anatomy: the new task's disc covers at least `--coverage` of the patch (what the new label says);
- the old anatomy only: the old task's disc does, the new one does not (what lay under it comes back);
- neither: the instruments and the rest of the view.

Per kind: the own-action latent L1, the L1 with another clip's actions (drawn by `--seed` as the evaluation draws
them), their ratio, and how far the latent moves; next to the same over every token of the transitions where no
label changes.

    python benchmarks/task_change_tokens.py --checkpoint demo_output/run/best --data_root demo_output/surgvu \
        --dataset_cache_dir demo_output/arrow-cache --cache_dir demo_output/run/latent_cache

Prints a Markdown table; the last line is swapped over own on the new anatomy's tokens over the same ratio where no
label changes.
"""

import argparse
import functools
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ablate_action_pairing import split_clips  # noqa: E402
from label_visibility import HEIGHT, WIDTH, builder_crop  # noqa: E402

from dataset_surgvu.labels import TASK_CLASSES  # noqa: E402
from dataset_surgvu.synthetic import _TASK_ANATOMY, _draw_segment, _Renderer  # noqa: E402
from dataset_surgvu.transforms import vjepa2_preprocess  # noqa: E402
from modeling_surgical_wm import SurgicalWorldModel  # noqa: E402
from training_surgical_wm.evaluation import swap_partners  # noqa: E402

KINDS = ("the new anatomy", "the old anatomy only", "neither")


@functools.cache  # drawn once per task, not at each of its changes
def anatomy_coverage(task: int, crop_size: int, patch_size: int) -> torch.Tensor:
    """The share of each token's patch `(tokens,)`, row by row, that task `task`'s anatomy covers in the encoder's
    view of a synthetic frame (zeros for Other, which shows none). Shared between calls: not to be changed in place."""
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    if task < len(_TASK_ANATOMY):
        renderer = _Renderer(np.random.default_rng(0), WIDTH, HEIGHT)
        (x, y), radius, _ = _TASK_ANATOMY[task]
        centre = renderer._to_pixels(np.array([x, y]))
        _draw_segment(image, centre, centre, radius * renderer.view_height, (255, 255, 255))
    video = builder_crop(torch.from_numpy(image).permute(2, 0, 1)[None])  # (1, 3, H, W)
    pixels = vjepa2_preprocess(video, crop_size=crop_size, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)[0, 0]
    inside = (pixels > 0).float()  # (crop, crop): 1 where the disc is, after the resize's blur
    grid = crop_size // patch_size
    return inside.view(grid, patch_size, grid, patch_size).mean((1, 3)).flatten()


def token_kinds(old_task: int, new_task: int, crop_size: int, patch_size: int, coverage: float) -> torch.Tensor:
    """Each token's kind `(tokens,)` where the task changes from `old_task` to `new_task`: an index into `KINDS`."""
    new = anatomy_coverage(new_task, crop_size, patch_size) >= coverage
    old = anatomy_coverage(old_task, crop_size, patch_size) >= coverage
    return torch.where(new, 0, torch.where(old, 1, 2))


@torch.no_grad()
def scores(model, latents: torch.Tensor, labels: torch.Tensor, tasks: torch.Tensor, partners: torch.Tensor,
           coverage: float) -> dict[str, tuple[int, list[float]]]:
    """Per kind of token (and "no change"): the number of tokens and their mean own-action L1, swapped-action L1 and
    latent move. `latents` `(C, S, N, D)`, `labels` `(C, S, A)` per step, `tasks` `(C, S)` task class indices;
    clip c is also scored with the labels of clip `partners[c]`."""
    def per_token(step_labels: torch.Tensor) -> torch.Tensor:
        predicted = model.predict(latents[:, :-1], model.transition_actions(step_labels))
        return (predicted.float() - latents[:, 1:].float()).abs().mean(-1)  # (C, S - 1, N)

    own, swapped = per_token(labels), per_token(labels[partners])
    move = (latents[:, 1:].float() - latents[:, :-1].float()).abs().mean(-1)
    values = torch.stack([own, swapped, move], -1)  # (C, S - 1, N, 3)
    encoder = model.config.encoder_config
    rows = {kind: [] for kind in (*KINDS, "no change")}
    for clip, step in (tasks[:, 1:] != tasks[:, :-1]).nonzero().tolist():
        kinds = token_kinds(int(tasks[clip, step]), int(tasks[clip, step + 1]), encoder.crop_size,
                            encoder.patch_size, coverage)
        for index, kind in enumerate(KINDS):
            rows[kind].append(values[clip, step][kinds == index])
    unchanged = ~(labels[:, 1:] != labels[:, :-1]).any(-1)  # (C, S - 1)
    rows["no change"].append(values[unchanged].flatten(0, 1))
    summary = {}
    for kind, parts in rows.items():
        stacked = torch.cat(parts) if parts else torch.zeros(0, 3)
        summary[kind] = (len(stacked), stacked.mean(0).tolist() if len(stacked) else [float("nan")] * 3)
    return summary


def step_tasks(labels: torch.Tensor, action_spec: list[str]) -> torch.Tensor:
    """The task class index (`TASK_CLASSES`) in force at each step `(C, S)`, from the `task/...` dimensions."""
    dims = [index for index, name in enumerate(action_spec) if name.startswith("task/")]
    if not dims:
        raise SystemExit("error: the model's action_spec has no task/... dimensions: no task changes to score")
    classes = torch.tensor([TASK_CLASSES.index(action_spec[dim].split("/", 1)[1]) for dim in dims])
    return classes[labels[..., dims].argmax(-1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a world model export")
    parser.add_argument("--data_root", required=True, help="a sample of scripts/make_synthetic_surgvu.py")
    parser.add_argument("--dataset_cache_dir", default=None)
    parser.add_argument("--cache_dir", required=True, help="the run's latent cache root (as ablate_action_pairing.py)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--coverage", type=float, default=0.25,
                        help="the share of a token's patch an anatomy must cover to count (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw of each clip's swap partner")
    args = parser.parse_args()
    manifest = os.path.join(args.data_root, "synthetic_manifest.json")
    if not os.path.isfile(manifest):
        raise SystemExit(f"error: {manifest} is missing: the anatomy's places are the synthetic generator's, so "
                         "--data_root must be a sample of scripts/make_synthetic_surgvu.py")
    with open(manifest) as handle:
        size = json.load(handle)
    if (size.get("width"), size.get("height")) != (WIDTH, HEIGHT):
        raise SystemExit(f"error: {manifest}: frames of {size.get('width')}x{size.get('height')}; this script maps the "
                         f"anatomy onto the default {WIDTH}x{HEIGHT} frames")
    model = SurgicalWorldModel.from_pretrained(args.checkpoint).eval()
    latents, labels, cases = split_clips(args)
    tasks = step_tasks(labels, model.config.action_spec or [])
    partners = torch.from_numpy(swap_partners(cases, args.seed))
    summary = scores(model, latents, labels, tasks, partners, args.coverage)
    changes = int((tasks[:, 1:] != tasks[:, :-1]).sum())
    print(f"{changes} task changes in {len(latents)} {args.split} clips; per latent token (a token's patch counts "
          f"for an anatomy it covers {args.coverage:.0%} of):")
    print("| tokens | n | own L1 | swapped L1 | swapped/own | latent move |\n|---|---:|---:|---:|---:|---:|")
    for kind, (count, (own, swapped, move)) in summary.items():
        where = "no label changes" if kind == "no change" else f"task changes, {kind}"
        print(f"| {where} | {count} | {own:.3f} | {swapped:.3f} | {swapped / own:.2f} | {move:.3f} |")
    new, same = summary["the new anatomy"][1], summary["no change"][1]
    print(f"swapped over own, the new anatomy's tokens over no change: {(new[1] / new[0]) / (same[1] / same[0]):.2f}x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Writes a tiny, randomly initialised V-JEPA 2 checkpoint in the transformers format.

It has the layout of `facebook/vjepa2-*` (config.json + model.safetensors of a `VJEPA2Model`), so every loading path
of the project can be exercised offline: `python scripts/make_tiny_vjepa2.py --out tiny-vjepa2`.
"""

import argparse

import torch
from transformers import VJEPA2Config, VJEPA2Model

TINY_ENCODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "mlp_ratio": 2.0,
    "crop_size": 64,
    "patch_size": 16,
    "frames_per_clip": 16,
    "tubelet_size": 2,
    "pred_hidden_size": 32,
    "pred_num_hidden_layers": 1,
    "pred_num_attention_heads": 2,
    "pred_num_mask_tokens": 2,
    "num_pooler_layers": 1,
}


def make_tiny_vjepa2(out: str, seed: int = 0, **overrides) -> str:
    """Saves a tiny `VJEPA2Model` to `out` and returns `out`."""
    torch.manual_seed(seed)
    model = VJEPA2Model(VJEPA2Config(**{**TINY_ENCODER, **overrides}))
    model.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop_size", type=int, default=TINY_ENCODER["crop_size"])
    args = parser.parse_args()
    make_tiny_vjepa2(args.out, seed=args.seed, crop_size=args.crop_size)
    print(f"tiny V-JEPA 2 written to {args.out}")


if __name__ == "__main__":
    main()

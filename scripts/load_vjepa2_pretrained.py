#!/usr/bin/env python
"""Builds a surgical world model on a pretrained V-JEPA 2 encoder and saves it as a Hugging Face directory.

    python scripts/load_vjepa2_pretrained.py --model_size vitl --save_path checkpoints/vjepa2_vitl_surgical
    python scripts/load_vjepa2_pretrained.py --encoder /data/vjepa2-vitl --save_path out   # a local copy

The directory then loads anywhere with
`AutoModel.from_pretrained(save_path, trust_remote_code=True)`; `train_hf.py --pretrained_checkpoint` takes it. Its
video processor (`AutoVideoProcessor.from_pretrained(save_path, trust_remote_code=True)`) crops and preprocesses video
as training on SurgVU does, sampling at the training default of 4 fps until a training run records the data's.
"""

import argparse
import json
import sys

from configuration_surgical_wm import VJEPA2_PRESETS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build a surgical world model on a V-JEPA 2 encoder.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model_size", choices=sorted(VJEPA2_PRESETS), default=None,
                        help="V-JEPA 2 encoder from the Hub: " + ", ".join(
                            f"{k}={v['checkpoint']}" for k, v in VJEPA2_PRESETS.items()))
    source.add_argument("--encoder", default=None,
                        help="a local V-JEPA 2 directory in the transformers format, or any Hub id")
    parser.add_argument("--save_path", required=True, help="where to write the world model")
    parser.add_argument("--action_dim", type=int, default=None, help="size of the action vector per step")
    parser.add_argument("--action_spec", default=None,
                        help="JSON file holding a list with one name per action dimension")
    parser.add_argument("--state_dim", type=int, default=0)
    parser.add_argument("--predictor_hidden_size", type=int, default=None)
    parser.add_argument("--predictor_num_hidden_layers", type=int, default=None)
    parser.add_argument("--predictor_num_attention_heads", type=int, default=None)
    parser.add_argument("--frames_per_step", type=int, default=1)
    parser.add_argument("--finetune_encoder", action="store_true", help="keep an EMA target encoder for fine-tuning")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the new predictor's weights")
    args = parser.parse_args(argv)
    if args.model_size is None and args.encoder is None:
        args.model_size = "vitl"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from modeling_surgical_wm import SurgicalWorldModel
    from training_surgical_wm.export import video_processor

    overrides = {"state_dim": args.state_dim, "frames_per_step": args.frames_per_step,
                 "freeze_encoder": not args.finetune_encoder}
    if args.action_spec is not None:
        with open(args.action_spec) as handle:
            overrides["action_spec"] = json.load(handle)
        overrides["action_dim"] = len(overrides["action_spec"])
    if args.action_dim is not None:
        overrides["action_dim"] = args.action_dim
    for name in ("predictor_hidden_size", "predictor_num_hidden_layers", "predictor_num_attention_heads"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)

    source = args.encoder if args.encoder is not None else args.model_size
    torch.manual_seed(args.seed)  # the same predictor every time for the same settings
    try:
        model = SurgicalWorldModel.from_vjepa2(source, cache_dir=args.cache_dir, **overrides)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: invalid world model settings: {error}", file=sys.stderr)
        return 2
    model.save_pretrained(args.save_path)
    video_processor(model.config).save_pretrained(args.save_path)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"saved a world model on {model.config.encoder_name_or_path} ({parameters / 1e6:.1f} M parameters) "
          f"to {args.save_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

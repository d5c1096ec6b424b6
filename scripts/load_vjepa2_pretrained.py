#!/usr/bin/env python
"""Builds a surgical world model on a pretrained V-JEPA 2 encoder and saves it as a Hugging Face directory.

    python scripts/load_vjepa2_pretrained.py --model_size vitl --save_path checkpoints/vjepa2_vitl_surgical
    python scripts/load_vjepa2_pretrained.py --encoder /data/vjepa2-vitl --save_path out   # a local copy

or converts Meta's released action-conditioned world model, V-JEPA 2-AC (its encoder and its predictor):

    python scripts/load_vjepa2_pretrained.py --model_size vitg-ac --save_path checkpoints/vjepa2-ac-vitg
    python scripts/load_vjepa2_pretrained.py --vjepa2_ac_checkpoint vjepa2-ac-vitg.pt --save_path out

The directory then loads anywhere with
`AutoModel.from_pretrained(save_path, trust_remote_code=True)`; `train_hf.py --pretrained_checkpoint` takes it. Its
video processor (`AutoVideoProcessor.from_pretrained(save_path, trust_remote_code=True)`) crops and preprocesses video
as training on SurgVU does, sampling at the training default of 4 fps until a training run records the data's.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from configuration_surgical_wm import VJEPA2_PRESETS
from dataset_surgvu.latent_cache import file_sha256
from training_surgical_wm.loading import fail, shape_differences


VJEPA2_AC = "vitg-ac"  # --model_size of Meta's released V-JEPA 2-AC file
# Where Meta's torch.hub loader (src/hub/backbones.py of facebookresearch/vjepa2) reads it.
VJEPA2_AC_URL = "https://dl.fbaipublicfiles.com/vjepa2/vjepa2-ac-vitg.pt"
VJEPA2_AC_HEADS = {"encoder": 22, "predictor": 16}  # the released ViT-g encoder and 1024-wide predictor
VJEPA2_AC_FPS = 4  # DROID clips were sampled at 4 fps (configs/train/vitg16/droid-256px-8f.yaml)
# DROID's end-effector pose per step (states) and its change from one step to the next (actions).
DROID_STATE_SPEC = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
DROID_ACTION_SPEC = [f"delta {name}" for name in DROID_STATE_SPEC]

# Meta's names (after `module.` and `backbone.` are stripped) -> ours; `{}` is a layer index. The fused `qkv` of the
# encoder's blocks is split into transformers' query, key and value.
ENCODER_NAMES = {
    "patch_embed.proj.{}": "encoder.embeddings.patch_embeddings.proj.{}",
    "blocks.{}.attn.proj.{}": "encoder.layer.{}.attention.proj.{}",
    "blocks.{}.norm1.{}": "encoder.layer.{}.norm1.{}",
    "blocks.{}.norm2.{}": "encoder.layer.{}.norm2.{}",
    "blocks.{}.mlp.fc1.{}": "encoder.layer.{}.mlp.fc1.{}",
    "blocks.{}.mlp.fc2.{}": "encoder.layer.{}.mlp.fc2.{}",
    "norm.{}": "encoder.layernorm.{}",
}
ENCODER_QKV = "blocks.{}.attn.qkv.{}"
PREDICTOR_NAMES = {
    "predictor_embed.{}": "predictor.latent_proj.{}",
    "action_encoder.{}": "predictor.action_proj.{}",
    "state_encoder.{}": "predictor.state_proj.{}",
    "predictor_blocks.{}.attn.{}.{}": "predictor.layers.{}.attention.{}.{}",
    "predictor_blocks.{}.norm1.{}": "predictor.layers.{}.norm1.{}",
    "predictor_blocks.{}.norm2.{}": "predictor.layers.{}.norm2.{}",
    "predictor_blocks.{}.mlp.fc1.{}": "predictor.layers.{}.mlp.fc1.{}",
    "predictor_blocks.{}.mlp.fc2.{}": "predictor.layers.{}.mlp.fc2.{}",
    "predictor_norm.{}": "predictor.norm.{}",
    "predictor_proj.{}": "predictor.output_proj.{}",
}
# Tensors of the file the converted model has no use for, and why.
DROPPED = {
    "encoder": {"pos_embed": "a fixed sin-cos table; the encoder uses RoPE"},
    "predictor": {"extrinsics_encoder.{}": "camera extrinsics, unused by the released model (use_extrinsics=False)"},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build a surgical world model on a V-JEPA 2 encoder.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model_size", choices=sorted(VJEPA2_PRESETS) + [VJEPA2_AC], default=None,
                        help="V-JEPA 2 encoder from the Hub: " + ", ".join(
                            f"{k}={v['checkpoint']}" for k, v in VJEPA2_PRESETS.items())
                        + f"; {VJEPA2_AC}: Meta's V-JEPA 2-AC world model, {VJEPA2_AC_URL}")
    source.add_argument("--encoder", default=None,
                        help="a local V-JEPA 2 directory in the transformers format, or any Hub id")
    source.add_argument("--vjepa2_ac_checkpoint", default=None,
                        help="a local copy of Meta's V-JEPA 2-AC file (vjepa2-ac-vitg.pt) to convert, encoder and "
                             "predictor")
    parser.add_argument("--save_path", required=True, help="where to write the world model")
    parser.add_argument("--action_dim", type=int, default=None, help="size of the action vector per step")
    parser.add_argument("--action_spec", default=None,
                        help="JSON file holding a list with one name per action dimension")
    parser.add_argument("--state_dim", type=int, default=0)
    parser.add_argument("--predictor_hidden_size", type=int, default=None)
    parser.add_argument("--predictor_num_hidden_layers", type=int, default=None)
    parser.add_argument("--predictor_position_embedding", action="store_true",
                        help="a learned embedding of each patch's place in the grid for the predictor's tokens "
                             "(config.predictor_position_embedding; not with a V-JEPA 2-AC conversion)")
    parser.add_argument("--predictor_num_attention_heads", type=int, default=None,
                        help=f"(V-JEPA 2-AC: default {VJEPA2_AC_HEADS['predictor']}, the released predictor's)")
    parser.add_argument("--encoder_num_attention_heads", type=int, default=None,
                        help=f"V-JEPA 2-AC only: the encoder's heads (default {VJEPA2_AC_HEADS['encoder']}, ViT-g's)")
    parser.add_argument("--crop_size", type=int, default=None,
                        help="V-JEPA 2-AC only: the frame size the model takes (default 256, the released model's)")
    parser.add_argument("--frames_per_step", type=int, default=1)
    parser.add_argument("--finetune_encoder", action="store_true", help="keep an EMA target encoder for fine-tuning")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the new predictor's weights")
    args = parser.parse_args(argv)
    if args.model_size is None and args.encoder is None and args.vjepa2_ac_checkpoint is None:
        args.model_size = "vitl"
    converting = args.vjepa2_ac_checkpoint is not None or args.model_size == VJEPA2_AC
    if not converting and (args.encoder_num_attention_heads is not None or args.crop_size is not None):
        parser.error("--encoder_num_attention_heads and --crop_size are for a V-JEPA 2-AC conversion")
    if converting:
        # The converted network is Meta's: its sizes come from the file, its actions and states are DROID's.
        fixed = [f"--{name}" for name in ("action_dim", "action_spec", "predictor_hidden_size",
                                          "predictor_num_hidden_layers")
                 if getattr(args, name) is not None]
        fixed += ["--state_dim"] if args.state_dim else []
        if args.predictor_position_embedding:
            parser.error("--predictor_position_embedding: V-JEPA 2-AC's predictor has none, and a conversion is its "
                         "network as Meta trained it")
        fixed += ["--frames_per_step"] if args.frames_per_step != 1 else []
        if fixed:
            parser.error(f"{', '.join(fixed)}: a V-JEPA 2-AC conversion takes its sizes from the file "
                         "(fine-tuning adapts the actions and states to the data)")
    return args


# ---------------------------------------------------------------------------------------------- V-JEPA 2-AC
def download_vjepa2_ac(cache_dir: str | None) -> Path:
    """Meta's file in the torch hub cache (or `cache_dir`), downloaded once; where to get it by hand when offline."""
    import torch

    folder = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / VJEPA2_AC_URL.rsplit("/", 1)[1]
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(VJEPA2_AC_URL, str(path))
    except Exception as error:  # offline, refused, cut: all the same to the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fail(f"could not download {VJEPA2_AC_URL} ({reason}). Download it where the network allows (e.g. `curl -LO "
             f"{VJEPA2_AC_URL}`), copy it here and pass --vjepa2_ac_checkpoint vjepa2-ac-vitg.pt")
    return path


def strip_wrappers(name: str) -> str:
    """A tensor name without the `module.` (DDP) and `backbone.` (Meta's wrapper) parts, wherever they stand."""
    return ".".join(part for part in name.split(".") if part not in ("module", "backbone"))


def match(name: str, patterns) -> tuple[str, tuple[str, ...]] | None:
    """The pattern of `patterns` that `name` fits (`{}` standing for one dot-free part) and the parts it filled."""
    for pattern in patterns:
        found = re.fullmatch(re.escape(pattern).replace(r"\{\}", r"([^.]+)"), name)
        if found:
            return pattern, found.groups()
    return None


def read_vjepa2_ac(path: Path) -> tuple[dict, dict, list[str]]:
    """The encoder and predictor tensors of Meta's file, their names stripped of `module.` and `backbone.`, and the
    file's other entries (not read: Meta's hub loader reads only these two). Read with `weights_only=True`: no code in
    the file runs."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        fail(f"{path}: not a PyTorch checkpoint that loads without running code ({type(error).__name__}: {reason})")
    parts = {}
    for part in ("encoder", "predictor"):
        tensors = checkpoint.get(part) if isinstance(checkpoint, dict) else None
        if not isinstance(tensors, dict) or not all(torch.is_tensor(value) for value in tensors.values()):
            fail(f"{path}: no {part!r} state dict; a V-JEPA 2-AC file holds 'encoder' and 'predictor'")
        parts[part] = {}
        for name, tensor in tensors.items():
            stripped = strip_wrappers(name)
            if stripped in parts[part]:
                fail(f"{path}: {part} tensors {name!r} and another both read as {stripped!r}")
            parts[part][stripped] = tensor
    return parts["encoder"], parts["predictor"], sorted(str(key) for key in checkpoint if key not in parts)


def tensor(tensors: dict, name: str, part: str, path: Path):
    if name not in tensors:
        fail(f"{path}: the {part} has no {name!r}: not a V-JEPA 2-AC file")
    return tensors[name]


def vjepa2_ac_config(path: Path, encoder: dict, predictor: dict, args: argparse.Namespace, digest: str):
    """The config of the converted model: sizes read from the tensors' shapes, head counts and crop size from the
    flags, and every field on which Meta's network and training depend set here, not left to defaults."""
    from configuration_surgical_wm import SurgicalWorldModelConfig

    patch = tensor(encoder, "patch_embed.proj.weight", "encoder", path)  # (hidden, channels, tubelet, patch, patch)
    if patch.ndim != 5:
        fail(f"{path}: encoder patch_embed.proj.weight has shape {list(patch.shape)}; expected a video (3D) patch "
             "embedding")
    hidden, in_chans, tubelet, patch_size = patch.shape[0], patch.shape[1], patch.shape[2], patch.shape[3]
    latent = tensor(predictor, "predictor_embed.weight", "predictor", path)  # (predictor hidden, encoder hidden)
    if latent.shape[1] != hidden:
        fail(f"{path}: the predictor takes {latent.shape[1]}-wide latents but the encoder is {hidden} wide")
    action = tensor(predictor, "action_encoder.weight", "predictor", path)
    state = tensor(predictor, "state_encoder.weight", "predictor", path)
    crop_size = args.crop_size or 256
    encoder_config = {
        "hidden_size": hidden, "in_chans": in_chans, "tubelet_size": tubelet, "patch_size": patch_size,
        "num_hidden_layers": count_layers(encoder, "blocks", path),
        "num_attention_heads": args.encoder_num_attention_heads or VJEPA2_AC_HEADS["encoder"],
        "mlp_ratio": tensor(encoder, "blocks.0.mlp.fc1.weight", "encoder", path).shape[0] / hidden,
        "crop_size": crop_size, "frames_per_clip": 64, "layer_norm_eps": 1e-6, "qkv_bias": True,
        "hidden_act": "gelu", "drop_path_rate": 0.0,
    }
    predictor_hidden = latent.shape[0]
    try:
        return SurgicalWorldModelConfig(
            encoder_config=encoder_config,
            encoder_name_or_path=path.name,
            vjepa2_ac_source={"file": path.name, "sha256": digest, "url": VJEPA2_AC_URL},
            # Meta's VisionTransformerPredictorAC
            predictor_hidden_size=predictor_hidden,
            predictor_num_hidden_layers=count_layers(predictor, "predictor_blocks", path),
            predictor_num_attention_heads=args.predictor_num_attention_heads or VJEPA2_AC_HEADS["predictor"],
            predictor_mlp_ratio=tensor(predictor, "predictor_blocks.0.mlp.fc1.weight", "predictor", path).shape[0]
            / predictor_hidden,
            predictor_drop_path_rate=0.0, layer_norm_eps=1e-6, predict_residual=False,
            action_conditioning="token", action_dropout=0.0, use_mask_aux=False,
            # DROID: per step, the end-effector pose and its change to the next step; the action at step t is the
            # change from t to t + 1 and conditions the prediction of t + 1, next to the state at t.
            action_dim=action.shape[1], state_dim=state.shape[1], action_pairing="current",
            action_spec=DROID_ACTION_SPEC if action.shape[1] == len(DROID_ACTION_SPEC) else None,
            discrete_action_groups=None, frames_per_step=1, fps=VJEPA2_AC_FPS,
            # Meta's objective (app/vjepa_droid/train.py, normalize_reps): L1 on layer-normed latents and predictions,
            # teacher forcing plus a 2-step rollout.
            normalize_latents=True, normalize_predictions=True, rollout_steps=2, rollout_loss_weight=1.0,
            contrastive_weight=0.0, action_change_weight=1.0, action_contrastive_weight=0.0,
            freeze_encoder=not args.finetune_encoder,
        )
    except ValueError as error:
        fail(f"{path}: {error} (--encoder_num_attention_heads, --predictor_num_attention_heads and --crop_size set "
             "the sizes the file does not hold)")


def count_layers(tensors: dict, prefix: str, path: Path) -> int:
    indices = {name.split(".")[1] for name in tensors if name.startswith(f"{prefix}.")}
    if indices != {str(index) for index in range(len(indices))} or not indices:
        fail(f"{path}: the {prefix} are numbered {sorted(indices)}, not 0, 1, ...")
    return len(indices)


def convert_vjepa2_ac(path: Path, encoder: dict, predictor: dict, hidden: int) -> tuple[dict, list[str]]:
    """Meta's tensors under our names, and the names of those dropped. Stops at the first tensor that has no place."""
    converted, dropped = {}, []
    for part, tensors, names in (("encoder", encoder, ENCODER_NAMES), ("predictor", predictor, PREDICTOR_NAMES)):
        for name, value in tensors.items():
            if match(name, DROPPED[part]):
                dropped.append(f"{part}.{name}")
                continue
            found = match(name, [ENCODER_QKV]) if part == "encoder" else None
            if found:  # (3 * hidden, hidden): query, key and value stacked
                layer, kind = found[1]
                for index, role in enumerate(("query", "key", "value")):
                    converted[f"encoder.layer.{layer}.attention.{role}.{kind}"] = (
                        value[index * hidden : (index + 1) * hidden].clone())
                continue
            found = match(name, names)
            if found is None:
                fail(f"{path}: {part} tensor {name!r} has no place in the converted model")
            converted[names[found[0]].format(*found[1])] = value
    return converted, dropped


def load_converted(path: Path, config, converted: dict):
    """The world model holding `converted`, every one of its tensors from the file (checked by name and shape)."""
    import torch

    from modeling_surgical_wm import SurgicalWorldModel

    with torch.device("meta"):
        model = SurgicalWorldModel(config)
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()
                if not name.startswith("target_encoder.")}
    missing, unexpected, reshaped = shape_differences({name: tuple(value.shape) for name, value in converted.items()},
                                                      expected)
    reshaped = [f"{name} {list(converted[name].shape)} (expected {list(expected[name])})" for name in reshaped]
    for what, names in (("lacks", missing), ("has unexpected", unexpected), ("has tensors of other shapes:", reshaped)):
        if names:
            fail(f"{path}: the converted model {what} {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}")
    model.load_state_dict({name: value.float().contiguous() for name, value in converted.items()}, strict=False,
                          assign=True)
    if model.target_encoder is not None:
        model.target_encoder.to_empty(device="cpu")
        model.reset_target_encoder()
    model._set_encoder_trainable(not config.freeze_encoder)
    return model


VJEPA2_AC_CARD = """---
library_name: transformers
license: mit
tags: [world-model, v-jepa-2, robotics]
---
# V-JEPA 2-AC, converted

Meta's action-conditioned world model V-JEPA 2-AC (`{file}`, SHA-256 `{sha256}`, released at {url}): a V-JEPA 2
encoder ({encoder_parameters:.1f}M parameters; the released one is ViT-g) and a {layers}-layer, {width}-wide
action-conditioned predictor ({predictor_parameters:.1f}M parameters) trained on DROID robot video, converted to this
repository's `SurgicalWorldModel` (transformers, safetensors). The weights are Meta's, unchanged, released under the MIT licence
of facebookresearch/vjepa2 (Copyright (c) Meta Platforms, Inc. and affiliates).

```python
from transformers import AutoModel
model = AutoModel.from_pretrained("{save_path}", trust_remote_code=True)
latents = model.encode(frames)                         # frames (B, T, 3, {crop}, {crop}): each on its own
actions = model.transition_actions(per_step_actions)   # (B, T, 7) -> (B, T - 1, 7)
next_latents = model.predict(latents[:, :-1], actions, states)   # states (B, T, 7): the pose at each step
```

- Frames: {crop}x{crop} px, V-JEPA 2 preprocessed, one frame per step at {fps} fps (DROID's sampling).
- States (7 per step): the end-effector pose, position x, y, z, orientation as Euler angles (xyz), and the
  gripper's closedness.
- Actions (7 per step): the change of that pose from this step to the next (xyz, the rotation from one orientation
  to the next as Euler xyz, the gripper). The action at step t conditions the prediction of step t + 1 next to the
  state at t (`action_pairing="current"`).
- Predictions are layer-normalised without affine (`normalize_predictions`), as Meta's `normalize_reps`.
- Dropped from the file: {dropped}.
"""


def main_vjepa2_ac(args: argparse.Namespace) -> int:
    path = Path(args.vjepa2_ac_checkpoint) if args.vjepa2_ac_checkpoint else download_vjepa2_ac(args.cache_dir)
    if not path.is_file():
        fail(f"{path}: no such file (Meta's file is at {VJEPA2_AC_URL})")
    digest = file_sha256(path)
    encoder, predictor, others = read_vjepa2_ac(path)
    config = vjepa2_ac_config(path, encoder, predictor, args, digest)
    converted, dropped = convert_vjepa2_ac(path, encoder, predictor, config.encoder_config.hidden_size)
    model = load_converted(path, config, converted)
    model.save_pretrained(args.save_path)
    counts = {part: sum(parameter.numel() for parameter in getattr(model, part).parameters()) / 1e6
              for part in ("encoder", "predictor")}
    (Path(args.save_path) / "README.md").write_text(VJEPA2_AC_CARD.format(
        file=path.name, sha256=digest, url=VJEPA2_AC_URL, encoder_parameters=counts["encoder"],
        predictor_parameters=counts["predictor"], layers=config.predictor_num_hidden_layers,
        width=config.predictor_hidden_size, save_path=args.save_path, crop=config.encoder_config.crop_size,
        fps=config.fps, dropped=", ".join(dropped) or "nothing"))
    print(f"converted {path.name} (sha256 {digest[:12]}...): {len(converted)} tensors mapped"
          + (f", {len(dropped)} dropped ({', '.join(dropped)})" if dropped else "")
          + (f"; not read: {', '.join(others)}" if others else "")
          + f"; encoder {counts['encoder']:.1f} M, predictor {counts['predictor']:.1f} M parameters; saved to "
          f"{args.save_path}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.vjepa2_ac_checkpoint is not None or args.model_size == VJEPA2_AC:
        return main_vjepa2_ac(args)
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
    if args.predictor_position_embedding:
        overrides["predictor_position_embedding"] = True

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

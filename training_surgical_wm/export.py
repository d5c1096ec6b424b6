# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Exports a training script writes: a transformers directory (gathered on every rank, written by rank 0, swapped in
with a complete one in place at every moment), the world model's card, and the Hub repository it is pushed to."""

import contextlib
import json
import math
import struct
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from safetensors import safe_open

from .arguments import DataArguments, TrainArguments
from .checkpoints import PARTIAL_PREFIX, move_into_place, recover_directory


logger = get_logger(__name__, log_level="INFO")


def full_state_dict(accelerator: Accelerator, model) -> dict:
    """The whole model's state dict; every rank must call it (FSDP and ZeRO-3 gather the shards collectively).

    A model sharded with torch's FSDP2 (`fully_shard`) outside Accelerate, as on CPU processes where Accelerate
    never applies FSDP, has DTensor parameters that Accelerate does not know to gather: they are gathered here.
    """
    from torch.distributed.tensor import DTensor

    if not accelerator.is_fsdp2 and any(isinstance(parameter, DTensor) for parameter in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return accelerator.get_state_dict(model)


@contextlib.contextmanager
def own_class(model):
    """The model under its own class while it saves itself.

    FSDP2's `fully_shard` swaps a module's class for a generated `FSDP<Name>` subclass defined in torch; through it,
    `save_pretrained` would write `architectures: ["FSDP<Name>"]` and copy torch's FSDP sources instead of
    modeling_surgical_wm.py.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded_class = type(model)
    model.__class__ = next(cls for cls in sharded_class.__mro__ if not issubclass(cls, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded_class


def one_encoder(state_dict: dict, encoder: str = "target") -> dict:
    """The state dict of a fine-tuned model with one encoder under `encoder.`: the EMA target's weights (`target`,
    the encoder V-JEPA's downstream evaluations and V-JEPA 2-AC's training use) or the online one's (`online`). A
    frozen model's, which has one already, as it is."""
    if not any(name.startswith("target_encoder.") for name in state_dict):
        return state_dict
    source = "target_encoder." if encoder == "target" else "encoder."
    kept = {name: tensor for name, tensor in state_dict.items() if not name.startswith(("encoder.", "target_encoder."))}
    kept.update({f"encoder.{name.removeprefix(source)}": tensor for name, tensor in state_dict.items()
                 if name.startswith(source)})
    return kept


@contextlib.contextmanager
def frozen_encoder_config(config):
    """The config saved with a one-encoder export says `freeze_encoder=True`: that is what the files hold, and a model
    opened from them builds no second encoder (fine-tuning it again starts a new EMA target from the encoder)."""
    freeze_encoder = config.freeze_encoder
    config.freeze_encoder = True
    try:
        yield config
    finally:
        config.freeze_encoder = freeze_encoder


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def write_with_encoder(path: Path, state_dict: dict, encoder_file: Path) -> None:
    """Writes the safetensors file `path` of `state_dict`'s tensors and those of `encoder_file` (a released encoder's,
    `world_model.release_encoder`), which are read and written one at a time: the encoder is never whole in memory
    again. The layout is safetensors': a little-endian header length, the JSON header, the tensors' bytes in order."""
    names_of = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    with safe_open(str(encoder_file), framework="pt") as encoder:
        entries = {name: (encoder.get_slice(name).get_dtype(), list(encoder.get_slice(name).get_shape()))
                   for name in encoder.keys()}
        entries.update({name: (names_of[tensor.dtype], list(tensor.shape)) for name, tensor in tensors.items()})
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in sorted(entries):
            dtype, shape = entries[name]
            size = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(encoded)) + encoded)
            for name in sorted(entries):
                tensor = tensors[name] if name in tensors else encoder.get_tensor(name)
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


CROP_OPTIONS = ("crop_tool_band", "tool_band_fraction", "crop_black_margins")


def recorded_crop(metadata: dict) -> dict:
    """The crop of the picture a build applied to its frames, from its record (`build_metadata`): a SurgVU build's
    options; none for data that records no crop (MM-OR's frames are used whole)."""
    options = metadata.get("options") or {}
    if not any(name in options for name in CROP_OPTIONS):
        return {"crop_tool_band": False, "crop_black_margins": False}
    return {name: options[name] for name in CROP_OPTIONS if name in options}


def video_processor(config, crop: dict | None = None, num_frames: int | None = None, fps: float | None = None):
    """The model's preprocessing as the Hub video processor its exports ship (video_processing_surgical_wm.py):
    frames sampled at `fps` (default: the model's, or the training default for a model not trained yet), the picture
    cropped as `crop` says (`recorded_crop`; None: the SurgVU builder's defaults), V-JEPA 2's preprocessing at the
    encoder's crop size. `num_frames`, `fps`: the clips a probe was trained on, which the video-classification
    pipeline samples."""
    from video_processing_surgical_wm import SurgicalWorldModelVideoProcessor

    crop_size = config.encoder_config.crop_size
    return SurgicalWorldModelVideoProcessor(crop_size=crop_size, fps=float(fps or config.fps or DataArguments.fps),
                                            num_frames=num_frames, **(crop or {}))


def export_model(accelerator: Accelerator, model, directory: Path, trainer_state: dict, card: str,
                 encoder: str = "target", encoder_file: Path | None = None, processor=None) -> None:
    """A transformers directory written by rank 0 beside the old one, then swapped in so that a complete one exists at
    every moment; the state dict is gathered on every rank (FSDP). A fine-tuned model's export holds one encoder
    (`one_encoder`): the resumable checkpoints keep both. A released frozen encoder's weights come from
    `encoder_file`. `processor` (`video_processor`) is saved with its Hub file, so that `AutoVideoProcessor` and the
    video-classification pipeline find the model's preprocessing."""
    state_dict = one_encoder(full_state_dict(accelerator, model), encoder)
    if accelerator.is_main_process:
        recover_directory(directory)
        partial = directory.with_name(f"{PARTIAL_PREFIX}{directory.name}")
        plain_model = accelerator.unwrap_model(model)
        with own_class(plain_model), frozen_encoder_config(plain_model.config):
            # A copy: save_pretrained empties the dict it is given as it writes.
            plain_model.save_pretrained(partial, state_dict=dict(state_dict), safe_serialization=True)
        if encoder_file is not None:
            write_with_encoder(partial / "model.safetensors", state_dict, encoder_file)
        if processor is not None:
            processor.save_pretrained(partial)
        (partial / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, default=str))
        (partial / "README.md").write_text(card)
        move_into_place(partial, directory)
    accelerator.wait_for_everyone()


def card_metadata(config, metrics: dict, repo_id: str | None, dataset: str = "surgvu",
                  dataset_name: str = "SurgVU") -> str:
    """The model card's YAML header. A world model predicts latents under actions: its Hub task is robotics, not
    video classification (the probes of scripts/train_probe.py are the video classifiers). Validation figures go
    into the model-index, which scripts/evaluate_surgical_model.py --push_to_hub later replaces with its own."""
    from huggingface_hub import EvalResult, ModelCardData

    base_model = config.encoder_name_or_path or "facebook/vjepa2-vitl-fpc64-256"
    results = [
        EvalResult(task_type="robotics", task_name="Action-conditioned latent prediction", dataset_type=dataset,
                   dataset_name=dataset_name, dataset_split="validation", metric_type=name, metric_name=name,
                   metric_value=round(float(value), 6))
        for name, value in sorted(metrics.items())
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not name.endswith("num_clips")
    ]
    data = ModelCardData(
        library_name="transformers", pipeline_tag="robotics",
        base_model=base_model if "/" in base_model else "facebook/vjepa2-vitl-fpc64-256", datasets=[dataset_name],
        tags=["world-model", "v-jepa-2", "surgical-video", "action-conditioned"],
        model_name=(repo_id or "surgical-world-model").split("/")[-1] if results else None,
        eval_results=results or None,
    )
    return data.to_yaml()


def model_card(config, train_args: TrainArguments, trainer_state: dict, repo_id: str | None, dataset: str = "surgvu",
               dataset_name: str = "SurgVU", encoder: str = "target") -> str:
    """The world model's card: how to load it, how it was trained, which encoder it holds (`encoder`, of a fine-tuned
    one), its actions, the data's licence; `dataset` and `dataset_name` (the dataset table's name and display name)
    say what its validation figures were measured on."""
    metrics = trainer_state.get("best_metrics") or {}
    base_model = config.encoder_name_or_path or "facebook/vjepa2-vitl-fpc64-256"
    metric_rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items())
                            if isinstance(value, (int, float)))
    spec = config.action_spec or []
    load_id = repo_id or "<user>/<repo>"
    return f"""---
{card_metadata(config, metrics, repo_id, dataset, dataset_name)}
---

# Surgical world model on V-JEPA 2

An action-conditioned world model (V-JEPA 2-AC style) trained on {dataset_name} robotic surgery video with `train_hf.py`.
The V-JEPA 2 encoder ({base_model}, {encoder_phrase(config, encoder)}) encodes
each step; a block-causal predictor ({config.predictor_num_hidden_layers} layers, width
{config.predictor_hidden_size}) predicts the next step's latent from the past and {config.action_dim} action
dimensions per step.

## Load

```python
from transformers import AutoModel, AutoVideoProcessor
model = AutoModel.from_pretrained("{load_id}", trust_remote_code=True)
processor = AutoVideoProcessor.from_pretrained("{load_id}", trust_remote_code=True)
pixel_values_videos = processor("case.mp4", num_frames=8, return_tensors="pt")["pixel_values_videos"]  # 8 steps
latents = model.encode(pixel_values_videos)          # (B, T, 3, {config.encoder_config.crop_size}, {config.encoder_config.crop_size}) -> (B, T, N, D)
actions = model.transition_actions(labels)           # labels at each step (B, T, {config.action_dim}) -> (B, T - 1, {config.action_dim})
future = model.rollout(latents[:, :1], actions, steps=4)
```

## Training

Epochs: {trainer_state.get("epoch")}; optimizer steps: {trainer_state.get("global_step")}; batch size per device:
{train_args.batch_size}; learning rate: {train_args.learning_rate}; seed: {train_args.seed}.

| metric | value |
| --- | --- |
{metric_rows or "| validation_loss | n/a |"}

## Actions

Each step takes a {config.action_dim}-dimensional action: {", ".join(spec[:8])}{", ..." if len(spec) > 8 else ""}
(full list in `config.action_spec`). The transition from step t to step t + 1 takes the labels at
{"t + 1, those in force at its end" if config.action_pairing == "next" else "t, those in force at its start"}
(`config.action_pairing = "{config.action_pairing}"`; `model.transition_actions(labels)` pairs them).

## Data licence

Trained on SurgVU (Intuitive Surgical), whose licence is reported as CC BY-NC-SA 4.0: check the dataset's terms
before any use of these weights beyond non-commercial research.
"""


def encoder_phrase(config, encoder: str) -> str:
    """What the card says of the exported encoder."""
    if config.freeze_encoder:
        return "frozen"
    if encoder == "target":
        return ("fine-tuned with EMA targets; this export holds the EMA target encoder, as V-JEPA's downstream "
                "evaluations use it")
    return "fine-tuned with EMA targets; this export holds the online encoder (`--export_encoder online`)"


def create_hub_repo(accelerator: Accelerator, train_args: TrainArguments, output_dir: Path) -> str | None:
    """With `--push_to_hub`, the Hub repository the run uploads to (created on the main process): `--hub_model_id`,
    else output_dir's name; None otherwise and on the other processes."""
    if not (train_args.push_to_hub and accelerator.is_main_process):
        return None
    from huggingface_hub import create_repo

    return create_repo(train_args.hub_model_id or output_dir.name, private=train_args.hub_private,
                       exist_ok=True).repo_id


def push_export(accelerator: Accelerator, repo_id: str | None, directory: Path, commit_message: str) -> None:
    """Uploads an export directory (weights, config, model files, card) from the main process; never checkpoints."""
    if repo_id is None or not accelerator.is_main_process:
        return
    from huggingface_hub import upload_folder

    upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message=commit_message,
                  ignore_patterns=["checkpoints/*", "*.pkl", "*.bin"])
    logger.info(f"pushed {directory} to {repo_id}")

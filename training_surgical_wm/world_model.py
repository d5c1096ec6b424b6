# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The world model of a training run: loaded from a checkpoint or V-JEPA 2 for the data's action spec, and validated
per clip with seeded masks."""

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from safetensors.torch import save_file

from configuration_surgical_wm import VJEPA2_PRESETS, SurgicalWorldModelConfig
from modeling_surgical_wm import SurgicalWorldModel

from .arguments import ModelArguments, parse_config_overrides
from .data import CheckedBatch, SkippedClips, clip_inputs, gather_clip_values
from .loading import check_checkpoint_folder, saved_shapes


logger = get_logger(__name__, log_level="INFO")


def check_pretrained_checkpoint(source: str) -> dict:
    """The saved config of a local `--pretrained_checkpoint` (a world model or V-JEPA 2 whose weights match it), `{}`
    for a V-JEPA 2 preset or Hub id; one line naming the folder otherwise. Cheap (headers only): train_hf.py calls it
    before building the data, so a wrong folder is refused before an hour of preparation, not after."""
    if Path(source).exists():
        return check_checkpoint_folder(source, ("surgical_wm", "vjepa2"))
    if source not in VJEPA2_PRESETS and not source.startswith("facebook/"):
        raise SystemExit(
            f"error: --pretrained_checkpoint {source!r} is neither a directory nor a V-JEPA 2 checkpoint id. Build one "
            "with `python scripts/load_vjepa2_pretrained.py --model_size vitl --save_path "
            f"{source}` or pass a facebook/vjepa2-* id."
        )
    return {}


def load_world_model(model_args: ModelArguments, action_spec: list[str], fps: float | None = None,
                     saved: dict | None = None) -> SurgicalWorldModel:
    """The world model to train for data with `action_spec` sampled at `fps` (None: the data has no frame rate, as
    MM-OR's timepoints): a surgical world model (its action embedding re-initialised when the actions differ) or
    V-JEPA 2 with a new predictor. The config records the action spec, its groups and `fps` for the export. A local
    folder is checked first (`check_pretrained_checkpoint`, whose result a caller that already ran it passes as
    `saved`): transformers would fill missing weights at random."""
    overrides = {
        "action_dim": len(action_spec),
        "action_spec": action_spec,
        # SurgVU's and MM-OR's actions are one-hot choices: a tool per arm and a task; a phase and a next action.
        "discrete_action_groups": SurgicalWorldModelConfig.spec_groups(action_spec),
        "freeze_encoder": model_args.encoder_frozen,
        "use_mask_aux": model_args.use_mask_aux,
        "lambda_mask": model_args.lambda_mask,
        "fps": fps,
        **parse_config_overrides(model_args.config_overrides),
    }
    if model_args.action_pairing is not None:
        overrides["action_pairing"] = model_args.action_pairing
    source = model_args.pretrained_checkpoint
    saved = check_pretrained_checkpoint(source) if saved is None else saved
    if saved.get("model_type") == "surgical_wm":
        if saved.get("state_dim"):
            # Neither SurgVU nor MM-OR records states (a converted V-JEPA 2-AC has DROID's end-effector pose): the
            # state token goes, and the predictor's layers keep what they learnt.
            overrides["state_dim"] = 0
        model = SurgicalWorldModel.from_pretrained(source, ignore_mismatched_sizes=True, **overrides)
        try:  # `from_pretrained` sets the keyword arguments after the config's own checks
            model.config._check_values()
        except ValueError as error:
            raise SystemExit(f"error: world model config: {error}") from None
        reinitialise_resized(model, source)
        saved_spec = saved.get("action_spec")
        if saved.get("action_dim") != len(action_spec):
            logger.warning(
                f"{source} was built for {saved.get('action_dim')} action dimensions, the data has {len(action_spec)}: "
                "the action embedding starts from scratch."
            )
        elif saved_spec is not None and list(saved_spec) != list(action_spec):
            # Same size, other meaning (e.g. SurgVU's tools and tasks, then MM-OR's phases and next actions): the
            # learnt embedding would map the new actions onto the old ones' directions.
            changed = sum(old != new for old, new in zip(saved_spec, action_spec))
            logger.warning(
                f"{source} was trained with another action spec ({changed} of {len(action_spec)} dimensions name "
                f"other actions, e.g. {saved_spec[0]!r} -> {action_spec[0]!r}): the action embedding is re-initialised."
            )
            with torch.no_grad():  # torch's own init: transformers' skips parameters it has loaded
                torch.nn.init.trunc_normal_(model.predictor.action_proj.weight, std=model.config.initializer_range)
                torch.nn.init.zeros_(model.predictor.action_proj.bias)
        return model
    try:
        return SurgicalWorldModel.from_vjepa2(source, **overrides)
    except OSError as error:
        raise SystemExit(f"error: {error}") from None
    except ValueError as error:
        raise SystemExit(f"error: world model config: {error}") from None


def reinitialise_resized(model: SurgicalWorldModel, source: str) -> None:
    """Starts afresh every projection whose size the data changed (the action embedding for another action size)
    and names in the log each tensor re-initialised, each one new to this model (initialised afresh), and each one of
    `source` the model no longer has (the state token's, for data without states). transformers re-initialises a
    resized weight but keeps its bias, which was learnt for the old inputs: both start afresh here. The encoder and
    the predictor's layers are kept."""
    shapes = saved_shapes(Path(source))
    current = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("target_encoder.")}
    resized = {name.rsplit(".", 1)[0] for name, tensor in current.items()
               if name in shapes and tuple(tensor.shape) != shapes[name]}
    projections = {name for name in resized if isinstance(model.get_submodule(name), torch.nn.Linear)}
    with torch.no_grad():  # torch's own init: transformers' skips parameters it has loaded
        for module_name in sorted(projections):
            module = model.get_submodule(module_name)
            torch.nn.init.trunc_normal_(module.weight, std=model.config.initializer_range)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    reinitialised = [name for name, tensor in current.items() if name in shapes and (
        tuple(tensor.shape) != shapes[name] or name.rsplit(".", 1)[0] in projections)]
    added = [name for name in current if name not in shapes]
    dropped = sorted(name for name in shapes if name not in current and not name.startswith("target_encoder."))
    for what, names in (("re-initialised, their sizes differ for this data", reinitialised),
                        ("new to this model, initialised afresh", added),
                        ("dropped, the model for this data has no place for them", dropped)):
        if names:
            logger.warning(f"{source}: {what}: {', '.join(names)}")


def contrastive_off_reason(config, batch_size: int) -> str | None:
    """Why the contrastive term adds nothing to this run, or None: with `contrastive_negatives="batch"` it compares
    each clip with the other clips of its batch on its process, so a batch of one clip per device leaves it at 0
    whatever its weight."""
    if config.contrastive_weight > 0 and config.contrastive_negatives == "batch" and batch_size < 2:
        return (f"the contrastive loss is off: it compares each clip with the other clips of its batch on its process, "
                f"and --batch_size {batch_size} gives it none, so it stays 0 (contrastive_weight "
                f"{config.contrastive_weight:g} adds nothing); a batch of 2 or more clips per device turns it on, "
                f"as does --config_overrides contrastive_negatives=clip_steps (the other steps of the clip)")
    return None


def release_encoder(accelerator: Accelerator, model, path: Path) -> Path | None:
    """Takes a frozen encoder's weights out of memory once the latent cache holds every clip: the run never encodes
    again. They are written once to `path` (the main process), from which the exports read them back one tensor at a
    time (`export.write_with_encoder`); checkpoints leave them out, since a resumed run loads the encoder from
    --pretrained_checkpoint to check its cache. Returns `path`, or None where the encoder stays (sharded by FSDP or
    DeepSpeed, whose wrappers own the parameters)."""
    from torch.distributed.tensor import DTensor

    world_model = accelerator.unwrap_model(model)
    sharded = any(isinstance(parameter, DTensor) for parameter in world_model.encoder.parameters())
    if sharded or accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_GPU,
                                                       DistributedType.MULTI_CPU):
        logger.info("latent cache: complete, but the encoder stays in memory (its weights are sharded)")
        return None
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in world_model.encoder.state_dict(
            prefix="encoder.").items()}, str(path), metadata={"format": "pt"})
    accelerator.wait_for_everyone()
    size = sum(parameter.numel() * parameter.element_size() for parameter in world_model.encoder.parameters())
    world_model.encoder.to("meta")

    def leave_out_encoder(module, state_dict, prefix, local_metadata) -> None:
        for name in [name for name in state_dict if name.startswith(f"{prefix}encoder.")]:
            del state_dict[name]

    def encoder_not_missing(module, incompatible_keys) -> None:
        incompatible_keys.missing_keys[:] = [name for name in incompatible_keys.missing_keys
                                             if not name.startswith("encoder.")]

    world_model.register_state_dict_post_hook(leave_out_encoder)
    world_model.register_load_state_dict_post_hook(encoder_not_missing)
    logger.info(f"latent cache: complete, so the frozen encoder's weights ({size / 2**30:.2f} GiB) leave memory for the "
                f"rest of the run; the exports read them back from {path}")
    return path


def seeded_token_masks(config, sample_ids: torch.Tensor, num_steps: int, seed: int) -> torch.Tensor:
    """Mask-denoising masks `(B, num_steps, tokens)` drawn from (seed, sample id): the same clip gets the same mask
    whatever the batch, the process count or the epoch, so validation losses (and the `best/` choice) reproduce."""
    masks = []
    for sample_id in sample_ids.tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(sample_id))
        masks.append(torch.rand(num_steps, config.tokens_per_step, generator=generator) < config.mask_ratio)
    return torch.stack(masks).to(sample_ids.device)


@torch.no_grad()
def validation_per_clip(accelerator: Accelerator, model, dataloader, seed: int,
                        skipped: SkippedClips | None = None) -> dict[str, torch.Tensor]:
    """Validation metrics of every clip of the split, in loader order, whatever the number of processes.

    Everything comes from the wrapped model's forward (FSDP and DeepSpeed gather parameters there only). Per-clip
    values are gathered with `gather_for_metrics`, which drops the samples padded in to even out the last batch.
    The rollout error is that of a rollout from each clip's first step over all its later steps; its baseline copies
    that first (context) latent. The contrastive loss compares a clip with the others of its batch (and, with
    `contrastive_negatives="clip_steps"`, its steps with all the batch's), so it alone depends on how the batches
    fall. Clips that fail to decode are left out and counted in `skipped`, and each clip is kept once
    (`gather_clip_values`).
    """
    model.eval()
    config = accelerator.unwrap_model(model).config
    per_clip = {"sample_id": [], "temporal_loss": [], "mask_loss": [], "contrastive_loss": [], "rollout_error": [],
                "copy_context_error": []}
    seen = set()
    for batch in dataloader:
        checked = skipped.check(batch) if skipped is not None else CheckedBatch(batch, False, False, False)
        batch = checked.batch
        inputs, sample_ids = clip_inputs(batch), batch["sample_id"]
        batch_size = len(sample_ids)
        num_steps = (batch["latents"].shape[1] if "latents" in batch
                                    else batch["pixel_values_videos"].shape[1] // config.frames_per_step)
        token_mask = seeded_token_masks(config, sample_ids, num_steps - 1, seed) if config.use_mask_aux else None
        output = model(**inputs, actions=batch["actions"], token_mask=token_mask, return_rollout_error=True)
        values = {
            "sample_id": sample_ids,
            "temporal_loss": output.clip_temporal_loss.float(),
            "mask_loss": (output.clip_mask_loss.float() if output.clip_mask_loss is not None
                          else torch.zeros(batch_size, device=sample_ids.device)),
            "contrastive_loss": output.contrastive_loss.float().expand(batch_size),
            "rollout_error": output.rollout_error.float(),  # (B, S - 1): per horizon
            "copy_context_error": output.copy_context_error.float(),
        }
        gathered = gather_clip_values(accelerator, checked, values, seen)
        for name, value in (gathered or {}).items():
            per_clip[name].append(value.cpu())
    return {name: torch.cat(values) if values else torch.zeros(0) for name, values in per_clip.items()}


def run_validation(accelerator: Accelerator, model, dataloader, seed: int, skipped: SkippedClips | None = None) -> dict:
    """Mean validation metrics over the clips of the split (see `validation_per_clip`)."""
    per_clip = validation_per_clip(accelerator, model, dataloader, seed, skipped)
    config = accelerator.unwrap_model(model).config
    metrics = {name: values.float().mean().item() for name, values in per_clip.items() if name != "sample_id"}
    metrics["loss"] = (metrics["temporal_loss"] + config.contrastive_weight * metrics["contrastive_loss"]
                       + (config.lambda_mask * metrics["mask_loss"] if config.use_mask_aux else 0.0))
    metrics["num_clips"] = len(per_clip["temporal_loss"])
    return metrics

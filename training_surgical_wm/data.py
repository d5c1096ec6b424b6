# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The data of a run: the splits of `--dataset`, its action spec and clip transform, a batch's clip input, and the
latent cache of a frozen encoder (built on every process, verified, or off with a reason)."""

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch.utils.data import DataLoader

from dataset_surgvu import ClipTransform, SurgVUClips, get_action_spec, load_surgvu
from dataset_surgvu.latent_cache import (
    LatentCache,
    LatentCacheBuilder,
    LatentCacheKey,
    LatentClips,
    module_fingerprint,
    shard_clips,
)

from .arguments import DataArguments


logger = get_logger(__name__, log_level="INFO")


def load_dataset_splits(data_args: DataArguments):
    """The splits for these data options (one definition, shared by the scripts): SurgVU's `train` and `validation`
    (split by case), or MM-OR's official `train`, `validation` and `test` takes."""
    if data_args.dataset == "mmor":
        from dataset_mmor import load_mmor

        return load_mmor(data_args.data_root, data_args.camera, frames_per_clip=data_args.frames_per_clip,
                         clip_stride=data_args.clip_stride, cache_dir=data_args.dataset_cache_dir)
    return load_surgvu(
        data_args.data_root, data_args.labels_dir, fps=data_args.fps, frames_per_clip=data_args.frames_per_clip,
        clip_stride=data_args.clip_stride, validation_fraction=data_args.validation_fraction,
        split_seed=data_args.split_seed, cache_dir=data_args.dataset_cache_dir,
    )


def dataset_action_spec(data_args: DataArguments, dataset) -> list[str]:
    """One name per action dimension of the dataset: SurgVU's tools per arm and task, or MM-OR's robot phase and next
    action."""
    if data_args.dataset == "mmor":
        from dataset_mmor import get_mmor_action_spec

        return get_mmor_action_spec(dataset)
    return get_action_spec(dataset)


def clip_transform(data_args: DataArguments, crop_size: int):
    """The dataset's clip transform (decoding in the loader workers, then the same V-JEPA 2 preprocessing)."""
    if data_args.dataset == "mmor":
        from dataset_mmor import MMORClipTransform

        return MMORClipTransform(crop_size=crop_size)
    return ClipTransform(crop_size=crop_size)


def clip_inputs(batch: dict) -> dict:
    """The model's clip input of a batch: cached `latents`, or `pixel_values_videos` to encode."""
    if "latents" in batch:
        return {"latents": batch["latents"]}
    return {"pixel_values_videos": batch["pixel_values_videos"]}


# -------------------------------------------------------------------------------------------------- latent cache
def latent_cache_off_reason(encoder_frozen: bool, data_args: DataArguments, transform) -> str | None:
    """Why the latent cache cannot serve this run, or None when it can."""
    if data_args.no_cache:
        return "--no_cache"
    if not encoder_frozen:
        return "the encoder trains, so its latents change at every step"
    if not transform.deterministic:
        return "the clip transform is random, so a clip's pixels change between epochs"
    return None


def latent_cache_key(autocast: str, model, split, transform, data_args: DataArguments) -> LatentCacheKey:
    """The key a latent cache of `split` is valid for; `autocast` is the run's mixed precision ("no", "bf16", ...),
    which changes what the encoder outputs."""
    config = model.config
    return LatentCacheKey(
        encoder_hash=module_fingerprint(model.encoder),
        preprocessing={"crop_size": transform.crop_size, "image_mean": list(transform.image_mean),
                       "image_std": list(transform.image_std), "fps": data_args.fps,
                       "frames_per_clip": data_args.frames_per_clip, "frames_per_step": config.frames_per_step,
                       "normalize_latents": config.normalize_latents, "autocast": str(autocast)},
        dataset_fingerprint=split._fingerprint,
        precision=data_args.cache_precision,
    )


@torch.no_grad()
def build_latent_cache(accelerator: Accelerator, model, split, transform, directory: Path, key: LatentCacheKey,
                       shard_size: int, batch_size: int, num_workers: int) -> LatentCache:
    """Encodes the clips of `split` once into `directory`, or reuses and verifies what is there.

    Every process encodes its share of the shards; rank 0 writes the manifest last. Shards already done (record
    present, checksum right) are kept: a killed build resumes, and a corrupted shard is rewritten.
    """
    builder = LatentCacheBuilder(directory, key, len(split), shard_size)
    if accelerator.is_main_process:
        builder.reset_if_stale()
    accelerator.wait_for_everyone()
    pending = builder.prepare(accelerator.process_index, accelerator.num_processes)
    if pending:
        logger.info(f"latent cache {directory}: encoding {len(pending)} of {builder.num_shards} shards on process "
                    f"{accelerator.process_index}", main_process_only=False)
        indices = [index for shard in pending for index in shard_clips(shard, len(split), shard_size)]
        loader = DataLoader(torch.utils.data.Subset(SurgVUClips(split, transform), indices), batch_size=batch_size,
                            num_workers=num_workers)
        model.to(accelerator.device).eval()
        buffered, written = [], 0
        for batch in loader:
            with accelerator.autocast():
                buffered.append(model.encode(batch["pixel_values_videos"].to(accelerator.device)).float().cpu())
            while pending and sum(len(latents) for latents in buffered) >= len(shard_clips(pending[0], len(split),
                                                                                           shard_size)):
                latents = torch.cat(buffered)
                size = len(shard_clips(pending[0], len(split), shard_size))
                builder.write_shard(pending.pop(0), latents[:size])
                buffered, written = [latents[size:]], written + 1
                if written % 10 == 0 or not pending:
                    logger.info(f"latent cache: {written} shard(s) written by process {accelerator.process_index}",
                                main_process_only=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        builder.finish()
    accelerator.wait_for_everyone()
    return LatentCache(directory, key)



def clip_datasets(accelerator: Accelerator, model, dataset, transform, data_args: DataArguments, output_dir: Path,
                  cache_off: str | None, batch_size: int, num_workers: int) -> dict:
    """The torch datasets of every split: from the latent cache of `model`'s frozen encoder (built or verified here,
    under `--cache_dir` or `output_dir/latent_cache`) unless `cache_off` says why not, else decoded clips."""
    clips = {name: SurgVUClips(split, transform) for name, split in dataset.items()}
    if cache_off is not None:
        logger.info(f"latent cache: off ({cache_off})")
        return clips
    cache_root = Path(data_args.cache_dir) if data_args.cache_dir else output_dir / "latent_cache"
    caches = {}
    for name, split in dataset.items():
        key = latent_cache_key(accelerator.mixed_precision, model, split, transform, data_args)
        caches[name] = build_latent_cache(accelerator, model, split, transform, cache_root / name, key,
                                          data_args.cache_shard_size, batch_size, num_workers)
        clips[name] = LatentClips(split, caches[name])
    logger.info(f"latent cache: {cache_root} ({data_args.cache_precision}, "
                f"{caches['train'].bytes_per_clip / 2**20:.2f} MiB per clip): the encoder and the video decoder "
                "are not run again while training")
    return clips

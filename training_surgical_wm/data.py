# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The data of a run: the dataset `--dataset` names, read once through the table of dataset_surgvu.catalog, its
splits for the data options, a batch's clip input, and the clip datasets of every split (from the latent cache of
dataset_surgvu.latent_cache when it can serve the run, else decoded)."""

from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger

from dataset_surgvu import SurgVUClips, SurgVULabelError
from dataset_surgvu.catalog import DatasetEntry, get_dataset
from dataset_surgvu.latent_cache import cached_clip_datasets, latent_cache_root

from .arguments import DataArguments


logger = get_logger(__name__, log_level="INFO")


def dataset_entry(data_args: DataArguments) -> DatasetEntry:
    """The table's entry of `--dataset`: its split loader, transform, action spec, build metadata, probe targets."""
    return get_dataset(data_args.dataset)


def load_dataset_splits(data_args: DataArguments):
    """The splits for these data options (one definition, shared by the scripts): SurgVU's `train` and `validation`
    (split by case), or MM-OR's official `train`, `validation` and `test` takes. A SurgVU label file of another format
    stops the script with one line naming it."""
    try:
        return dataset_entry(data_args).load_splits(
            data_args.data_root, camera=data_args.camera, labels_dir=data_args.labels_dir, fps=data_args.fps,
            frames_per_clip=data_args.frames_per_clip, clip_stride=data_args.clip_stride,
            validation_fraction=data_args.validation_fraction, split_seed=data_args.split_seed,
            skip_missing_frames=data_args.skip_missing_frames, cache_dir=data_args.dataset_cache_dir,
        )
    except SurgVULabelError as error:
        raise SystemExit(f"error: {error}") from None


def split_groups(dataset, metadata: dict) -> str:
    """What the clips of the train and validation splits come from, for the banner: cases (SurgVU's build records
    them) or takes (MM-OR's rows name theirs)."""
    if "train_cases" in metadata:
        return f"{len(metadata['train_cases'])} / {len(metadata.get('validation_cases', []))} cases"
    if "take" in dataset["train"].column_names:
        return f"{len(set(dataset['train']['take']))} / {len(set(dataset['validation']['take']))} takes"
    return "0 / 0 cases"


def data_fps(metadata: dict) -> float | None:
    """The frames per second the clips were sampled at, as the build recorded it (SurgVU); None when the data has no
    frame rate of ours (MM-OR's timepoints are its own)."""
    return metadata.get("options", {}).get("fps")


def clip_inputs(batch: dict) -> dict:
    """The model's clip input of a batch: cached `latents`, or `pixel_values_videos` to encode."""
    if "latents" in batch:
        return {"latents": batch["latents"]}
    return {"pixel_values_videos": batch["pixel_values_videos"]}


def clip_datasets(accelerator: Accelerator, model, dataset, transform, data_args: DataArguments, output_dir: Path,
                  cache_off: str | None, batch_size: int, num_workers: int) -> dict:
    """The torch datasets of every split: from the latent cache of `model`'s frozen encoder (built or verified here,
    under `--cache_dir` or `output_dir/latent_cache`) unless `cache_off` says why not, else decoded clips."""
    if cache_off is not None:
        logger.info(f"latent cache: off ({cache_off})")
        return {name: SurgVUClips(split, transform) for name, split in dataset.items()}
    return cached_clip_datasets(
        accelerator, model, dataset, transform, latent_cache_root(data_args.cache_dir, output_dir), fps=data_args.fps,
        frames_per_clip=data_args.frames_per_clip, precision=data_args.cache_precision,
        shard_size=data_args.cache_shard_size, batch_size=batch_size, num_workers=num_workers,
        verify=data_args.verify_cache,
    )

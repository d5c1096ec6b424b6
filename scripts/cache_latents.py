#!/usr/bin/env python
"""Builds the latent cache of a frozen-encoder run ahead of training, e.g. on a GPU node before a long run.

    python scripts/cache_latents.py --data_root /data/surgvu --pretrained_checkpoint checkpoints/vjepa2_vitl_surgical
    accelerate launch scripts/cache_latents.py --data_root /data/surgvu --output_dir outputs/surgical_wm --split train

The model, data and cache options are the training script's (same flags, same defaults), and so is the place:
`--cache_dir`, else `<output_dir>/latent_cache`, in `<split>/<dataset fingerprint>` (one folder per clip layout, as
`--clip_stride` makes another). A later `train_hf.py` run with the same options finds the cache, verifies it and
trains from it without decoding or encoding again; the key records the mixed precision, so give the run's
`--mixed_precision` here too. Under `accelerate launch` each process encodes its share of the shards. Prints the
shards written, the bytes per clip and what the whole of SurgVU would take at these settings. Exits with status 2
when the cache cannot serve such a run (`--no_cache`, a trained encoder, a random transform).
"""

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import HfArgumentParser

from dataset_surgvu.latent_cache import (
    PRECISIONS,
    VERIFY_MODES,
    build_latent_cache,
    bytes_per_clip,
    latent_cache_dirs,
    latent_cache_keys,
    latent_cache_off_reason,
    latent_cache_root,
)
from training_surgical_wm.accelerator import available_cores
from training_surgical_wm.arguments import DataArguments, ModelArguments, TrainArguments
from training_surgical_wm.data import dataset_entry, load_dataset_splits
from training_surgical_wm.world_model import load_world_model


SURGVU_HOURS = 840  # "280 videos from 155 training sessions, 60 fps, 1280x720, over 840 hours" (the dataset paper)


@dataclass
class CacheArguments:
    output_dir: str = field(
        default=TrainArguments.output_dir,
        metadata={"help": "The training run's output_dir: the cache goes to "
                          "<output_dir>/latent_cache/<split>/<dataset fingerprint> unless --cache_dir is given."},
    )
    split: str = field(default="all", metadata={"help": "train, validation, test or all."})
    batch_size: int = field(default=TrainArguments.batch_size, metadata={"help": "Clips per encoder forward pass."})
    device: str | None = field(default=None, metadata={"help": "cuda, mps or cpu (default: what accelerate picks)."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, fp16 or bf16: the training run's (the cache key records it)."}
    )


def format_bytes(size: float) -> str:
    """Decimal units, as disks are sold: TB from 10^12 bytes, GB from 10^9, MB below."""
    if size >= 1e12:
        return f"{size / 1e12:.2f} TB"
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.2f} MB"


def clip_bytes_formula(latent_shape: tuple[int, int, int], precision: str) -> str:
    steps, tokens, dim = latent_shape
    if precision == "float16":
        return f"{steps} steps x {tokens} tokens x {dim} dims x 2 B"
    return f"{steps} steps x {tokens} tokens x ({dim} int8 + 4 B scale)"


def shard_files(directory: Path) -> dict[str, int]:
    """Each finished shard's file and its inode: a shard a build wrote is a new file (renamed into place), while one
    found intact after a touch keeps its inode (only its record is updated)."""
    if not directory.is_dir():
        return {}
    return {path.name: path.stat().st_ino for path in directory.glob("shard-*.safetensors")
            if path.with_suffix(".json").is_file()}


def main(argv=None) -> int:
    parser = HfArgumentParser((CacheArguments, ModelArguments, DataArguments), description=__doc__.splitlines()[0])
    args, model_args, data_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.finetune_encoder:  # as training_surgical_wm.arguments.parse_training_arguments does
        model_args.encoder_frozen = False
    if args.split not in ("train", "validation", "test", "all"):
        parser.error(f"--split must be train, validation, test or all, got {args.split}")
    if args.device not in (None, "cuda", "mps", "cpu"):
        parser.error(f"--device must be cuda, mps or cpu, got {args.device}")
    if data_args.cache_precision not in PRECISIONS:
        parser.error(f"--cache_precision must be one of {', '.join(PRECISIONS)}, got {data_args.cache_precision}")
    if data_args.verify_cache not in VERIFY_MODES:
        parser.error(f"--verify_cache must be one of {', '.join(VERIFY_MODES)}, got {data_args.verify_cache}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible.", file=sys.stderr)
        return 2

    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_local_main_process else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)

    entry = dataset_entry(data_args)
    with accelerator.main_process_first():
        dataset = load_dataset_splits(data_args)
    model = load_world_model(model_args, entry.action_spec(dataset))
    transform = entry.transform(crop_size=model.config.encoder_config.crop_size)
    off_reason = latent_cache_off_reason(no_cache=data_args.no_cache, encoder_frozen=model_args.encoder_frozen,
                                         transform=transform)
    if off_reason is not None:
        print(f"error: the latent cache cannot serve this run: {off_reason}", file=sys.stderr)
        return 2

    names = list(dataset) if args.split == "all" else [args.split]
    cache_root = latent_cache_root(data_args.cache_dir, args.output_dir)
    num_workers = min(data_args.num_workers, available_cores())
    config = model.config
    latent_shape = (data_args.frames_per_clip // config.frames_per_step, config.tokens_per_step, config.latent_dim)
    per_clip = bytes_per_clip(latent_shape, data_args.cache_precision)

    keys = latent_cache_keys(model, {name: dataset[name] for name in names}, transform, fps=data_args.fps,
                             frames_per_clip=data_args.frames_per_clip, precision=data_args.cache_precision,
                             autocast=accelerator.mixed_precision)
    directories = latent_cache_dirs(accelerator, cache_root, keys)
    total_clips, disk_bytes = 0, 0
    for name in names:
        split, directory, started = dataset[name], directories[name], time.perf_counter()
        before = shard_files(directory)
        cache = build_latent_cache(accelerator, model, split, transform, directory, keys[name],
                                   shard_size=data_args.cache_shard_size, batch_size=args.batch_size,
                                   num_workers=num_workers, verify=data_args.verify_cache)
        after = shard_files(directory)
        written = sum(before.get(shard) != inode for shard, inode in after.items())
        shards = cache.manifest["shards"]
        assert not len(cache) or cache.bytes_per_clip == per_clip, (cache.bytes_per_clip, per_clip)
        total_clips += len(cache)
        disk_bytes += sum((directory / shard["file"]).stat().st_size for shard in shards)
        if accelerator.is_main_process:
            print(f"{name}: {len(shards)} shard(s) of up to {cache.shard_size} clips, {len(cache)} clips in "
                  f"{directory} ({written} written now, {len(shards) - written} kept; "
                  f"{time.perf_counter() - started:.1f}s)")

    if not accelerator.is_main_process:
        return 0
    precision = data_args.cache_precision
    print(f"bytes per clip: {per_clip:,} ({precision}, latents {latent_shape}: "
          f"{clip_bytes_formula(latent_shape, precision)})")
    print(f"this dataset ({' + '.join(names)}): {total_clips:,} clips x {per_clip:,} B = {total_clips * per_clip:,} B "
          f"= {format_bytes(total_clips * per_clip)} ({format_bytes(disk_bytes)} on disk with the shard headers)")
    # Non-overlapping clips (train_hf's layout): every frame sampled at `fps` belongs to at most one clip.
    frames = round(SURGVU_HOURS * 3600 * data_args.fps)
    clips = frames // data_args.frames_per_clip
    print(f"SurgVU projection ({SURGVU_HOURS} h of video at {data_args.fps:g} fps, {precision}): "
          f"{SURGVU_HOURS} h x 3600 s/h x {data_args.fps:g} fps = {frames:,} frames; "
          f"{frames:,} / {data_args.frames_per_clip} frames per clip = {clips:,} clips; "
          f"{clips:,} x {per_clip:,} B = {clips * per_clip:,} B = {format_bytes(clips * per_clip)}")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())

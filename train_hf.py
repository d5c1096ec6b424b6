#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Fine-tunes a surgical world model on SurgVU with Accelerate, from V-JEPA 2 to a Hub-ready model.

    accelerate launch train_hf.py --data_root /data/surgvu --pretrained_checkpoint checkpoints/vjepa2_vitl_surgical
    accelerate launch --config_file configs/accelerate/fsdp_vitg.yaml train_hf.py config.yaml --num_epochs 3

Arguments come from the command line, from a YAML or JSON file given first, or both (the command line wins).
Outputs: `output_dir/best` (lowest validation loss) and `output_dir/final`, each a transformers directory that
`AutoModel.from_pretrained(dir, trust_remote_code=True)` loads; `output_dir/checkpoints/checkpoint-<step>` to resume.
"""

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from transformers import HfArgumentParser, get_scheduler

from configuration_surgical_wm import VJEPA2_PRESETS, SurgicalWorldModelConfig
from dataset_surgvu import (
    ClipTransform,
    EpochShuffleSampler,
    SurgVUClips,
    get_action_spec,
    get_build_metadata,
    load_surgvu,
)
from dataset_surgvu.latent_cache import (
    PRECISIONS,
    LatentCache,
    LatentCacheBuilder,
    LatentCacheKey,
    LatentClips,
    module_fingerprint,
    shard_clips,
)
from modeling_surgical_wm import SurgicalWorldModel


logger = get_logger(__name__, log_level="INFO")

TRAIN_METRICS = ("loss", "temporal_loss", "contrastive_loss", "mask_loss")  # averaged over an epoch's batches
CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
TRAINING_STATE = "training_state.json"


# ------------------------------------------------------------------------------------------------------ arguments
@dataclass
class ModelArguments:
    pretrained_checkpoint: str = field(
        default="checkpoints/vjepa2_vitl_surgical",
        metadata={"help": "A world model saved by scripts/load_vjepa2_pretrained.py, a local V-JEPA 2 directory, "
                          "a facebook/vjepa2-* id, or a preset (vitl, vith, vitg, vitg384)."},
    )
    encoder_frozen: bool = field(default=True, metadata={"help": "Keep the V-JEPA 2 encoder frozen (default)."})
    finetune_encoder: bool = field(default=False, metadata={"help": "Fine-tune the encoder (EMA targets)."})
    use_mask_aux: bool = field(default=False, metadata={"help": "Add the mask-denoising auxiliary loss."})
    lambda_mask: float = field(default=0.1, metadata={"help": "Weight of the mask-denoising loss."})
    activation_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})


@dataclass
class DataArguments:
    dataset: str = field(
        default="surgvu",
        metadata={"help": "surgvu (stage 1) or mmor (stage 2: MM-OR, official splits, actions = robot phase and next "
                          "action)."},
    )
    data_root: str = field(default="data/surgvu", metadata={"help": "Folder holding surgvu24/ and labels/ (SurgVU), "
                                                                    "or MM-OR_data/ (MM-OR)."})
    camera: str = field(default="azure:1", metadata={"help": "MM-OR camera: azure:1..5 or simstation:0..3."})
    labels_dir: str | None = field(default=None, metadata={"help": "labels/ when it is not next to surgvu24/."})
    fps: float = field(default=4.0, metadata={"help": "Frames per second sampled from the videos."})
    frames_per_clip: int = field(default=8, metadata={"help": "Frames per training clip."})
    clip_stride: int | None = field(
        default=None, metadata={"help": "Sampled frames (MM-OR: timepoints) between clip starts (default: "
                                        "frames_per_clip, no overlap; 1 gives a clip ending at every frame)."}
    )
    validation_fraction: float = field(default=0.2, metadata={"help": "Share of cases held out for validation."})
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the case split (apart from --seed: evaluation finds the same split)."}
    )
    num_workers: int = field(default=8, metadata={"help": "DataLoader workers (capped at the available cores)."})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "Where the Arrow files of the dataset go."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Latent cache of a frozen encoder's outputs (default: output_dir/latent_cache)."}
    )
    no_cache: bool = field(default=False, metadata={"help": "Decode and encode every clip at every epoch."})
    cache_precision: str = field(
        default="float16", metadata={"help": "Latent cache storage: float16, or int8 with a scale per token."}
    )
    cache_shard_size: int = field(default=128, metadata={"help": "Clips per latent cache shard."})


@dataclass
class TrainArguments:
    output_dir: str = field(default="outputs/surgical_wm", metadata={"help": "Exports, checkpoints and logs."})
    num_epochs: int = field(default=10, metadata={"help": "Training epochs."})
    batch_size: int = field(default=4, metadata={"help": "Clips per device per step."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of the predictor."})
    encoder_learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate of a fine-tuned encoder (default: learning_rate / 10)."}
    )
    weight_decay: float = field(default=0.04, metadata={"help": "AdamW weight decay."})
    warmup_epochs: float = field(default=2, metadata={"help": "Linear warmup, in epochs, before the cosine decay."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimizer steps."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, fp16 or bf16 (default: the accelerate config's)."}
    )
    device: str | None = field(default=None, metadata={"help": "cuda, mps or cpu (default: what accelerate picks)."})
    seed: int = field(default=42, metadata={"help": "Seed of weights, data order and masks."})
    checkpointing_steps: int = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps."})
    checkpoints_total_limit: int | None = field(default=3, metadata={"help": "Keep at most this many checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint directory, or 'latest' (the newest complete one)."}
    )
    max_bad_steps: int = field(
        default=10, metadata={"help": "Stop after this many consecutive steps with a non-finite loss or gradient."}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard, trackio, wandb or none."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the best export to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "<user>/<repo> (default: output_dir's name)."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository private."})
    sample_log: str | None = field(
        default=None, metadata={"help": "Debugging: append the sample ids of every batch to this file."}
    )
    nan_at_steps: str | None = field(
        default=None,
        metadata={"help": "Debugging: optimizer steps whose loss is replaced by NaN, comma-separated; STEP@RANK "
                          "corrupts that rank only (e.g. 2,5@1)."},
    )


def parse_dataclasses(dataclass_types: tuple, argv=None, description: str = "", defaults: dict | None = None):
    """Arguments of `dataclass_types` from the command line, from a YAML or JSON file given first, or both (the
    command line wins); `defaults` override the dataclasses' own defaults (a script's own choices)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types, description=description)
    if defaults:
        parser.set_defaults(**defaults)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        # A config file first, then command-line overrides.
        import yaml

        with open(argv[0]) as handle:
            values = yaml.safe_load(handle) or {}
        known = {f for dataclass_type in parser.dataclass_types for f in dataclass_type.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"error: {argv[0]}: unknown argument(s) {unknown}")
        parser.set_defaults(**values)
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def check_common_arguments(data_args: DataArguments, train_args: TrainArguments) -> None:
    if train_args.report_to not in {"tensorboard", "trackio", "wandb", "none"}:
        raise SystemExit(f"error: --report_to must be tensorboard, trackio, wandb or none, got {train_args.report_to}")
    if train_args.device not in {None, "cuda", "mps", "cpu"}:
        raise SystemExit(f"error: --device must be cuda, mps or cpu, got {train_args.device}")
    if data_args.dataset not in ("surgvu", "mmor"):
        raise SystemExit(f"error: --dataset must be surgvu or mmor, got {data_args.dataset}")
    if data_args.cache_precision not in PRECISIONS:
        raise SystemExit(f"error: --cache_precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{data_args.cache_precision}")


def parse_args(argv=None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    model_args, data_args, train_args = parse_dataclasses((ModelArguments, DataArguments, TrainArguments), argv,
                                                          __doc__.splitlines()[0])
    if model_args.finetune_encoder:
        model_args.encoder_frozen = False
    check_common_arguments(data_args, train_args)
    return model_args, data_args, train_args


def public_arguments(*groups) -> dict:
    """The arguments as a flat dict, for trackers, the model card and trainer_state.json: never a token."""
    values = {}
    for group in groups:
        values.update({k: v for k, v in asdict(group).items() if "token" not in k.lower()})
    return values


# ------------------------------------------------------------------------------------------------------- data
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


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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


# ------------------------------------------------------------------------------------------------- accelerator
def make_accelerator(train_args: TrainArguments, output_dir: Path) -> Accelerator:
    """The run's Accelerator (device, precision, accumulation, trackers), logging set up and the seed set: the
    skeleton shared by the training scripts."""
    if train_args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible.")
    if train_args.device == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("error: --device mps but MPS is not available on this machine.")
    accelerator = Accelerator(
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        mixed_precision=train_args.mixed_precision,
        cpu=train_args.device == "cpu",
        log_with=None if train_args.report_to == "none" else train_args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # per-file save/load lines; ours say what matters
    logger.info(
        f"processes: {accelerator.num_processes}, device: {accelerator.device}, "
        f"mixed precision: {accelerator.mixed_precision}, distributed: {accelerator.distributed_type}",
        main_process_only=True,
    )
    if not accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_error()
    set_seed(train_args.seed)
    return accelerator


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


# ------------------------------------------------------------------------------------------------------ model
def load_world_model(model_args: ModelArguments, action_spec: list[str]) -> SurgicalWorldModel:
    overrides = {
        "action_dim": len(action_spec),
        "action_spec": action_spec,
        # SurgVU's and MM-OR's actions are one-hot choices: a tool per arm and a task; a phase and a next action.
        "discrete_action_groups": SurgicalWorldModelConfig.spec_groups(action_spec),
        "freeze_encoder": model_args.encoder_frozen,
        "use_mask_aux": model_args.use_mask_aux,
        "lambda_mask": model_args.lambda_mask,
    }
    source = model_args.pretrained_checkpoint
    config_file = Path(source) / "config.json"
    saved = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if saved.get("model_type") == "surgical_wm":
        model = SurgicalWorldModel.from_pretrained(source, ignore_mismatched_sizes=True, **overrides)
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
    if source not in VJEPA2_PRESETS and not source.startswith("facebook/") and not Path(source).is_dir():
        raise SystemExit(
            f"error: --pretrained_checkpoint {source!r} is neither a directory nor a V-JEPA 2 checkpoint id. Build one "
            "with `python scripts/load_vjepa2_pretrained.py --model_size vitl --save_path "
            f"{source}` or pass a facebook/vjepa2-* id."
        )
    try:
        return SurgicalWorldModel.from_vjepa2(source, **overrides)
    except OSError as error:
        raise SystemExit(f"error: {error}") from None


# ------------------------------------------------------------------------------------------------- checkpoints
def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Checkpoints whose completion marker was written, oldest first. Half-written ones are never listed."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and (path / COMPLETE_MARKER).is_file():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def rng_fingerprint() -> str:
    return hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]


def save_checkpoint(accelerator: Accelerator, checkpoints_dir: Path, state: dict, total_limit: int | None) -> Path:
    """Rotates old checkpoints first, saves into a temporary directory, writes the marker last, then renames."""
    final = checkpoints_dir / f"{CHECKPOINT_PREFIX}{state['global_step']}"
    partial = checkpoints_dir / f".partial-{CHECKPOINT_PREFIX}{state['global_step']}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        existing = [path for path in complete_checkpoints(checkpoints_dir) if path != final]
        if total_limit is not None and len(existing) >= total_limit:
            for path in existing[: len(existing) - total_limit + 1]:
                shutil.rmtree(path)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every rank: FSDP / DeepSpeed gather and write their shards
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / TRAINING_STATE).write_text(json.dumps({**state, "rng": rng_fingerprint()}, indent=2))
        (partial / COMPLETE_MARKER).write_text("")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(train_args: TrainArguments, checkpoints_dir: Path) -> Path | None:
    if train_args.resume_from_checkpoint is None:
        return None
    if train_args.resume_from_checkpoint == "latest":
        found = complete_checkpoints(checkpoints_dir)
        return found[-1] if found else None
    path = Path(train_args.resume_from_checkpoint)
    if not (path / COMPLETE_MARKER).is_file():
        raise SystemExit(f"error: {path} is not a complete checkpoint (no {COMPLETE_MARKER} marker).")
    return path


def cosine_schedule(accelerator: Accelerator, optimizer, train_dataloader, train_args: TrainArguments):
    """(lr_scheduler, steps_per_epoch, total_steps): linear warmup, then a cosine that reaches zero at the last step
    that will run (`--max_train_steps` included); stepped once per optimizer step by the script (not by accelerate),
    on every rank alike, and saved with the checkpoints."""
    steps_per_epoch = max(math.ceil(len(train_dataloader) / train_args.gradient_accumulation_steps), 1)
    total_steps = train_args.num_epochs * steps_per_epoch
    if train_args.max_train_steps is not None:
        total_steps = min(total_steps, train_args.max_train_steps)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer,
                                 num_warmup_steps=min(int(train_args.warmup_epochs * steps_per_epoch), total_steps),
                                 num_training_steps=total_steps)
    accelerator.register_for_checkpointing(lr_scheduler)
    return lr_scheduler, steps_per_epoch, total_steps


def restore_checkpoint(accelerator: Accelerator, resume_path: Path) -> dict:
    """Loads a complete checkpoint's training state into the prepared objects; returns its `training_state.json`."""
    state = json.loads((resume_path / TRAINING_STATE).read_text())
    accelerator.load_state(str(resume_path))
    if state.get("rng") and accelerator.is_main_process and rng_fingerprint() != state["rng"]:
        raise SystemExit(f"error: the RNG state of {resume_path} was not restored; resuming would not replay "
                         "the interrupted run.")
    return state


# ---------------------------------------------------------------------------------------------------- exports
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


def export_model(accelerator: Accelerator, model, directory: Path, trainer_state: dict, card: str) -> None:
    """A transformers directory written atomically by rank 0; the state dict is gathered on every rank (FSDP)."""
    state_dict = full_state_dict(accelerator, model)
    if accelerator.is_main_process:
        partial = directory.with_name(f".partial-{directory.name}")
        shutil.rmtree(partial, ignore_errors=True)
        with own_class(accelerator.unwrap_model(model)) as plain_model:
            plain_model.save_pretrained(partial, state_dict=state_dict, safe_serialization=True)
        (partial / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, default=str))
        (partial / "README.md").write_text(card)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(partial, directory)
    accelerator.wait_for_everyone()


def card_metadata(config, metrics: dict, repo_id: str | None) -> str:
    """The model card's YAML header. A world model predicts latents under actions: its Hub task is robotics, not
    video classification (the probes of scripts/train_probe.py are the video classifiers). Validation figures go
    into the model-index, which scripts/evaluate_surgical_model.py --push_to_hub later replaces with its own."""
    from huggingface_hub import EvalResult, ModelCardData

    base_model = config.encoder_name_or_path or "facebook/vjepa2-vitl-fpc64-256"
    results = [
        EvalResult(task_type="robotics", task_name="Action-conditioned latent prediction", dataset_type="surgvu",
                   dataset_name="SurgVU", dataset_split="validation", metric_type=name, metric_name=name,
                   metric_value=round(float(value), 6))
        for name, value in sorted(metrics.items())
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not name.endswith("num_clips")
    ]
    data = ModelCardData(
        library_name="transformers", pipeline_tag="robotics",
        base_model=base_model if "/" in base_model else "facebook/vjepa2-vitl-fpc64-256", datasets=["SurgVU"],
        tags=["world-model", "v-jepa-2", "surgical-video", "action-conditioned"],
        model_name=(repo_id or "surgical-world-model").split("/")[-1] if results else None,
        eval_results=results or None,
    )
    return data.to_yaml()


def model_card(config, train_args: TrainArguments, trainer_state: dict, repo_id: str | None) -> str:
    metrics = trainer_state.get("best_metrics") or {}
    base_model = config.encoder_name_or_path or "facebook/vjepa2-vitl-fpc64-256"
    metric_rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items())
                            if isinstance(value, (int, float)))
    spec = config.action_spec or []
    load_id = repo_id or "<user>/<repo>"
    return f"""---
{card_metadata(config, metrics, repo_id)}
---

# Surgical world model on V-JEPA 2

An action-conditioned world model (V-JEPA 2-AC style) trained on SurgVU robotic surgery video with `train_hf.py`.
The V-JEPA 2 encoder ({base_model}, {"frozen" if config.freeze_encoder else "fine-tuned with EMA targets"}) encodes
each step; a block-causal predictor ({config.predictor_num_hidden_layers} layers, width
{config.predictor_hidden_size}) predicts the next step's latent from the past and {config.action_dim} action
dimensions per step.

## Load

```python
from transformers import AutoModel
model = AutoModel.from_pretrained("{load_id}", trust_remote_code=True)
latents = model.encode(pixel_values_videos)          # (B, T, 3, {config.encoder_config.crop_size}, {config.encoder_config.crop_size}) -> (B, T, N, D)
future = model.rollout(latents[:, :1], actions, steps=4)  # actions: one per step, (B, steps, {config.action_dim})
```

## Training

Epochs: {trainer_state.get("epoch")}; optimizer steps: {trainer_state.get("global_step")}; batch size per device:
{train_args.batch_size}; learning rate: {train_args.learning_rate}; seed: {train_args.seed}.

| metric | value |
| --- | --- |
{metric_rows or "| validation_loss | n/a |"}

## Actions

Each step takes a {config.action_dim}-dimensional action: {", ".join(spec[:8])}{", ..." if len(spec) > 8 else ""}
(full list in `config.action_spec`).

## Data licence

Trained on SurgVU (Intuitive Surgical), whose licence is reported as CC BY-NC-SA 4.0: check the dataset's terms
before any use of these weights beyond non-commercial research.
"""


# ---------------------------------------------------------------------------------------------- training step
class NonFiniteGuard:
    """Skips the optimizer steps whose loss or gradients are not finite, with the same decision on every rank.

    What happens to a bad step depends on the engine:
    - one device, DDP, FSDP (fp32 or bf16): a non-finite loss on any rank skips backward on every rank (a rank that
      skipped alone would hang the others in the gradient all-reduce); a non-finite gradient norm skips
      `optimizer.step()`. The gradients of the whole accumulation window are dropped, the weights stay as they were.
    - fp16 with a GradScaler: a non-finite loss is skipped as above, before any unscale, so the scaler is untouched.
      A non-finite gradient goes through `optimizer.step()` anyway: the scaler then skips the update itself and
      lowers its scale, which keeps its state consistent (skipping `step()` after the unscale in
      `clip_grad_norm_` would make the next step fail with "unscale_() has already been called").
    - DeepSpeed: `accelerator.backward` runs the engine's backward and step, and the engine owns overflow handling
      (its fp16 loss scaler skips an overflowing step and lowers the scale; with bf16 it has no skip). The guard
      only counts the steps the engine skipped and the non-finite losses, for the log and `--max_bad_steps`.
    """

    def __init__(self, accelerator: Accelerator, max_grad_norm: float):
        self.accelerator = accelerator
        self.max_grad_norm = max_grad_norm
        self.engine_steps = accelerator.distributed_type == DistributedType.DEEPSPEED
        self.window_is_bad = False  # a non-finite loss in the current accumulation window

    def backward(self, loss: torch.Tensor) -> bool:
        """Back-propagates `loss` unless a rank's loss in this accumulation window was not finite; True if it was."""
        not_finite = (~torch.isfinite(loss.detach())).float()
        bad = self.accelerator.reduce(not_finite, reduction="sum").item() > 0
        self.window_is_bad = self.window_is_bad or bad
        if self.engine_steps or not self.window_is_bad:
            self.accelerator.backward(loss)
        return bad

    def step(self, model, optimizer) -> bool:
        """At the end of an accumulation window: clip, then step or skip; always drops the gradients.

        Returns whether the weights were updated.
        """
        if self.engine_steps:
            updated = not (self.window_is_bad or optimizer.step_was_skipped)
        elif self.window_is_bad:
            updated = False
        else:
            grad_norm = self.accelerator.clip_grad_norm_(model.parameters(), self.max_grad_norm)
            finite = math.isfinite(float(grad_norm))
            if finite or self.accelerator.scaler is not None:
                optimizer.step()  # with a scaler and an inf gradient: the scaler skips and lowers its scale
            updated = finite and not optimizer.step_was_skipped
        optimizer.zero_grad(set_to_none=True)
        self.window_is_bad = False
        return updated


class DebugHooks:
    """`--sample_log` and `--nan_at_steps`: debugging aids, kept out of the training loop's logic."""

    def __init__(self, train_args: TrainArguments, process_index: int):
        self.process_index = process_index
        self.sample_log = f"{train_args.sample_log}.rank{process_index}" if train_args.sample_log else None
        self.nan_steps = set()
        for item in (train_args.nan_at_steps or "").split(","):
            if item.strip():
                step, _, rank = item.strip().partition("@")
                if not rank or int(rank) == process_index:
                    self.nan_steps.add(int(step))

    def on_batch(self, step: int, epoch: int, batch: dict) -> None:
        if self.sample_log:
            with open(self.sample_log, "a") as handle:
                handle.write(f"{step} {epoch} {batch['sample_id'].tolist()}\n")

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step in self.nan_steps else loss

    def on_end(self, model) -> None:
        if self.sample_log:
            digest = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
            with open(self.sample_log, "a") as handle:
                handle.write(f"final weights {digest.hexdigest()}\n")


# ------------------------------------------------------------------------------------------------ evaluation
def seeded_token_masks(config, sample_ids: torch.Tensor, num_steps: int, seed: int) -> torch.Tensor:
    """Mask-denoising masks `(B, num_steps, tokens)` drawn from (seed, sample id): the same clip gets the same mask
    whatever the batch, the process count or the epoch, so validation losses (and the `best/` choice) reproduce."""
    masks = []
    for sample_id in sample_ids.tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(sample_id))
        masks.append(torch.rand(num_steps, config.tokens_per_step, generator=generator) < config.mask_ratio)
    return torch.stack(masks).to(sample_ids.device)


@torch.no_grad()
def validation_per_clip(accelerator: Accelerator, model, dataloader, seed: int) -> dict[str, torch.Tensor]:
    """Validation metrics of every clip of the split, in loader order, whatever the number of processes.

    Everything comes from the wrapped model's forward (FSDP and DeepSpeed gather parameters there only). Per-clip
    values are gathered with `gather_for_metrics`, which drops the samples padded in to even out the last batch.
    The rollout error is that of a rollout from each clip's first step over all its later steps; its baseline copies
    that first (context) latent. The contrastive loss compares a clip with the others of its batch, so it alone
    depends on how the batches fall.
    """
    model.eval()
    config = accelerator.unwrap_model(model).config
    per_clip = {"sample_id": [], "temporal_loss": [], "mask_loss": [], "contrastive_loss": [], "rollout_error": [],
                "copy_context_error": []}
    for batch in dataloader:
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
        for name, value in accelerator.gather_for_metrics(values).items():
            per_clip[name].append(value.cpu())
    return {name: torch.cat(values) for name, values in per_clip.items()}


def run_validation(accelerator: Accelerator, model, dataloader, seed: int) -> dict:
    """Mean validation metrics over the clips of the split (see `validation_per_clip`)."""
    per_clip = validation_per_clip(accelerator, model, dataloader, seed)
    config = accelerator.unwrap_model(model).config
    metrics = {name: values.float().mean().item() for name, values in per_clip.items() if name != "sample_id"}
    metrics["loss"] = (metrics["temporal_loss"] + config.contrastive_weight * metrics["contrastive_loss"]
                       + (config.lambda_mask * metrics["mask_loss"] if config.use_mask_aux else 0.0))
    metrics["num_clips"] = len(per_clip["temporal_loss"])
    return metrics


def main(argv=None) -> None:
    model_args, data_args, train_args = parse_args(argv)
    output_dir = Path(train_args.output_dir)
    checkpoints_dir = output_dir / "checkpoints"

    # ---- accelerator, logging, seed
    accelerator = make_accelerator(train_args, output_dir)

    repo_id = None
    if train_args.push_to_hub and accelerator.is_main_process:
        from huggingface_hub import create_repo

        repo_id = create_repo(train_args.hub_model_id or output_dir.name, private=train_args.hub_private,
                              exist_ok=True).repo_id

    # ---- data (built once on the main process, read from the Arrow cache by the others)
    with accelerator.main_process_first():
        dataset = load_dataset_splits(data_args)
    metadata = get_build_metadata(dataset) if data_args.dataset == "surgvu" else {}
    if metadata.get("corrupt_videos"):
        logger.warning(f"skipped {len(metadata['corrupt_videos'])} unreadable video(s): "
                       + "; ".join(metadata["corrupt_videos"].values()))
    if len(dataset["train"]) == 0:
        raise SystemExit(f"error: no training clip in {data_args.data_root} (check the layout with "
                         "scripts/check_setup.py --data_root ...).")

    # ---- model
    model = load_world_model(model_args, dataset_action_spec(data_args, dataset))
    if model_args.activation_checkpointing:
        model.activation_checkpointing_enable()
    transform = clip_transform(data_args, model.config.encoder_config.crop_size)
    num_workers = min(data_args.num_workers, available_cores())
    train_sampler = EpochShuffleSampler(len(dataset["train"]), train_args.seed)
    loader_kwargs = {"batch_size": train_args.batch_size, "num_workers": num_workers,
                     "persistent_workers": num_workers > 0, "pin_memory": torch.cuda.is_available()}
    cache_off = latent_cache_off_reason(model_args.encoder_frozen, data_args, transform)
    clips = clip_datasets(accelerator, model, dataset, transform, data_args, output_dir, cache_off,
                          train_args.batch_size, num_workers)
    # The loaders draw worker seeds from their own generators, never from the global RNG that resuming restores.
    train_dataloader = DataLoader(clips["train"], sampler=train_sampler, drop_last=True,
                                  generator=torch.Generator().manual_seed(train_args.seed), **loader_kwargs)
    val_dataloader = DataLoader(clips["validation"], shuffle=False,
                                generator=torch.Generator().manual_seed(train_args.seed), **loader_kwargs)

    # ---- optimizer over trainable parameters only
    predictor_parameters = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    parameter_groups = [{"params": predictor_parameters, "lr": train_args.learning_rate}]
    if not model_args.encoder_frozen:
        encoder_lr = train_args.encoder_learning_rate or train_args.learning_rate / 10
        parameter_groups.append({"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": encoder_lr})
    optimizer = torch.optim.AdamW(parameter_groups, weight_decay=train_args.weight_decay)

    model, optimizer, train_dataloader, val_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, val_dataloader
    )
    lr_scheduler, steps_per_epoch, total_steps = cosine_schedule(accelerator, optimizer, train_dataloader, train_args)
    if accelerator.is_main_process and train_args.report_to != "none":
        accelerator.init_trackers("surgical_wm", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                         for k, v in public_arguments(model_args, data_args,
                                                                                      train_args).items()})

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("***** Running training *****")
    logger.info(f"  clips: {len(dataset['train'])} train / {len(dataset['validation'])} validation "
                + (f"({len(metadata.get('train_cases', []))} / {len(metadata.get('validation_cases', []))} cases)"
                   if data_args.dataset == "surgvu" else
                   f"({len(set(dataset['train']['take']))} / {len(set(dataset['validation']['take']))} takes)"))
    logger.info(f"  epochs: {train_args.num_epochs}, optimizer steps: {total_steps} ({steps_per_epoch} per epoch)")
    logger.info(f"  batch per device: {train_args.batch_size}, accumulation: {train_args.gradient_accumulation_steps}, "
                f"global batch: {train_args.batch_size * accelerator.num_processes * train_args.gradient_accumulation_steps}")
    logger.info(f"  trainable parameters: {trainable / 1e6:.2f} M (encoder {'frozen' if model_args.encoder_frozen else 'trained'})")

    # ---- resume
    global_step, start_epoch, resume_batches, skipped_steps = 0, 0, 0, 0
    history, best_val, best_metrics = [], float("inf"), {}
    resume_path = resolve_resume(train_args, checkpoints_dir)
    if train_args.resume_from_checkpoint and resume_path is None:
        logger.info(f"no complete checkpoint in {checkpoints_dir}: starting from scratch")
    if resume_path is not None:
        state = restore_checkpoint(accelerator, resume_path)
        global_step, start_epoch = state["global_step"], state["epoch"]
        resume_batches, skipped_steps = state["batches_in_epoch"], state.get("skipped_steps", 0)
        history, best_val = state.get("history", []), state.get("best_val_loss", float("inf"))
        best_metrics = state.get("best_metrics", {})
        logger.info(f"resumed from {resume_path}: step {global_step}, epoch {start_epoch}, "
                    f"{resume_batches} batches into the epoch")

    guard = NonFiniteGuard(accelerator, train_args.max_grad_norm)
    hooks = DebugHooks(train_args, accelerator.process_index)
    world_model = accelerator.unwrap_model(model)
    progress = None
    if accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=global_step, desc="steps", dynamic_ncols=True)

    def trainer_state(epoch: int, batches_in_epoch: int) -> dict:
        return {"global_step": global_step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                "skipped_steps": skipped_steps, "best_val_loss": best_val, "best_metrics": best_metrics,
                "history": history, "training_arguments": public_arguments(model_args, data_args, train_args)}

    # ---- loop
    bad_in_a_row, done = 0, global_step >= total_steps
    for epoch in range(start_epoch, train_args.num_epochs):
        if done:
            break
        model.train()
        train_dataloader.set_epoch(epoch)
        batches_in_epoch = resume_batches if epoch == start_epoch else 0
        active = accelerator.skip_first_batches(train_dataloader, batches_in_epoch) if batches_in_epoch else train_dataloader
        sums = {name: torch.zeros((), device=accelerator.device) for name in TRAIN_METRICS + ("clips",)}
        for batch in active:
            batches_in_epoch += 1
            hooks.on_batch(global_step, epoch, batch)
            with accelerator.accumulate(model):
                output = model(**clip_inputs(batch), actions=batch["actions"])
                loss = hooks.on_loss(global_step + 1, output.loss)
                loss_is_bad = guard.backward(loss)
                updated = guard.step(model, optimizer) if accelerator.sync_gradients else None
            if not loss_is_bad:
                for name in TRAIN_METRICS:
                    value = loss if name == "loss" else getattr(output, name)
                    sums[name] += value.detach().float() if value is not None else 0.0
                sums["clips"] += 1
            if updated is None:
                continue

            # ---- one optimizer step has ended (taken or skipped)
            if not updated:
                skipped_steps += 1
                bad_in_a_row += 1
                logger.warning(f"step {global_step + 1}: non-finite loss or gradient, step skipped "
                               f"({bad_in_a_row} in a row, {skipped_steps} in all)")
                if bad_in_a_row >= train_args.max_bad_steps:
                    accelerator.end_training()
                    raise SystemExit(
                        f"error: stopping: {bad_in_a_row} consecutive optimizer steps had a non-finite loss or "
                        f"gradient (up to step {global_step + 1}). Lower --learning_rate, prefer bf16 to fp16, or "
                        f"check the data; resume from {checkpoints_dir} with --resume_from_checkpoint latest."
                    )
            else:
                bad_in_a_row = 0
                world_model.update_target_encoder()
            global_step += 1
            lr_scheduler.step()
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}")
            accelerator.log({"train/loss": loss.item(), "train/temporal_loss": output.temporal_loss.item(),
                             "train/contrastive_loss": output.contrastive_loss.item(),
                             "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            if global_step % train_args.checkpointing_steps == 0:
                path = save_checkpoint(accelerator, checkpoints_dir, trainer_state(epoch, batches_in_epoch),
                                       train_args.checkpoints_total_limit)
                logger.info(f"saved {path}")
            if global_step >= total_steps:
                done = True
                break

        # ---- end of epoch: validation, the epoch's log line, best export
        totals = accelerator.reduce(sums, reduction="sum")
        train_metrics = {name: totals[name].item() / max(totals["clips"].item(), 1.0) for name in TRAIN_METRICS}
        val_metrics = (run_validation(accelerator, model, val_dataloader, train_args.seed)
                       if len(dataset["validation"]) else {})
        record = {"epoch": epoch + 1, "step": global_step, "lr": lr_scheduler.get_last_lr()[0],
                  **{f"train_{k}": v for k, v in train_metrics.items()},
                  **{f"val_{k}": v for k, v in val_metrics.items()}}
        history.append(record)
        accelerator.log({f"epoch/{k}": v for k, v in record.items()}, step=global_step)
        logger.info(
            f"Epoch {epoch + 1}/{train_args.num_epochs} | train loss {train_metrics['loss']:.4f} (temporal "
            f"{train_metrics['temporal_loss']:.4f}, contrastive {train_metrics['contrastive_loss']:.4f}, mask "
            f"{train_metrics['mask_loss']:.4f})"
            + (f" | val loss {val_metrics['loss']:.4f} (temporal {val_metrics['temporal_loss']:.4f}, contrastive "
               f"{val_metrics['contrastive_loss']:.4f}, mask {val_metrics['mask_loss']:.4f}) | rollout error "
               f"{val_metrics['rollout_error']:.4f} vs copy-context {val_metrics['copy_context_error']:.4f}"
               if val_metrics else " | no validation clips")
        )
        score = val_metrics.get("loss", train_metrics["loss"])
        if score < best_val:
            best_val = score
            best_metrics = {f"validation_{k}": v for k, v in val_metrics.items()} or {"train_loss": score}
            best_state = trainer_state(epoch + 1, 0)
            export_model(accelerator, model, output_dir / "best", best_state,
                         model_card(world_model.config, train_args, best_state, repo_id))
        model.train()

    # ---- final export, upload
    accelerator.wait_for_everyone()
    hooks.on_end(world_model)
    final_state = trainer_state(history[-1]["epoch"] if history else start_epoch, 0)
    export_model(accelerator, model, output_dir / "final", final_state,
                 model_card(world_model.config, train_args, final_state, repo_id))
    if progress is not None:
        progress.close()
    if train_args.push_to_hub and accelerator.is_main_process:
        from huggingface_hub import upload_folder

        upload_folder(repo_id=repo_id, folder_path=str(output_dir / "best"), commit_message="Upload surgical world model",
                      ignore_patterns=["checkpoints/*", "*.pkl", "*.bin"])
        logger.info(f"pushed {output_dir / 'best'} to {repo_id}")
    logger.info(f"done: {global_step} steps, {skipped_steps} skipped; best validation loss {best_val:.4f}; "
                f"exports in {output_dir / 'best'} and {output_dir / 'final'}")
    accelerator.end_training()


if __name__ == "__main__":
    main()

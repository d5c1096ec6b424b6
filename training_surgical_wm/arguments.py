# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The command-line arguments shared by the training scripts (train_hf.py, scripts/train_probe.py, and the data
options of the evaluation and the latent cache tools), and how they are read: the command line, a YAML or JSON file
given first, or both."""

import json
import sys
from dataclasses import asdict, dataclass, field

from transformers import HfArgumentParser

from configuration_surgical_wm import ACTION_PAIRINGS
from dataset_surgvu.catalog import DATASETS
from dataset_surgvu.latent_cache import PRECISIONS, VERIFY_MODES


EXPORT_ENCODERS = ("target", "online")  # which encoder of a fine-tuned model an export holds


@dataclass
class ModelArguments:
    pretrained_checkpoint: str = field(
        default="checkpoints/vjepa2_vitl_surgical",
        metadata={"help": "A world model saved by scripts/load_vjepa2_pretrained.py, a local V-JEPA 2 directory, "
                          "a facebook/vjepa2-* id, or a preset (vitl, vith, vitg, vitg384)."},
    )
    allow_selection_split: bool = field(
        default=False,
        metadata={"help": "Fine-tune a surgical world model although this run's test split holds cases it was trained "
                          "or chosen on (its data_split), with a warning: those test figures are no test."},
    )
    encoder_frozen: bool = field(default=True, metadata={"help": "Keep the V-JEPA 2 encoder frozen (default)."})
    finetune_encoder: bool = field(default=False, metadata={"help": "Fine-tune the encoder (EMA targets)."})
    export_encoder: str = field(
        default="target",
        metadata={"help": "With --finetune_encoder, the one encoder best/ and final/ hold: target (the EMA target "
                          "encoder, as V-JEPA's downstream evaluations use it) or online; checkpoints keep both."},
    )
    use_mask_aux: bool = field(default=False, metadata={"help": "Add the mask-denoising auxiliary loss."})
    lambda_mask: float = field(default=0.1, metadata={"help": "Weight of the mask-denoising loss."})
    activation_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    action_pairing: str | None = field(
        default=None,
        metadata={"help": "The labels a transition t -> t + 1 takes as its action: next (at t + 1) or current (at t). "
                          "Default: the pretrained world model's (current for an export that predates the choice), "
                          "next for a new one.", "choices": list(ACTION_PAIRINGS)},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "World model config fields to set, comma-separated NAME=VALUE, values read as JSON or else "
                          "as text (e.g. action_conditioning=adaln,action_dropout=0.1,action_contrastive_weight=0.5)."},
    )


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
    skip_missing_frames: bool = field(
        default=False, metadata={"help": "MM-OR: leave out the clips of frame files missing on disk (logged and "
                                         "counted in mmor_build.json) instead of stopping."}
    )
    labels_dir: str | None = field(default=None, metadata={"help": "labels/ when it is not next to surgvu24/."})
    fps: float = field(default=4.0, metadata={"help": "Frames per second sampled from the videos."})
    frames_per_clip: int = field(default=8, metadata={"help": "Frames per training clip."})
    clip_stride: int | None = field(
        default=None, metadata={"help": "Sampled frames (MM-OR: timepoints) between clip starts (default: "
                                        "frames_per_clip, no overlap; 1 gives a clip ending at every frame)."}
    )
    validation_fraction: float = field(
        default=0.2, metadata={"help": "Share of cases held out for validation (chooses best/)."}
    )
    test_fraction: float = field(
        default=0.2, metadata={"help": "Share of cases held out for test (chooses nothing; the evaluation scores it)."}
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the case split (apart from --seed: evaluation finds the same split)."}
    )
    test_cases: list[str] | None = field(
        default=None, metadata={"help": "Cases forced into test (e.g. the organisers' held-out cases): case_NNN ..."}
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
    verify_cache: str = field(
        default="changed",
        metadata={"help": "Latent cache shards to hash again before use: changed (those whose size or modification "
                          "time differ from their record) or full (all; also finds bytes changed in place)."},
    )


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
    max_bad_clips: float = field(
        default=0.05,
        metadata={"help": "Stop when more clips of a split fail to decode in one epoch: below 1 a fraction of the "
                          "split's clips, else a count (0: none). Broken clips are skipped until then."},
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
    if data_args.dataset not in DATASETS:
        raise SystemExit(f"error: --dataset must be {' or '.join(DATASETS)}, got {data_args.dataset}")
    bad_clips = train_args.max_bad_clips
    if not 0 <= bad_clips < float("inf") or (bad_clips >= 1 and bad_clips % 1):
        raise SystemExit(f"error: --max_bad_clips must be a fraction below 1 or a whole count, got "
                         f"{train_args.max_bad_clips:g}")
    if data_args.cache_precision not in PRECISIONS:
        raise SystemExit(f"error: --cache_precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{data_args.cache_precision}")
    if data_args.verify_cache not in VERIFY_MODES:
        raise SystemExit(f"error: --verify_cache must be one of {', '.join(VERIFY_MODES)}, got "
                         f"{data_args.verify_cache}")


# Config fields that the data or their own flags set: `--config_overrides` leaves them alone.
SET_ELSEWHERE = {"action_dim": "the data", "action_spec": "the data", "discrete_action_groups": "the data",
                 "fps": "the data", "encoder_config": "the checkpoint", "freeze_encoder": "--finetune_encoder",
                 "use_mask_aux": "--use_mask_aux", "lambda_mask": "--lambda_mask"}


def parse_config_overrides(text: str | None) -> dict:
    """`--config_overrides` `NAME=VALUE,...` as a dict of world model config fields, values read as JSON or else as
    text; one line naming what is wrong otherwise. The values are checked by the config itself."""
    from configuration_surgical_wm import SurgicalWorldModelConfig

    overrides = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not name or not value:
            raise SystemExit(f"error: --config_overrides: {item.strip()!r} is not NAME=VALUE")
        if name in SET_ELSEWHERE:
            raise SystemExit(f"error: --config_overrides: {name} is set by {SET_ELSEWHERE[name]}")
        if name not in SurgicalWorldModelConfig.__annotations__:
            raise SystemExit(f"error: --config_overrides: {name} is not a field of the world model config")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    return overrides


def parse_training_arguments(argv=None, description: str = "") -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """train_hf.py's arguments: the model, data and training groups, checked; `--finetune_encoder` unfreezes."""
    model_args, data_args, train_args = parse_dataclasses((ModelArguments, DataArguments, TrainArguments), argv,
                                                          description)
    if model_args.finetune_encoder:
        model_args.encoder_frozen = False
    if model_args.export_encoder not in EXPORT_ENCODERS:
        raise SystemExit(f"error: --export_encoder must be {' or '.join(EXPORT_ENCODERS)}, got "
                         f"{model_args.export_encoder}")
    check_common_arguments(data_args, train_args)
    parse_config_overrides(model_args.config_overrides)  # now, not after the data is built
    return model_args, data_args, train_args


def public_arguments(*groups) -> dict:
    """The arguments as a flat dict, for trackers, the model card and trainer_state.json: never a token."""
    values = {}
    for group in groups:
        values.update({k: v for k, v in asdict(group).items() if "token" not in k.lower()})
    return values

# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The data of a run: the dataset `--dataset` names, read once through the table of dataset_surgvu.catalog, its
splits for the data options and the record of that split that a model carries (`split_definition`), a batch's clip
input, the clip datasets of every split (from the latent cache of
dataset_surgvu.latent_cache when it can serve the run, else decoded), and the clips skipped because their video
broke (`SkippedClips`, `--max_bad_clips`)."""

import math
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object, send_to_device

from dataset_surgvu import BrokenClip, BrokenFiles, SurgVUClips, SurgVULabelError, collate_clips
from dataset_surgvu.clips import batch_size
from dataset_surgvu.catalog import DatasetEntry, get_dataset
from dataset_surgvu.latent_cache import cached_clip_datasets, latent_cache_root

from .arguments import DataArguments


logger = get_logger(__name__, log_level="INFO")


def dataset_entry(data_args: DataArguments) -> DatasetEntry:
    """The table's entry of `--dataset`: its split loader, transform, action spec, build metadata, probe targets."""
    return get_dataset(data_args.dataset)


def load_dataset_splits(data_args: DataArguments):
    """The splits for these data options (one definition, shared by the scripts): SurgVU's `train`, `validation` and
    `test` (split by case), or MM-OR's official `train`, `validation` and `test` takes. A SurgVU label file of another
    format stops the script with one line naming it."""
    try:
        return dataset_entry(data_args).load_splits(
            data_args.data_root, camera=data_args.camera, labels_dir=data_args.labels_dir, fps=data_args.fps,
            frames_per_clip=data_args.frames_per_clip, clip_stride=data_args.clip_stride,
            validation_fraction=data_args.validation_fraction, test_fraction=data_args.test_fraction,
            split_seed=data_args.split_seed, test_cases=data_args.test_cases,
            skip_missing_frames=data_args.skip_missing_frames, cache_dir=data_args.dataset_cache_dir,
        )
    except SurgVULabelError as error:
        raise SystemExit(f"error: {error}") from None


def split_groups(dataset, metadata: dict) -> str:
    """What the clips of the train, validation and test splits come from, for the banner: cases (SurgVU's build
    records them) or takes (MM-OR's rows name theirs)."""
    if "train_cases" in metadata:
        sizes = (len(metadata.get(f"{name}_cases", [])) for name in ("train", "validation", "test"))
        return " / ".join(map(str, sizes)) + " cases"
    if "take" in dataset["train"].column_names:
        return " / ".join(str(len(set(split["take"]))) for split in dataset.values()) + " takes"
    return "0 / 0 cases"


SPLIT_OPTIONS = ("split_seed", "validation_fraction", "test_fraction", "test_cases")  # SurgVU's case split


def split_definition(dataset_name: str, dataset, metadata: dict, selection_split: str | None = None) -> dict:
    """How the data is split, as a model records it in its config (`data_split`) and a later script compares it: the
    dataset, SurgVU's case-split options as the build applied them and the cases of each split (MM-OR: its official
    takes), and `selection_split`, the split whose loss chose `best/`."""
    if "train_cases" in metadata:
        options = metadata.get("options", {})
        definition = {"dataset": dataset_name, "split_seed": options.get("split_seed"),
                      "validation_fraction": options.get("validation_fraction"),
                      "test_fraction": options.get("test_fraction"),
                      "test_cases": list(options.get("forced_cases", {}).get("test", [])),
                      "groups": {name: list(metadata.get(f"{name}_cases", []))
                                 for name in ("train", "validation", "test")}}
    else:
        definition = {"dataset": dataset_name,
                      "groups": {name: sorted(set(split["take"])) if "take" in split.column_names else []
                                 for name, split in dataset.items()}}
    return {**definition, "selection_split": selection_split} if selection_split else definition


def requested_split(dataset_name: str, data_args: DataArguments) -> dict:
    """The split the data options ask for, before any data is built: `split_definition`'s options without the cases,
    to compare with a model's record at once."""
    return {"dataset": dataset_name, "split_seed": int(data_args.split_seed),
            "validation_fraction": float(data_args.validation_fraction),
            "test_fraction": float(data_args.test_fraction), "test_cases": sorted(data_args.test_cases or [])}


def resolve_split_options(data_args: DataArguments, recorded: dict | None) -> None:
    """Fills the case-split options left unset (None) on the command line: from the split `recorded` in a model's
    config, so that a later script finds the split the model was trained on, else from the training defaults."""
    for name in SPLIT_OPTIONS:
        if getattr(data_args, name) is None:
            value = (recorded or {}).get(name, getattr(DataArguments, name, None))
            setattr(data_args, name, list(value) if isinstance(value, (list, tuple)) else value)


def describe_split(definition: dict) -> str:
    """A split definition in one phrase: its options and the size of each split."""
    groups = definition.get("groups")
    sizes = f" ({' / '.join(f'{len(members)} {name}' for name, members in groups.items())})" if groups else ""
    if "split_seed" not in definition:
        return f"the {definition.get('dataset')} official splits{sizes}"
    forced = definition.get("test_cases") or []
    return (f"{definition.get('dataset')} cases by split_seed {definition['split_seed']}, validation_fraction "
            f"{definition['validation_fraction']:g}, test_fraction {definition['test_fraction']:g}"
            + (f", test_cases {' '.join(forced)}" if forced else "") + sizes)


def split_mismatch(recorded: dict, current: dict) -> str | None:
    """None when `current` (a `split_definition`, or a `requested_split` before the data is built) splits the data as
    `recorded` (a model's record) does, on what both state; else one phrase naming both, and the cases (takes) that
    changed split."""
    names = (recorded.keys() & current.keys()) - {"selection_split"}
    if all(recorded.get(name) == current.get(name) for name in names):
        return None
    where = [{member: split for split, members in definition.get("groups", {}).items() for member in members}
             for definition in (recorded, current)]
    moved = [] if not all(where) else sorted(
        f"{member} ({where[0].get(member, 'absent')} there, {where[1].get(member, 'absent')} here)"
        for member in where[0].keys() | where[1].keys() if where[0].get(member) != where[1].get(member))
    return (f"trained on {describe_split(recorded)}, but this run splits the data as {describe_split(current)}"
            + (f"; in another split: {', '.join(moved[:4])}{', ...' if len(moved) > 4 else ''}" if moved else ""))


def check_pretrained_split(source: str, saved: dict, current: dict, allow: bool) -> None:
    """Stops with one line when this run (split as `current`, a `split_definition`) holds out for test cases that the
    surgical world model at `source` (its saved config `saved`) was trained or chosen on: fine-tuned here, its test
    figures would be on cases it has fitted. With `allow` (`--allow_selection_split`), a warning naming them instead.
    A V-JEPA 2 encoder, a model of another dataset, and a model that records no split (built by
    load_vjepa2_pretrained.py, or exported before splits were recorded) have nothing to compare."""
    recorded = saved.get("data_split") if saved.get("model_type") == "surgical_wm" else None
    if not recorded or recorded.get("dataset") != current.get("dataset"):
        return
    groups = recorded.get("groups", {})
    fitted = set(groups.get("train", [])) | set(groups.get(recorded.get("selection_split", "validation"), []))
    overlap = sorted(fitted & set(current.get("groups", {}).get("test", [])))
    if not overlap:
        return
    cases = f"{', '.join(overlap[:6])}{', ...' if len(overlap) > 6 else ''} ({len(overlap)} of this run's test)"
    message = (f"--pretrained_checkpoint {source} was trained or chosen on {cases}, which this run holds out for test "
               f"(it was {describe_split(recorded)}; this run: {describe_split(current)})")
    if not allow:
        raise SystemExit(f"error: {message}: its test figures would be on cases it has fitted; split the data as it "
                         "was, or pass --allow_selection_split to train with a warning")
    logger.warning(f"{message}: --allow_selection_split, so the figures of this run's test split are optimistic, "
                   "not a test")


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


class CheckedBatch(NamedTuple):
    batch: dict  # the decoded clips to run, or the stand-in when this process has none
    stand_in: bool  # this process's batch had no decoded clip: `batch` is a stand-in, its outputs are not used
    skip_step: bool  # some process had no decoded clip: every process skips this step
    lost_clips: bool  # some process lost clips in this batch


class SkippedClips:
    """The clips of one split that failed to decode, counted on every process together, against `--max_bad_clips`.

    One all-reduce per batch gives every process the same counts, so they all take the same decisions at the same
    batch: a batch that lost clips runs on the rest; when a process has none left, every process skips the step
    and that process runs its forward on a stand-in (its last decoded batch) so the collectives inside the forward
    still line up; when the epoch's count passes the limit, every process stops with one line naming the files.
    Each broken file is named once, in a warning of the process that met it.
    """

    def __init__(self, accelerator: Accelerator, split: str, clips, max_bad_clips: float):
        self.accelerator = accelerator
        self.split = split
        self.clips = clips  # the split's dataset, to find a stand-in when a process's first batch broke
        self.max_bad_clips = max_bad_clips
        self.limit = int(max_bad_clips) if max_bad_clips >= 1 else math.floor(max_bad_clips * len(clips))
        self.files = BrokenFiles(lambda message: logger.warning(message, main_process_only=False))
        self.in_epoch = 0  # every process's, this epoch
        self.stand_in = None

    def new_epoch(self) -> None:
        self.in_epoch = 0

    def check(self, batch: dict) -> CheckedBatch:
        """Counts a `collate_clips` batch's broken clips on every process (a collective: every process calls it at
        every batch); raises SystemExit past the limit."""
        broken = batch.get("broken_clips", [])
        self.files.add(broken)
        empty = batch_size(batch) == 0
        counts = torch.tensor([len(broken), int(empty)], device=self.accelerator.device)
        lost, empties = self.accelerator.reduce(counts, reduction="sum").tolist()
        self.in_epoch += lost
        if self.in_epoch > self.limit:
            self.accelerator.end_training()
            raise SystemExit(
                f"error: stopping: {self.in_epoch} {self.split} clip(s) failed to decode this epoch, more than "
                f"--max_bad_clips {self.max_bad_clips:g} allows ({self.limit}): {self.files.summary()}. Check or "
                "replace these files, then resume with --resume_from_checkpoint latest."
            )
        if empty:
            batch = self.stand_in if self.stand_in is not None else self.first_decoded()
        else:
            self.stand_in = batch
        return CheckedBatch(batch, empty, empties > 0, lost > 0)

    def first_decoded(self) -> dict:
        """A one-clip batch of the split's first clip that decodes: the stand-in before any batch of ours decoded."""
        for index in range(len(self.clips)):
            item = self.clips[index]
            if not isinstance(item, BrokenClip):
                return send_to_device(collate_clips([item]), self.accelerator.device)
        raise SystemExit(f"error: no {self.split} clip can be decoded: {self.files.summary()}")


def gather_clip_values(accelerator: Accelerator, checked: CheckedBatch, values: dict[str, torch.Tensor],
                       seen: set[int]) -> dict[str, torch.Tensor] | None:
    """One validation batch's per-clip `values` (a "sample_id" among them) from every process, each clip once; None
    when no process had a decoded clip. An intact batch goes through `gather_for_metrics`, which drops the samples
    padded in to even out the last batch; a batch that lost clips on some process is gathered as objects (the
    processes' batches then differ in size), and the clips already in `seen` (the padding) are dropped by sample id.
    `seen` collects the sample ids returned."""
    if not checked.lost_clips:
        gathered = accelerator.gather_for_metrics(values)
    else:
        parts = gather_object([] if checked.stand_in else [{name: value.cpu() for name, value in values.items()}])
        if not parts:
            return None
        gathered = {name: torch.cat([part[name] for part in parts]) for name in values}
        fresh = torch.tensor([sample_id not in seen for sample_id in gathered["sample_id"].tolist()], dtype=torch.bool)
        gathered = {name: value[fresh] for name, value in gathered.items()}
    seen.update(gathered["sample_id"].tolist())
    return gathered

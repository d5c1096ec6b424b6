"""The datasets a run can train on, by name: one place that knows how each is loaded, transformed and probed.

    from dataset_surgvu.catalog import get_dataset
    entry = get_dataset("mmor")                            # or "surgvu"; an unknown name raises a ValueError
    dataset = entry.load_splits("/data/MM-OR_data", camera="azure:1", frames_per_clip=8)
    transform = entry.transform(crop_size=256)              # the clip transform of its rows
    spec = entry.action_spec(dataset)                       # one name per action dimension
    target = entry.targets["phase"]                         # a probe target: classes, problem type, label column
    indices = target.labelled_indices(dataset["train"])     # the clips that have that label

`load_splits` takes the data options every dataset is given (train_hf's `DataArguments`, as plain keywords) and passes
each loader the ones it reads: SurgVU its labels folder, frame rate and case split; MM-OR its camera and whether frames
missing on disk are skipped (its frame rate is the dataset's own timepoints). This module imports `dataset_mmor`, which
imports this package: it is therefore not imported by `dataset_surgvu/__init__.py`, so either package can be imported
first without a cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import dataset_mmor

from .builder import get_action_spec, get_build_metadata, load_surgvu
from .labels import TASK_CLASSES, TOOL_CLASSES
from .transforms import ClipTransform


@dataclasses.dataclass(frozen=True)
class ProbeTarget:
    """A per-clip label a probe learns: the label of the clip's last step in `label_column`."""

    name: str  # the --target of scripts/train_probe.py
    dataset: str  # the name of the dataset that has the label
    class_names: tuple[str, ...]
    problem_type: str  # "single_label_classification" or "multi_label_classification"
    label_column: str  # the split's column (and the clip transform's key) holding the per-step labels
    labelled_when: str  # "case_has_labels": the clip's case has label files; "last_step_labelled": last label >= 0

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))

    def labelled_indices(self, split) -> list[int]:
        """The clips of `split` that have this label: SurgVU clips of cases with label files (a case without labels
        would teach every clip to be Other); MM-OR clips whose last timepoint has the label (null next actions are
        skipped, as the public MM-OR code skips them)."""
        if self.labelled_when == "case_has_labels":
            return [index for index, has_labels in enumerate(split["has_labels"]) if has_labels]
        return [index for index, labels in enumerate(split[self.label_column]) if labels[-1] >= 0]

    def clip_labels(self, batch: dict):
        """Per-clip labels of a batch, the last step's: class indices `(B,)`, or for a multi-label target the classes
        present `(B, num_classes)` as floats."""
        labels = batch[self.label_column][:, -1]
        return labels.float() if self.problem_type == "multi_label_classification" else labels


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """How a run uses one dataset: its splits, its clip transform, its action spec and its probe targets."""

    name: str  # the --dataset value
    display_name: str  # as the model card and the evaluation report name it
    load_splits: Callable  # (data_root, *, data options) -> datasets.DatasetDict
    transform: Callable  # (crop_size) -> a picklable, deterministic clip transform of the rows
    action_spec: Callable  # (built DatasetDict or split) -> list[str], one name per action dimension
    build_metadata: Callable  # (built DatasetDict) -> dict: the builder's record of the build ({} when none)
    targets: dict[str, ProbeTarget]  # probe target name -> target, in the order the evaluation trains them
    evaluation_splits: tuple[str, ...]  # what the evaluation's --split may name ("all": every split)


def _load_surgvu_splits(data_root, *, camera: str = "azure:1", labels_dir=None, fps: float = 4.0,
                        frames_per_clip: int = 8, clip_stride: int | None = None, validation_fraction: float = 0.2,
                        test_fraction: float = 0.2, split_seed: int = 0, test_cases=None, cache_dir=None,
                        skip_missing_frames: bool = False):
    """SurgVU's `train`, `validation` and `test`, split by case (`camera` and `skip_missing_frames` are MM-OR's and
    not read)."""
    return load_surgvu(data_root, labels_dir, fps=fps, frames_per_clip=frames_per_clip, clip_stride=clip_stride,
                       validation_fraction=validation_fraction, test_fraction=test_fraction, split_seed=split_seed,
                       test_cases=test_cases, cache_dir=cache_dir)


def _load_mmor_splits(data_root, *, camera: str = "azure:1", labels_dir=None, fps: float = 4.0,
                      frames_per_clip: int = 8, clip_stride: int | None = None, validation_fraction: float = 0.2,
                      test_fraction: float = 0.2, split_seed: int = 0, test_cases=None, cache_dir=None,
                      skip_missing_frames: bool = False):
    """MM-OR's official `train`, `validation` and `test` takes (`labels_dir`, `fps`, the fractions, `split_seed` and
    `test_cases` are SurgVU's and not read: MM-OR's splits and timepoints are its own)."""
    return dataset_mmor.load_mmor(data_root, camera, frames_per_clip=frames_per_clip, clip_stride=clip_stride,
                                  skip_missing_frames=skip_missing_frames, cache_dir=cache_dir)


def _no_metadata(dataset) -> dict:
    return {}


SURGVU_DATASET = DatasetEntry(
    name="surgvu",
    display_name="SurgVU",
    load_splits=_load_surgvu_splits,
    transform=ClipTransform,
    action_spec=get_action_spec,
    build_metadata=get_build_metadata,
    targets={
        "task": ProbeTarget("task", "surgvu", tuple(TASK_CLASSES), "single_label_classification", "tasks",
                            "case_has_labels"),
        "tools": ProbeTarget("tools", "surgvu", tuple(TOOL_CLASSES), "multi_label_classification", "tools",
                             "case_has_labels"),
    },
    evaluation_splits=("train", "validation", "test", "all"),  # test: cases held out of the release's labelled ones
)

MMOR_DATASET = DatasetEntry(
    name="mmor",
    display_name="MM-OR",
    load_splits=_load_mmor_splits,
    transform=dataset_mmor.MMORClipTransform,
    action_spec=dataset_mmor.get_mmor_action_spec,
    build_metadata=_no_metadata,
    targets={
        "phase": ProbeTarget("phase", "mmor", tuple(dataset_mmor.ROBOT_PHASES), "single_label_classification",
                             "phase", "last_step_labelled"),
        "next_action": ProbeTarget("next_action", "mmor", tuple(dataset_mmor.NEXT_ACTIONS),
                                   "single_label_classification", "next_action", "last_step_labelled"),
        "breach": ProbeTarget("breach", "mmor", ("no breach", "breach"), "single_label_classification", "breach",
                              "last_step_labelled"),
    },
    evaluation_splits=("train", "validation", "test"),
)

DATASETS: dict[str, DatasetEntry] = {entry.name: entry for entry in (SURGVU_DATASET, MMOR_DATASET)}
PROBE_TARGETS: dict[str, ProbeTarget] = {name: target for entry in DATASETS.values()
                                         for name, target in entry.targets.items()}


def get_dataset(name: str) -> DatasetEntry:
    """The entry of the dataset called `name`; a ValueError names the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}: known datasets are {', '.join(DATASETS)}") from None


def get_probe_target(name: str) -> ProbeTarget:
    """The probe target called `name`, whichever dataset has it; a ValueError names the known ones."""
    try:
        return PROBE_TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown probe target {name!r}: known targets are {', '.join(PROBE_TARGETS)}") from None

# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The probe targets (SurgVU task and tools; MM-OR phase, next action and breach) and the clips that have their
labels: what scripts/train_probe.py trains on and the evaluation scores against."""

import torch

from dataset_mmor import NEXT_ACTIONS, ROBOT_PHASES
from dataset_surgvu import TASK_CLASSES, TOOL_CLASSES


# target: (class names, problem type, dataset, label column). A clip's label is its last step's.
TARGETS = {
    "task": (list(TASK_CLASSES), "single_label_classification", "surgvu", "tasks"),
    "tools": (list(TOOL_CLASSES), "multi_label_classification", "surgvu", "tools"),
    "phase": (list(ROBOT_PHASES), "single_label_classification", "mmor", "phase"),
    "next_action": (list(NEXT_ACTIONS), "single_label_classification", "mmor", "next_action"),
    "breach": (["no breach", "breach"], "single_label_classification", "mmor", "breach"),
}


def probe_labels(target: str):
    """(id2label, problem_type) of a probe target."""
    names, problem_type = TARGETS[target][:2]
    return dict(enumerate(names)), problem_type


def clip_labels(batch: dict, target: str) -> torch.Tensor:
    """Per-clip labels, the last step's: a class index `(B,)`, or for tools the 12 installed tools `(B, 12)` as
    floats."""
    labels = batch[TARGETS[target][3]][:, -1]
    return labels.float() if target == "tools" else labels


def labelled_indices(split, target: str = "task") -> list[int]:
    """The clips that have a label for `target`: SurgVU clips of cases with label files (a case without labels would
    teach every clip to be Other); MM-OR clips whose last timepoint has the label (null next actions are skipped, as
    the public MM-OR code skips them)."""
    if TARGETS[target][2] == "surgvu":
        return [index for index, has_labels in enumerate(split["has_labels"]) if has_labels]
    return [index for index, labels in enumerate(split[TARGETS[target][3]]) if labels[-1] >= 0]


def split_label_counts(split, indices: list[int], target: str) -> torch.Tensor:
    """Per-class counts of the clips' labels `(num_classes,)`: clips per class, or for tools tool-present clips."""
    names, _, _, column = TARGETS[target]
    if not indices:
        return torch.zeros(len(names))
    values = split[column]  # one read of the column, not one decoded row per clip
    last = [values[index][-1] for index in indices]
    if target == "tools":
        return torch.tensor(last, dtype=torch.float32).sum(0)
    return torch.bincount(torch.tensor(last), minlength=len(names)).float()

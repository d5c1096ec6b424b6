# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""What the probes need beyond the probe targets of dataset_surgvu.catalog (classes, problem type, label column,
labelled clips): the label counts of a split, shared by scripts/train_probe.py (class weights) and the evaluation
(majority baselines)."""

import torch

from dataset_surgvu.catalog import ProbeTarget


def split_label_counts(split, indices: list[int], target: ProbeTarget) -> torch.Tensor:
    """Per-class counts of the clips' labels `(num_classes,)`: clips per class, or for a multi-label target the clips
    where each class is present."""
    if not indices:
        return torch.zeros(len(target.class_names))
    values = split[target.label_column]  # one read of the column, not one decoded row per clip
    last = [values[index][-1] for index in indices]
    if target.problem_type == "multi_label_classification":
        return torch.tensor(last, dtype=torch.float32).sum(0)
    return torch.bincount(torch.tensor(last), minlength=len(target.class_names)).float()

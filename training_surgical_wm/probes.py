# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""What the probes need beyond the probe targets of dataset_surgvu.catalog (classes, problem type, label column,
labelled clips): the label counts of a split, shared by scripts/train_probe.py (class weights) and the evaluation
(majority baselines); the fingerprints that tie a probe to the world-model weights it reads, and loading a probe
that reads a given world model (the evaluation, the demo page)."""

import torch

from dataset_surgvu.catalog import PROBE_TARGETS, ProbeTarget
from dataset_surgvu.latent_cache import module_fingerprint

from .loading import checkpoint_config, fail, is_probe, load_checkpoint


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


def read_modules(config) -> tuple[str, ...]:
    """The world-model modules whose outputs a probe reads: the encoder, and the predictor with
    `probe_use_predictor`."""
    return ("encoder", "predictor") if config.probe_use_predictor else ("encoder",)


def world_model_fingerprints(world_model, modules: tuple[str, ...]) -> dict[str, str]:
    """`module_fingerprint` of each of `world_model`'s `modules`, by name."""
    return {name: module_fingerprint(getattr(world_model, name)) for name in modules}


def world_model_mismatch(probe, world_model) -> list[str]:
    """The modules the probe reads whose weights in `world_model` differ from those it was trained on (its recorded
    fingerprints) or from those it holds and runs. A probe saved before the fingerprints were recorded is checked
    against the copy it holds alone: that copy stayed frozen through its training, so it is exactly what it read."""
    modules = read_modules(probe.config)
    given = world_model_fingerprints(world_model, modules)
    held = world_model_fingerprints(probe.world_model, modules)
    recorded = probe.config.probe_world_model_fingerprints or {}
    return [name for name in modules if given[name] != held[name] or given[name] != recorded.get(name, held[name])]


def load_probe(path: str, target: str, world_model):
    """A probe for `target` ('task' or 'tools') that reads `world_model`'s latents; clear errors otherwise. The probe
    runs the world model it holds: every module it reads must have `world_model`'s weights, or its figures would
    be another model's."""
    config, where = checkpoint_config(path)
    if config.get("model_type") != "surgical_wm" or not is_probe(config):
        fail(f"{where}: not a probe of a surgical world model (architectures {config.get('architectures')}); "
             "train one with scripts/train_probe.py")
    expected = list(PROBE_TARGETS[target].class_names)
    labels = [config.get("id2label", {}).get(str(index)) for index in range(len(config.get("id2label", {})))]
    if labels != expected:
        flag = "--tool_probe" if target == "tools" else f"--{target}_probe"
        fail(f"{where}: a probe for the labels {labels}, not the {target} classes {expected} ({flag} "
             f"expects a scripts/train_probe.py --target {target} export)")
    _, probe = load_checkpoint(path)
    differs = world_model_mismatch(probe, world_model)
    if differs:
        reads = " and ".join(read_modules(probe.config))
        option = " --probe_use_predictor" if probe.config.probe_use_predictor else ""
        fail(f"{path}: this probe reads the {reads} of the world model it was trained on, and "
             f"{world_model.name_or_path}'s {' and '.join(differs)} {'differ' if len(differs) > 1 else 'differs'}; "
             f"train it on this world model (scripts/train_probe.py --world_model {world_model.name_or_path}"
             f"{option} --target {target})")
    return probe

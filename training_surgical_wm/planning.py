# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Planning the actions between two moments of a SurgVU video with the world model's CEM planner, next to the
labelled ones: scripts/plan.py prints and saves the result, the demo page shows it.

The frames are sampled and preprocessed as training sampled them (the builder's frame grid at the model's fps and
its crop box without the tool-name band and the black margins, then `ClipTransform`'s V-JEPA 2 preprocessing).
"""

import logging
import time
from pathlib import Path

import numpy as np
import torch

from dataset_surgvu import ClipTransform, CorruptVideoError, SurgVULabelError, action_names, crop_box, probe_video
from dataset_surgvu.builder import sample_frame_indices
from dataset_surgvu.labels import build_actions, labels_at, part_offsets, read_case_labels
from dataset_surgvu.layout import find_cases, parse_part_file, resolve_dirs
from modeling_surgical_wm import SurgicalWorldModel, frames_to_steps

from .loading import fail, world_model_config


logger = logging.getLogger("plan")  # scripts/plan.py's log

# The CEM settings `plan_video` passes on to `SurgicalWorldModel.plan` (scripts/plan.py's flags of the same names).
SEARCH_OPTIONS = ("preset", "num_samples", "iterations", "top_k", "momentum", "std_momentum", "action_prior",
                  "seen_only", "state_rule", "readout")


# ------------------------------------------------------------------------------------------------------- model
def load_world_model(path: str) -> tuple[SurgicalWorldModel, str]:
    """The world model at `path` (this repository's class, which plans) and where its config was read."""
    config, where = world_model_config(path)
    if not config.get("action_spec"):
        fail(f"{where}: the model has no action_spec, so its actions have no names to infer (build it with "
             "scripts/load_vjepa2_pretrained.py --action_spec, or train it with train_hf.py)")
    model = SurgicalWorldModel.from_pretrained(path).eval()
    return model, where


def action_groups(model: SurgicalWorldModel) -> tuple[list[tuple[str, list[int]]], list[str] | None]:
    """The categorical groups `(name, dims)` and, when the config does not name them, the names derived here (for
    `plan(discrete_groups=...)`; None when the config has them)."""
    groups, names = model.config.categorical_groups()
    if names is not None:
        logger.info("the config names no discrete_action_groups (an older checkpoint, or one built without "
                    "train_hf.py): using the action_spec prefixes %s", names)
    return groups, names


def decode_action(vector: np.ndarray, spec: list[str], groups, continuous: list[int]) -> dict:
    """One step's action as names: per group its option with the largest value when above 0.5, else "none"; each
    other dimension as a number."""
    decoded = {}
    for group, dims in groups:
        values = vector[dims]
        best = int(np.argmax(values))
        decoded[group] = spec[dims[best]].split("/", 1)[1] if values[best] > 0.5 else "none"
    for dim in continuous:
        decoded[spec[dim]] = round(float(vector[dim]), 4)
    return decoded


# ------------------------------------------------------------------------------------------------------- video
def case_split(config, video: Path) -> str | None:
    """The split of the model's training data (`data_split` in its config) that holds the video's case; None when the
    config records no split (an older export) or the case is in none of them."""
    parsed = parse_part_file(video.name)
    groups = (config.data_split or {}).get("groups", {})
    return next((name for name, cases in groups.items() if parsed is not None and parsed[0] in cases), None)


def case_labels(video: Path, labels_dir: str | None):
    """(part number, labels, part offsets, note): the labels of the video's case on its timeline, found as the
    builder finds them; labels None with the reason in `note` when there are none."""
    parsed = parse_part_file(video.name)
    if parsed is None:
        return None, None, None, f"{video.name} is not named case_NNN_video_part_NNN.mp4: its case is unknown"
    case_id, part = parsed
    if video.parent.name != case_id:
        return part, None, None, f"{video} is not inside a {case_id}/ folder of a SurgVU layout"
    try:
        videos_dir, found_dir = resolve_dirs(video.parent.parent, labels_dir)
    except FileNotFoundError as error:
        return part, None, None, str(error)
    case = find_cases(videos_dir, found_dir).get(case_id)
    if case is None or not case.has_labels:
        where = found_dir / case_id if found_dir is not None else f"labels/ beside {videos_dir}"
        return part, None, None, f"no tools.csv and tasks.csv for {case_id} (looked in {where}; --labels_dir sets it)"
    try:
        labels = read_case_labels(case.tools_csv, case.tasks_csv, parts=case.parts)
    except SurgVULabelError as error:
        fail(str(error))
    durations = {}
    for number, path in case.parts.items():
        try:
            durations[number] = probe_video(path).duration
        except CorruptVideoError:
            durations[number] = None  # part_offsets gives it the extent its labels reach, as the builder does
    notes = f"{case.tools_csv} and {case.tasks_csv}"
    return part, labels, part_offsets(labels, durations), notes



# ------------------------------------------------------------------------------------------------------- plan
def plan_video(model: SurgicalWorldModel, where: str, video: str, start: float, goal: float, *, checkpoint: str,
               fps: float, fps_source: str, search: dict, context_steps: int = 4, horizon: int | None = None,
               labels_dir: str | None = None, seed: int = 0, chunk_size: int | None = None,
               states: torch.Tensor | None = None) -> dict:
    """The actions inferred between `start` and `goal` (seconds of `video`), the labelled ones beside them, the
    matches per group and the energy per CEM iteration (scripts/plan.py documents each part). `search` holds the
    `SEARCH_OPTIONS`; `states` the context's states `(1, context_steps, state_dim)` of a model with a state token.
    `where` is where the model's config was read. Bad input stops with one line (`fail`)."""
    config, device = model.config, model.device
    spec, frames_per_step = list(config.action_spec), config.frames_per_step
    groups, derived = action_groups(model)
    in_group = {dim for _, dims in groups for dim in dims}
    continuous = [dim for dim in range(config.action_dim) if dim not in in_group]

    video = Path(video).expanduser()
    if not video.is_file():
        fail(f"{video}: no such video file")
    try:
        info = probe_video(video, check_end=False)
    except CorruptVideoError as error:
        fail(f"{error} (not a readable video)")
    for flag, seconds in (("--start", start), ("--goal", goal)):
        if not 0.0 <= seconds <= info.duration:
            fail(f"{flag} {seconds:g} s is outside {video} (duration {info.duration:.2f} s)")
    if goal <= start:
        fail(f"--goal ({goal:g} s) must come after --start ({start:g} s)")

    # The builder's frame grid at the run's fps: sampled frame k is the video frame grid[k], at grid[k] / info.fps.
    grid = sample_frame_indices(info.num_frames, info.fps, fps)
    start_k = min(int(round(start * fps)), len(grid) - 1)
    goal_k = min(int(round(goal * fps)), len(grid) - 1)
    span_steps = (goal_k - start_k) // frames_per_step
    if span_steps < 1:
        fail(f"the span from --start {start:g} s to --goal {goal:g} s of {video} is shorter than one step "
             f"({frames_per_step} frame(s) at {fps:g} fps = {frames_per_step / fps:g} s)")
    first_k = start_k - context_steps * frames_per_step + 1
    if first_k < 0:
        fail(f"--start {start:g} s leaves no room for {context_steps} context step(s) of {frames_per_step} "
             f"frame(s) at {fps:g} fps in {video}: the context needs --start >= "
             f"{(context_steps * frames_per_step - 1) / fps:g} s")
    goal_k = start_k + span_steps * frames_per_step
    if abs(grid[goal_k] / info.fps - goal) > 0.5 / fps:
        logger.info("--goal %g s is not a whole number of steps after --start: the goal is the frame at %.3f s",
                    goal, grid[goal_k] / info.fps)
    horizon = horizon or span_steps
    if horizon != span_steps:
        logger.warning("--horizon %d differs from the %d steps between --start and --goal: step i is compared with "
                       "the i-th labelled step after --start", horizon, span_steps)

    # Sampled frames from the first context frame to the goal frame; step j holds frames j*F .. j*F + F - 1.
    positions = np.arange(first_k, goal_k + 1)
    indices, timestamps = grid[positions], grid[positions] / info.fps

    split = case_split(config, video)
    if split in ("train", "validation"):
        logger.warning("%s is from a %s case of %s: the model was fitted or chosen on it, so what is inferred here is "
                       "no test (the test cases chose nothing)", video.name, split, checkpoint)
    part, labels, offsets, label_note = case_labels(video, labels_dir)
    labelled = None
    if labels is not None and spec != action_names():
        label_note = f"the model's action_spec is not SurgVU's ({len(spec)} dimensions): labels not compared"
        labels = None
    if labels is not None:
        arm_tools, tasks = labels_at(labels, offsets, part, timestamps)
        per_frame = torch.from_numpy(build_actions(arm_tools, tasks))[None]  # (1, frames, A)
        labelled = frames_to_steps(per_frame, frames_per_step)[0].numpy()  # (steps, A)
    else:
        logger.info("no labels: %s; only the inferred actions are printed", label_note)
        label_note = f"none ({label_note})"

    transform = ClipTransform(crop_size=config.encoder_config.crop_size)
    context_frames = context_steps * frames_per_step
    keep = np.r_[0:context_frames, len(positions) - frames_per_step:len(positions)]
    box = crop_box(info)  # the builder's default options, which training uses
    example = {"video_path": str(video), "frame_indices": indices[keep].tolist(), "crop_box": box,
               "case_id": video.parent.name, "actions": np.zeros((len(keep), config.action_dim), np.float32),
               "tasks": np.zeros(len(keep), np.int64), "tools": np.zeros((len(keep), 1), np.float32)}
    try:
        pixels = transform(example)["pixel_values_videos"].to(device)  # (frames, 3, crop, crop)
    except Exception as error:  # FrameUnavailableError, CorruptVideoError: both name the file
        fail(f"{error}")
    finally:
        transform.close()

    start_time = time.perf_counter()
    with torch.no_grad():
        latents = model.encode(pixels[None])  # (1, context + 1, N, D)
        context, goal_latents = latents[:, :context_steps], latents[:, context_steps:]
        # The labelled action of each transition, paired as the model pairs them: the first `context_steps - 1` are
        # given between the context's steps, the next `horizon` are the ones the plan infers.
        transitions = None if labelled is None else model.transition_actions(torch.from_numpy(labelled)).numpy()
        context_actions = None
        if context_steps > 1:
            if transitions is not None:
                context_actions = torch.from_numpy(transitions[None, : context_steps - 1]).to(device)
            else:
                logger.info("no labels: the actions between the context steps are zeros")
        generator = torch.Generator().manual_seed(seed)
        try:
            output = model.plan(context, goal_latents, horizon=horizon, generator=generator,
                                context_actions=context_actions, discrete_groups=derived, chunk_size=chunk_size,
                                states=states, **search)
        except ValueError as error:  # a prior the config lacks or that was computed for other actions
            fail(f"{where}: {error}")
        labelled_energy = None
        planned_labels = transitions[context_steps - 1 :] if transitions is not None else None
        if planned_labels is not None and len(planned_labels) == horizon:
            labelled_actions = torch.from_numpy(planned_labels[None]).to(device)
            labelled_energy = float(model.energy(context, goal_latents, labelled_actions,
                                                 context_actions=context_actions, chunk_size=chunk_size,
                                                 states=states, state_rule=output.settings["state_rule"])[0])
    seconds = time.perf_counter() - start_time
    logger.info("planned in %.1f s on %s", seconds, device)

    actions = output.actions[0].cpu().numpy()
    start_used = float(grid[start_k] / info.fps)

    def step_time(step: int) -> float:
        """When the observation after `step` planned steps is taken (past the video's end with a long --horizon)."""
        k = start_k + step * frames_per_step
        return float(grid[k] / info.fps) if k < len(grid) else start_used + step * frames_per_step / fps

    steps = []
    for step in range(horizon):
        inferred = decode_action(actions[step], spec, groups, continuous)
        label = None
        if planned_labels is not None and step < len(planned_labels):
            label = decode_action(planned_labels[step], spec, groups, continuous)
        steps.append({
            "step": step + 1,
            "from": round(step_time(step), 4),
            "to": round(step_time(step + 1), 4),
            "inferred": inferred,
            "labelled": label,
            "match": {group: inferred[group] == label[group] for group, _ in groups} if label is not None else {},
        })
    matches = {}
    compared = [step for step in steps if step["labelled"] is not None]
    if compared:
        for group, dims in groups:
            count = sum(step["match"][group] for step in compared)
            matches[group] = {"matches": count, "steps": len(compared), "rate": count / len(compared),
                              "chance": 1.0 / (len(dims) + 1)}
    energies = output.energy_per_iteration[0].tolist()
    result = {
        "checkpoint": checkpoint,
        "config": where,
        "video": str(video),
        "case_split": split,
        "duration": info.duration,
        "fps": fps,
        "fps_from": fps_source,
        "frames_per_step": frames_per_step,
        "action_pairing": config.action_pairing,
        "start": start,
        "goal": goal,
        "start_used": start_used,
        "goal_used": float(grid[goal_k] / info.fps),
        "context_steps": context_steps,
        "horizon": horizon,
        "span_steps": span_steps,
        "frame_indices": {"context": indices[:context_frames].tolist(),
                          "goal": indices[len(positions) - frames_per_step:].tolist()},
        "crop_box": box,
        "settings": {**output.settings, "seed": seed, "chunk_size": chunk_size},
        "groups": {group: {"options": [spec[dim].split("/", 1)[1] for dim in dims] + ["none"],
                           "chance": 1.0 / (len(dims) + 1)} for group, dims in groups},
        "groups_derived_from_action_spec": derived is not None,
        "continuous": [spec[dim] for dim in continuous],
        "labels": label_note,
        "steps": steps,
        "matches": matches,
        "energy": float(output.energy[0]),
        "energy_per_iteration": energies,
        "elite_energy_per_iteration": output.elite_energy_per_iteration[0].tolist(),
        "best_energy_so_far": np.minimum.accumulate(energies).tolist(),
        "labelled_energy": labelled_energy,
        "actions": actions.tolist(),
        "action_mean": output.action_mean[0].cpu().numpy().tolist(),
        "labelled_actions": planned_labels.tolist() if planned_labels is not None else None,
    }
    return result

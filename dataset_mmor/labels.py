"""MM-OR's downstream labels per timepoint, their class lists, and the world model's actions built from them.

Encodings (one value per timepoint):
- `breach`: 1 when the sterility-breach file lists at least one `[subject, object, predicate]` triplet, 0 for `[]`,
  -1 when the file has no entry for the timepoint; `breach_triplets` keeps the triplets as a JSON string (`"[]"`).
- `phase`: index in `ROBOT_PHASES` (names lower-cased and stripped, as the public evaluation does); -1 when missing
  or not one of the 9 phases.
- `next_action`: index in `NEXT_ACTIONS` (`scan patient` read as `scan`, as the public evaluation does); -1 when the
  file holds `null`/empty or a name outside the 12; `seconds_to_next_action` is then NaN.
- actions: one-hot phase (9) then one-hot next action (12); a missing phase or next action leaves its part all zero.
"""

from __future__ import annotations

import json
import math

import numpy as np


ROBOT_PHASES = (
    "turn on",
    "initial calibration by mps",
    "dressing the robot, to make it sterile",
    "install the saw by nurse",
    "install base array by nurse",
    "install calibration array",
    "calibrate the robot by nurse",
    "remove calibration array",
    "install actual saw tip",
)
NEXT_ACTIONS = (
    "bring in", "prepare", "clean", "cut", "drill", "saw", "hammer", "cement", "suture", "scan", "bring out", "none",
)  # fmt: skip
BREACH_CLASSES = ("no", "yes")
MISSING = -1
_ACTION_ALIASES = {"scan patient": "scan"}


def action_names() -> list[str]:
    """One name per action dimension: `phase/<phase>` (9) then `next_action/<action>` (12)."""
    return [f"phase/{name}" for name in ROBOT_PHASES] + [f"next_action/{name}" for name in NEXT_ACTIONS]


def encode_phase(value) -> int:
    if isinstance(value, str):
        name = value.lower().strip()
        if name in ROBOT_PHASES:
            return ROBOT_PHASES.index(name)
    return MISSING


def encode_next_action(value) -> tuple[int, float]:
    """(class index, seconds until it) of a next-action entry `[action, seconds]`; (-1, NaN) for null or unknown."""
    if not isinstance(value, (list, tuple)) or not value or not isinstance(value[0], str):
        return MISSING, math.nan
    name = value[0].lower().strip()
    name = _ACTION_ALIASES.get(name, name)
    if name not in NEXT_ACTIONS:
        return MISSING, math.nan
    seconds = value[1] if len(value) > 1 else None
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        seconds = math.nan
    return NEXT_ACTIONS.index(name), seconds


def encode_breach(value) -> tuple[int, str]:
    """(0/1, triplets as JSON) of a breach entry; (-1, "[]") when the timepoint has no entry."""
    if value is None:
        return MISSING, "[]"
    triplets = [list(triplet) for triplet in value] if isinstance(value, (list, tuple)) else []
    return int(len(triplets) > 0), json.dumps(triplets)


def take_labels(timepoints: int, breach: dict, phase: dict, next_action: dict) -> tuple[dict, dict]:
    """Per-timepoint label arrays of one take from its three label files, and counts of what was missing or odd."""
    labels = {
        "breach": np.full(timepoints, MISSING, dtype=np.int64),
        "breach_triplets": ["[]"] * timepoints,
        "phase": np.full(timepoints, MISSING, dtype=np.int64),
        "next_action": np.full(timepoints, MISSING, dtype=np.int64),
        "seconds_to_next_action": np.full(timepoints, math.nan, dtype=np.float32),
    }
    noise = {"breach/missing": 0, "phase/missing": 0, "phase/unknown": 0, "next_action/null": 0,
             "next_action/unknown": 0}  # fmt: skip
    for timepoint in range(timepoints):
        frame_id = f"{timepoint:06d}"
        labels["breach"][timepoint], labels["breach_triplets"][timepoint] = encode_breach(breach.get(frame_id))
        noise["breach/missing"] += frame_id not in breach
        raw_phase = phase.get(frame_id)
        labels["phase"][timepoint] = encode_phase(raw_phase)
        if labels["phase"][timepoint] == MISSING:
            noise["phase/missing" if raw_phase is None else "phase/unknown"] += 1
        raw_action = next_action.get(frame_id)
        index, seconds = encode_next_action(raw_action)
        labels["next_action"][timepoint], labels["seconds_to_next_action"][timepoint] = index, seconds
        if index == MISSING:
            noise["next_action/null" if not raw_action else "next_action/unknown"] += 1
    return labels, noise


def build_actions(phase: np.ndarray, next_action: np.ndarray) -> np.ndarray:
    """float32 [T, 21]: one-hot phase then one-hot next action; -1 leaves that part all zero."""
    actions = np.zeros((len(phase), len(ROBOT_PHASES) + len(NEXT_ACTIONS)), dtype=np.float32)
    steps = np.arange(len(phase))
    known = phase >= 0
    actions[steps[known], phase[known]] = 1.0
    known = next_action >= 0
    actions[steps[known], len(ROBOT_PHASES) + next_action[known]] = 1.0
    return actions

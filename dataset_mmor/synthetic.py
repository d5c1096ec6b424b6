"""A small synthetic MM-OR sample in the real layout, deterministic from a seed, with its clean ground truth.

`make_synthetic_mmor(out_dir)` writes, as the public code reads them:

- `<folder>/colorimage/camera0{1..5}_colorimage-<azure frame>.jpg` and `<folder>/simstation/camera0{0..3}_<frame>.jpg`;
  frame numbers differ from timepoint numbers (an offset and dropped frames) and between the camera groups, and are
  written as 6-digit text in the timestamp lists and the file names;
- `<folder>/timestamp_to_pcd_and_frames_list_<take>.json` (a list of `[timestamp index, {"azure", "simstation",
  "trackercam"}]`), except for one take that has only the fallback `timestamp_to_pcd_and_frames_list.json`;
- two takes sharing one folder (`012_1_PKA` and `012_2_PKA` in `012_PKA/`, frame numbers continuing);
- `take_timestamp_to_{sterility_breach,robot_phase,next_action}/<take>.json`, dicts keyed by 6-digit frame ids:
  breach triplets in short rare runs (`[]` elsewhere), robot phases in order (some written with other capitalisation
  or trailing spaces, which the public evaluation lower-cases and strips; `004_PKA` stays in the last phase, as there
  the robot is already prepared), next actions `[action, seconds]` with `null` after the last action and in gaps;
- frames that follow the labels: the robot is drawn in a phase-dependent pose and colour, and a breach shows a
  non-sterile person's hand (magenta) reaching into the sterile instrument table (green), absent otherwise;
- one take (`002_PKA`) without images of camera `simstation:3`.

The manifest (returned, and written to `synthetic_manifest.json`) holds the clean per-timepoint labels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .labels import NEXT_ACTIONS, ROBOT_PHASES
from .layout import AZURE_CAMERAS, LABEL_FOLDERS, SIMSTATION_CAMERAS, TAKE_NAME_TO_FOLDER


# take -> (split, timepoints); 012_1/012_2 share a folder, 001_PKA has only the fallback timestamp file name.
SYNTHETIC_TAKES = {
    "001_PKA": ("train", 96),
    "012_1_PKA": ("train", 64),
    "012_2_PKA": ("train", 72),
    "002_PKA": ("validation", 80),
    "004_PKA": ("test", 88),
    "013_PKA": ("short", 40),
}
FALLBACK_TIMESTAMP_TAKES = ("001_PKA",)
MISSING_CAMERAS = {"002_PKA": ("simstation:3",)}
SECONDS_PER_TIMEPOINT = 1.0
BREACH_RATE = 0.04
# Entities and predicate of the public code's scene graphs; breaches are non-sterile people touching sterile things.
NON_STERILE = ("circulator", "anest", "mps")
STERILE = ("instrument_table", "head_surgeon", "assistant_surgeon", "nurse")
BREACH_PREDICATE = "touching"

_PHASE_COLOURS = np.array(
    [[200, 200, 200], [255, 160, 0], [90, 140, 255], [255, 80, 80], [80, 220, 120], [200, 80, 255],
     [255, 230, 60], [0, 200, 200], [150, 90, 40]], dtype=np.uint8,
)  # fmt: skip
_TABLE = (40, 170, 90)
_HAND = (255, 0, 200)


def _phase_sequence(rng, timepoints: int, last_only: bool) -> np.ndarray:
    if last_only:
        return np.full(timepoints, len(ROBOT_PHASES) - 1)
    cuts = np.sort(rng.choice(np.arange(3, timepoints - 2), size=len(ROBOT_PHASES) - 1, replace=False))
    return np.searchsorted(cuts, np.arange(timepoints), side="right")


def _next_actions(rng, timepoints: int) -> tuple[np.ndarray, np.ndarray]:
    """Class index and seconds until it per timepoint; -1/NaN after the last action and in a gap."""
    events = np.sort(rng.choice(np.arange(5, timepoints - 8), size=max(2, timepoints // 16), replace=False))
    kinds = rng.choice(len(NEXT_ACTIONS), size=len(events))
    action = np.full(timepoints, -1)
    seconds = np.full(timepoints, np.nan)
    for t in range(timepoints):
        upcoming = np.nonzero(events > t)[0]
        if len(upcoming):
            action[t] = kinds[upcoming[0]]
            seconds[t] = round((events[upcoming[0]] - t) * SECONDS_PER_TIMEPOINT, 1)
    gap = rng.integers(0, timepoints // 2)
    action[gap : gap + 3], seconds[gap : gap + 3] = -1, np.nan
    return action, seconds


def _breaches(rng, timepoints: int) -> list[list[list[str]]]:
    triplets = [[] for _ in range(timepoints)]
    wanted = max(2, int(round(BREACH_RATE * timepoints)))
    placed = 0
    while placed < wanted:
        length = int(rng.integers(2, 4))
        start = int(rng.integers(1, timepoints - length))
        if any(triplets[t] for t in range(start - 1, start + length + 1)):
            continue
        event = [str(rng.choice(NON_STERILE)), str(rng.choice(STERILE)), BREACH_PREDICATE]
        for t in range(start, start + length):
            triplets[t] = [list(event)]
        placed += length
    return triplets


def render_frame(phase: int, breach: bool, timepoint: int, width: int, height: int, rng) -> np.ndarray:
    """The room: floor, instrument table (sterile zone), robot in its phase's pose and colour, and the
    non-sterile hand inside the table's zone at a breach."""
    frame = np.full((height, width, 3), 70, dtype=np.uint8)
    frame[: height // 3] = (110, 110, 120)  # wall
    tx0, ty0, tx1, ty1 = int(0.08 * width), int(0.55 * height), int(0.42 * width), int(0.85 * height)
    frame[ty0:ty1, tx0:tx1] = _TABLE
    # robot: base, and an arm whose angle and colour follow the phase
    bx, by = int(0.72 * width), int(0.8 * height)
    frame[by - height // 10 : by, bx - width // 14 : bx + width // 14] = (50, 50, 50)
    angle = math.pi * (0.15 + 0.7 * phase / (len(ROBOT_PHASES) - 1))
    length = 0.45 * height
    for step in np.linspace(0.0, 1.0, 40):
        x = int(bx - step * length * math.cos(angle))
        y = int(by - height // 10 - step * length * math.sin(angle))
        frame[max(0, y - 3) : y + 3, max(0, x - 3) : x + 3] = _PHASE_COLOURS[phase]
    # a person walking around, unrelated to the labels
    px = int((0.5 + 0.4 * math.sin(timepoint / 7.0)) * width)
    frame[int(0.35 * height) : int(0.7 * height), max(0, px - 4) : px + 4] = (30, 60, 140)
    if breach:  # a hand and forearm reaching into the sterile zone
        hx, hy = (tx0 + tx1) // 2, (ty0 + ty1) // 2
        frame[hy - height // 12 : hy + height // 12, hx - width // 12 : hx + width // 12] = _HAND
        frame[int(0.4 * height) : hy, hx - 2 : hx + 3] = _HAND
    noise = rng.integers(-6, 7, size=frame.shape)
    return np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def make_synthetic_mmor(
    out_dir, seed: int = 0, width: int = 128, height: int = 96, takes: dict | None = None, jpeg_quality: int = 90
) -> dict:
    """Write the sample to `out_dir` (the `MM-OR_data` folder); return the manifest of clean labels."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    takes = takes or SYNTHETIC_TAKES
    manifest = {"seed": seed, "width": width, "height": height, "seconds_per_timepoint": SECONDS_PER_TIMEPOINT,
                "frame_number_format": "6-digit text", "takes": {}}  # fmt: skip
    folder_next_frame = {}
    for sub in LABEL_FOLDERS.values():
        (out / sub).mkdir(parents=True, exist_ok=True)
    for take, (split, timepoints) in takes.items():
        folder = TAKE_NAME_TO_FOLDER.get(take, take)
        take_dir = out / folder
        (take_dir / "colorimage").mkdir(parents=True, exist_ok=True)
        (take_dir / "simstation").mkdir(parents=True, exist_ok=True)
        # frame numbers: continuing within a shared folder, with dropped frames, different per camera group
        azure_start, simstation_start = folder_next_frame.get(folder, (int(rng.integers(3, 30)), 0))
        azure = azure_start + np.cumsum(rng.choice([1, 1, 1, 2], size=timepoints)) - 1
        simstation = simstation_start + np.arange(timepoints) * 3 + int(rng.integers(0, 3))
        folder_next_frame[folder] = (int(azure[-1]) + 5, int(simstation[-1]) + 7)
        phase = _phase_sequence(rng, timepoints, last_only=take == "004_PKA")
        action, seconds = _next_actions(rng, timepoints)
        triplets = _breaches(rng, timepoints)

        entries = [
            [f"{t * 2 + 1:06d}", {"azure": f"{a:06d}", "simstation": f"{s:06d}", "trackercam": f"{s + 1:06d}"}]
            for t, (a, s) in enumerate(zip(azure.tolist(), simstation.tolist()))
        ]
        name = ("timestamp_to_pcd_and_frames_list.json" if take in FALLBACK_TIMESTAMP_TAKES
                else f"timestamp_to_pcd_and_frames_list_{take}.json")  # fmt: skip
        (take_dir / name).write_text(json.dumps(entries))

        missing = MISSING_CAMERAS.get(take, ())
        views = [("azure", c) for c in AZURE_CAMERAS] + [("simstation", c) for c in SIMSTATION_CAMERAS]
        for t in range(timepoints):
            scene = render_frame(int(phase[t]), bool(triplets[t]), t, width, height, rng)
            for view, (group, index) in enumerate(views):
                if f"{group}:{index}" in missing:
                    continue
                # each camera sees the scene shifted and lit a little differently
                image = np.clip(np.roll(scene, view * width // 40, axis=1).astype(np.int16) + 4 * view - 12, 0, 255)
                image = image.astype(np.uint8)
                if group == "azure":
                    path = take_dir / "colorimage" / f"camera0{index}_colorimage-{azure[t]:06d}.jpg"
                else:
                    path = take_dir / "simstation" / f"camera0{index}_{simstation[t]:06d}.jpg"
                Image.fromarray(image).save(path, quality=jpeg_quality)

        frame_ids = [f"{t:06d}" for t in range(timepoints)]
        phase_text = {}
        for t, frame_id in enumerate(frame_ids):
            text = ROBOT_PHASES[phase[t]]
            if rng.random() < 0.1:  # noise the public evaluation removes with .lower().strip()
                text = text.capitalize() + " "
            phase_text[frame_id] = text
        next_text = {
            frame_id: (None if action[t] < 0 else [NEXT_ACTIONS[action[t]], float(seconds[t])])
            for t, frame_id in enumerate(frame_ids)
        }
        labels = {"breach": dict(zip(frame_ids, triplets)), "phase": phase_text, "next_action": next_text}
        for kind, sub in LABEL_FOLDERS.items():
            (out / sub / f"{take}.json").write_text(json.dumps(labels[kind]))
        manifest["takes"][take] = {
            "split": split,
            "folder": folder,
            "timestamps_file": name,
            "timepoints": timepoints,
            "azure_frames": [f"{a:06d}" for a in azure.tolist()],
            "simstation_frames": [f"{s:06d}" for s in simstation.tolist()],
            "missing_cameras": list(missing),
            "phase": phase.tolist(),
            "next_action": action.tolist(),
            "seconds_to_next_action": [None if math.isnan(s) else s for s in seconds.tolist()],
            "breach": [int(bool(x)) for x in triplets],
            "breach_triplets": triplets,
        }
    (out / "synthetic_manifest.json").write_text(json.dumps(manifest))
    return manifest

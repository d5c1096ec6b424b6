"""Where MM-OR keeps things: takes and their folders, the official splits, cameras, timepoint -> frame lists.

Names and layout follow the authors' public code (`helpers/configurations.py`, `or_dataset.py`): a take's images live
in `<data_root>/<folder>/`, where several short takes share one folder (`015_PKA` -> `015-018_PKA`), and each take
maps its timepoints to frame numbers with `timestamp_to_pcd_and_frames_list_<take>.json`, or
`timestamp_to_pcd_and_frames_list.json` when the take has no file of its own.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path


class MMORDataError(ValueError):
    """MM-OR files that cannot be read as the builder expects; the message names the file."""


# The public code's take -> folder mapping (takes not listed live in a folder of their own name).
TAKE_NAME_TO_FOLDER = {
    "012_1_PKA": "012_PKA",
    "012_2_PKA": "012_PKA",
    "015_PKA": "015-018_PKA",
    "016_PKA": "015-018_PKA",
    "017_PKA": "015-018_PKA",
    "018_1_PKA": "015-018_PKA",
    "018_2_PKA": "015-018_PKA",
    "019_PKA": "019-022_PKA",
    "020_PKA": "019-022_PKA",
    "021_PKA": "019-022_PKA",
    "022_PKA": "019-022_PKA",
    **{f"{number:03d}_PKA": "023-032_PKA" for number in range(23, 33)},
}

# The official downstream splits (robot phase, next action, sterility breach).
SPLIT_TO_TAKES = {
    "train": ("001_PKA", "003_TKA", "005_TKA", "006_PKA", "008_PKA", "010_PKA", "012_1_PKA", "012_2_PKA", "035_PKA",
              "037_TKA"),
    "validation": ("002_PKA", "007_TKA", "009_TKA"),
    "test": ("004_PKA", "011_TKA", "036_PKA", "038_TKA"),
    # The short (anomaly) clips 013-033: in none of the three official splits, kept apart in a split of their own.
    "short": ("013_PKA", "014_PKA", "015_PKA", "016_PKA", "017_PKA", "018_1_PKA", "018_2_PKA",
              *(f"{number:03d}_PKA" for number in range(19, 33)), "033_PKA"),
}  # fmt: skip
OFFICIAL_SPLITS = ("train", "validation", "test")

LABEL_FOLDERS = {
    "breach": "take_timestamp_to_sterility_breach",
    "phase": "take_timestamp_to_robot_phase",
    "next_action": "take_timestamp_to_next_action",
}
AZURE_CAMERAS = (1, 2, 3, 4, 5)
SIMSTATION_CAMERAS = (0, 1, 2, 3)
FRAME_NUMBER_DIGITS = 6  # only used when a frame number is stored as an integer (the files store the name's text)
_FRAME_ID = re.compile(r"^\d{6}$")


@dataclasses.dataclass(frozen=True)
class Camera:
    """One camera: `group` is the key of the timestamp list's entry[1] dict (`azure` or `simstation`)."""

    group: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.group}:{self.index}"

    @property
    def folder(self) -> str:
        return "colorimage" if self.group == "azure" else "simstation"

    def file_name(self, frame_number: str) -> str:
        if self.group == "azure":
            return f"camera0{self.index}_colorimage-{frame_number}.jpg"
        return f"camera0{self.index}_{frame_number}.jpg"

    def frame_path(self, take_dir: Path, frame_number: str) -> Path:
        return take_dir / self.folder / self.file_name(frame_number)


def parse_camera(camera: str | Camera) -> Camera:
    """`"azure:1"`..`"azure:5"` (colorimage/, the room's RGB-D cameras) or `"simstation:0"`..`"simstation:3"`."""
    if isinstance(camera, Camera):
        return camera
    group, _, index = str(camera).partition(":")
    allowed = {"azure": AZURE_CAMERAS, "simstation": SIMSTATION_CAMERAS}
    if group not in allowed or not index.isdigit() or int(index) not in allowed[group]:
        raise ValueError(f"camera must be one of azure:1..azure:5 or simstation:0..simstation:3, got {camera!r}")
    return Camera(group, int(index))


def take_folder(take: str, take_to_folder: dict | None = None) -> str:
    """The folder holding a take's images (the public mapping, updated by `take_to_folder`)."""
    mapping = {**TAKE_NAME_TO_FOLDER, **(take_to_folder or {})}
    return mapping.get(take, take)


def timestamps_file(take_dir: Path, take: str) -> Path:
    """`timestamp_to_pcd_and_frames_list_<take>.json`, else `timestamp_to_pcd_and_frames_list.json`."""
    specific = take_dir / f"timestamp_to_pcd_and_frames_list_{take}.json"
    if specific.is_file():
        return specific
    generic = take_dir / "timestamp_to_pcd_and_frames_list.json"
    if generic.is_file():
        return generic
    raise MMORDataError(f"{specific}: missing, and so is the fallback {generic.name} (take {take})")


def frame_number_text(value) -> str:
    """A frame number as written in the image file names: the stored text, or an integer zero-padded to 6 digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:0{FRAME_NUMBER_DIGITS}d}"
    raise TypeError(f"not a frame number: {value!r}")


def read_json(path: Path, kind: type, described: str):
    """A JSON file whose top level must be a `kind` (list or dict) `described` so: its value, or an MMORDataError
    naming the file."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise MMORDataError(f"{path}: not a readable JSON file ({error})") from error
    if not isinstance(value, kind):
        raise MMORDataError(f"{path}: expected a JSON {kind.__name__} {described}, got {type(value).__name__}")
    return value


def read_timepoint_frames(path: Path, group: str) -> list[str]:
    """Frame number (file-name text) of camera `group` at each timepoint of a timestamp list file."""
    entries = read_json(path, list, "indexed by timepoint")
    frames = []
    for timepoint, entry in enumerate(entries):
        try:
            frames.append(frame_number_text(entry[1][group]))
        except (TypeError, KeyError, IndexError) as error:
            raise MMORDataError(
                f"{path}: entry {timepoint} is {str(entry)[:120]}; expected [timestamp, {{'{group}': frame, ...}}]"
            ) from error
    return frames


def read_label_file(path: Path) -> dict:
    """A downstream label file: a JSON dict keyed by 6-digit frame ids (`"000000"`, `"000001"`, ...)."""
    if not Path(path).is_file():
        raise MMORDataError(f"{path}: label file missing")
    labels = read_json(path, dict, "keyed by frame id")
    bad = [key for key in labels if not _FRAME_ID.match(key)]
    if bad:
        raise MMORDataError(
            f"{path}: keys must be 6-digit frame ids such as '000000'; {len(bad)} are not, e.g. {bad[:3]}"
        )
    return labels

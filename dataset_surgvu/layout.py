"""Finding cases, video parts and label files in a SurgVU folder, and a cheap report of what is there."""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from pathlib import Path

from .labels import SurgVULabelError, read_case_labels
from .video import CorruptVideoError, probe_video


logger = logging.getLogger(__name__)

_CASE_DIR = re.compile(r"^case_(\d+)$")
_PART_FILE = re.compile(r"^(case_\d+)_video_part_(\d+)\.mp4$", re.IGNORECASE)


def parse_part_file(name: str) -> tuple[str, int] | None:
    """(case id, part number) of a SurgVU video file name (`case_005_video_part_002.mp4` -> `("case_005", 2)`), or
    None when the name is not of that form."""
    match = _PART_FILE.match(name)
    return None if match is None else (match.group(1), int(match.group(2)))


@dataclasses.dataclass
class CaseFiles:
    case_id: str
    parts: dict[int, Path]  # part number (1-based) -> video
    tools_csv: Path | None
    tasks_csv: Path | None

    @property
    def has_labels(self) -> bool:
        return self.tools_csv is not None and self.tasks_csv is not None


def resolve_dirs(data_dir: str | Path, labels_dir: str | Path | None = None) -> tuple[Path, Path | None]:
    """`data_dir` is the folder holding `surgvu24/` (and usually `labels/`), or `surgvu24/` itself."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder (expected the folder holding surgvu24/ and labels/)")
    videos_dir = data_dir / "surgvu24" if (data_dir / "surgvu24").is_dir() else data_dir
    if not any(_CASE_DIR.match(entry.name) for entry in videos_dir.iterdir() if entry.is_dir()):
        raise FileNotFoundError(
            f"{videos_dir}: no case_NNN folders found (expected surgvu24/case_000/case_000_video_part_001.mp4, ...)"
        )
    if labels_dir is not None:
        labels_dir = Path(labels_dir).expanduser()
        if not labels_dir.is_dir():
            raise FileNotFoundError(f"{labels_dir}: the labels folder does not exist")
    else:
        for candidate in (data_dir / "labels", videos_dir.parent / "labels"):
            if candidate.is_dir():
                labels_dir = candidate
                break
    return videos_dir, labels_dir


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "__MACOSX"))


def find_cases(videos_dir: Path, labels_dir: Path | None) -> dict[str, CaseFiles]:
    """Cases by id, ignoring `__MACOSX/`, hidden and AppleDouble (`._*`) files."""
    cases = {}
    for case_dir in sorted(p for p in videos_dir.iterdir() if p.is_dir() and _visible(p) and _CASE_DIR.match(p.name)):
        parts = {}
        for video in sorted(p for p in case_dir.iterdir() if p.is_file() and _visible(p)):
            parsed = parse_part_file(video.name)
            if parsed is None:
                if video.suffix.lower() == ".mp4":
                    logger.warning("%s: not named case_NNN_video_part_NNN.mp4; ignored", video)
                continue
            parts[parsed[1]] = video
        if not parts:
            continue
        label_dir = labels_dir / case_dir.name if labels_dir is not None else None
        tools = label_dir / "tools.csv" if label_dir is not None and (label_dir / "tools.csv").is_file() else None
        tasks = label_dir / "tasks.csv" if label_dir is not None and (label_dir / "tasks.csv").is_file() else None
        cases[case_dir.name] = CaseFiles(case_dir.name, parts, tools, tasks)
    return cases


def scan_surgvu(data_dir: str | Path, labels_dir: str | Path | None = None, check_videos: bool = True) -> dict:
    """A cheap report of a SurgVU folder: cases, parts, label files, label noise, unreadable videos.

    Videos are probed from their container metadata (plus a demux of their last packets), never decoded in full.
    Label files with the wrong columns or nothing usable are reported under `label_errors` instead of raising;
    malformed rows are skipped with a warning and counted in `label_noise`, as the builder does.
    """
    videos_dir, labels_dir = resolve_dirs(data_dir, labels_dir)
    cases = find_cases(videos_dir, labels_dir)
    noise = collections.Counter()
    report = {
        "videos_dir": str(videos_dir),
        "labels_dir": str(labels_dir) if labels_dir is not None else None,
        "num_cases": len(cases),
        "num_videos": sum(len(case.parts) for case in cases.values()),
        "cases": {},
        "cases_without_labels": [],
        "label_dirs_without_videos": [],
        "label_errors": {},
        "corrupt_videos": {},
        "total_hours": 0.0,
    }
    for case in cases.values():
        entry = {
            "parts": sorted(case.parts),
            "tools_csv": case.tools_csv is not None,
            "tasks_csv": case.tasks_csv is not None,
        }
        if not case.has_labels:
            report["cases_without_labels"].append(case.case_id)
        else:
            try:
                labels = read_case_labels(case.tools_csv, case.tasks_csv, parts=case.parts, noise=noise)
                entry["num_tool_rows"], entry["num_task_rows"] = len(labels.tools), len(labels.tasks)
            except SurgVULabelError as error:
                report["label_errors"][case.case_id] = str(error)
        if check_videos:
            for part, video in sorted(case.parts.items()):
                try:
                    report["total_hours"] += probe_video(video).duration / 3600
                except CorruptVideoError as error:
                    report["corrupt_videos"][str(video)] = str(error)
        report["cases"][case.case_id] = entry
    if labels_dir is not None:
        report["label_dirs_without_videos"] = sorted(
            p.name for p in labels_dir.iterdir() if p.is_dir() and _CASE_DIR.match(p.name) and p.name not in cases
        )
    report["label_noise"] = dict(sorted(noise.items()))
    return report

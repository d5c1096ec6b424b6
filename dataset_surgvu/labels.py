"""SurgVU label files: class lists, name normalisation, CSV parsing and per-frame lookup.

The real `tools.csv` / `tasks.csv` files are noisy (see the dataset notes): tool names such as `nan(camera in)`,
empty strings, `Single Site"`, trailing spaces and tools outside the class list; task names in two capitalisations,
with stray quotes and leading spaces, and names outside the list. This module normalises all of that, counts what it
saw, and answers "which tools are installed on which arm, and which task runs" at any frame of a case.

A malformed row (a part or time that is not a number, nan, inf, out of range, a part with no video, a stop before its
start, too few fields, bytes that are not UTF-8) is skipped with a warning naming the file, the line and the value,
and counted. A file that holds nothing usable (empty, unreadable, every row skipped) raises `UnusableLabelFileError`:
its case is as a case without label files. A header without rows is a case without task segments (all Other) or
tools. A header without the required columns raises `SurgVULabelError`: the file is of another format, which no
skipping would fix.
"""

from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import logging
import math
import re
from collections.abc import Collection
from pathlib import Path

import numpy as np


logger = logging.getLogger(__name__)

TOOL_CLASSES = (
    "needle driver",
    "cadiere forceps",
    "prograsp forceps",
    "monopolar curved scissors",
    "bipolar forceps",
    "stapler",
    "force bipolar",
    "vessel sealer",
    "permanent cautery hook/spatula",
    "clip applier",
    "tip-up fenestrated grasper",
    "grasping retractor",
)
# In the order the official SurgVU evaluator indexes them: "Other" (index 7) fills frames no segment covers.
TASK_CLASSES = (
    "Range of motion",
    "Rectal artery/vein",
    "Retraction and collision avoidance",
    "Skills application",
    "Suspensory ligaments",
    "Suturing",
    "Uterine horn",
    "Other",
)
OTHER_TASK = TASK_CLASSES.index("Other")
ARMS = ("USM1", "USM2", "USM3", "USM4")

TOOLS_COLUMNS = (
    "install_case_part",
    "install_case_time",
    "uninstall_case_part",
    "uninstall_case_time",
    "arm",
    "groundtruth_toolname",
)
TASKS_COLUMNS = ("start_part", "start_time", "stop_part", "stop_time", "groundtruth_taskname")

_TOOL_INDEX = {name: i for i, name in enumerate(TOOL_CLASSES)}
_TASK_INDEX = {name.lower(): i for i, name in enumerate(TASK_CLASSES)}
_HMS = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*$")

MAX_PART = 999  # the video files number their parts in three digits (`_video_part_001`)
MAX_PART_SECONDS = 24 * 3600.0  # longer than any recorded part (the longest run a little over 5 hours)
# Noise kinds (after `tools/`, `tasks/`) of rows that are skipped; the other kinds are kept, normalised.
SKIPPED_ROW_KINDS = (
    "not_utf8", "unreadable_row", "too_few_fields", "bad_part", "bad_time", "part_without_video", "reversed_interval"
)


class SurgVULabelError(ValueError):
    """A label file cannot be read as a SurgVU label file (the message names the file and what is wrong)."""


class UnusableLabelFileError(SurgVULabelError):
    """A label file with nothing usable (empty, unreadable, every row skipped): its case has no labels, as when the
    file is missing."""


# --------------------------------------------------------------------------------------------------------------------
# Action spec: what one action vector means
# --------------------------------------------------------------------------------------------------------------------
def action_names() -> list[str]:
    """Names of the action dimensions: per arm a multi-hot over the tool classes, then a one-hot over the tasks.

    The SurgVU labels carry no kinematics; what the surgeon controls and the labels record is which instrument is
    installed on which arm and which task is being performed. Those form the action of each time step (56 dims).
    """
    names = [f"{arm}/{tool}" for arm in ARMS for tool in TOOL_CLASSES]
    names += [f"task/{task}" for task in TASK_CLASSES]
    return names


def build_actions(arm_tools: np.ndarray, tasks: np.ndarray) -> np.ndarray:
    """`arm_tools` [T, 4, 12] 0/1 and `tasks` [T] (-1: unlabeled) -> float32 actions [T, 56], as `action_names`."""
    num_steps = arm_tools.shape[0]
    task_onehot = np.zeros((num_steps, len(TASK_CLASSES)), dtype=np.float32)
    labeled = tasks >= 0
    task_onehot[np.nonzero(labeled)[0], tasks[labeled]] = 1.0
    return np.concatenate([arm_tools.reshape(num_steps, -1).astype(np.float32), task_onehot], axis=1)


# --------------------------------------------------------------------------------------------------------------------
# Name normalisation
# --------------------------------------------------------------------------------------------------------------------
def _clean(raw: str) -> str:
    return " ".join(raw.replace('"', " ").replace("'", " ").split()).lower()


def normalize_tool_name(raw: str | None) -> tuple[int | None, list[str]]:
    """Map a raw `groundtruth_toolname` to an index into `TOOL_CLASSES` (None: not a tool) and the noise kinds seen."""
    noise = []
    if raw is None or raw.strip() == "" or raw.strip().lower() == "nan":
        return None, ["empty_name"]
    if raw != raw.strip():
        noise.append("stray_whitespace")
    if '"' in raw or "'" in raw:
        noise.append("stray_quote")
    name = _clean(raw)
    if name.startswith("nan(") or name.startswith("nan ("):
        return None, noise + ["camera_in"]
    index = _TOOL_INDEX.get(name)
    if index is None:
        noise.append("out_of_class")
    elif raw.strip() != TOOL_CLASSES[index] and not noise:
        noise.append("capitalisation")
    return index, noise


def normalize_task_name(raw: str | None) -> tuple[int, list[str]]:
    """Map a raw `groundtruth_taskname` to an index into `TASK_CLASSES` (unknown names -> Other) and the noise seen."""
    noise = []
    if raw is None or raw.strip() == "" or raw.strip().lower() == "nan":
        return OTHER_TASK, ["empty_name"]
    if raw != raw.strip():
        noise.append("stray_whitespace")
    if '"' in raw or "'" in raw:
        noise.append("stray_quote")
    index = _TASK_INDEX.get(_clean(raw))
    if index is None:
        return OTHER_TASK, noise + ["out_of_class"]
    if raw.strip().replace('"', "") != TASK_CLASSES[index]:
        noise.append("capitalisation")
    return index, noise


# --------------------------------------------------------------------------------------------------------------------
# CSV parsing
# --------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LabelInterval:
    """One row of a label file: [start, stop) given as (part, seconds from the start of that part)."""

    start_part: int
    start_time: float
    stop_part: int
    stop_time: float
    class_index: int | None  # TOOL_CLASSES / TASK_CLASSES index; None: not a tool (camera, empty, out of class)
    arm: int | None = None  # index into ARMS, tools only
    raw_name: str = ""


@dataclasses.dataclass
class CaseLabels:
    """Parsed labels of one case, with the noise seen while parsing."""

    tools: list[LabelInterval]
    tasks: list[LabelInterval]
    noise: collections.Counter


def parse_time(value: str) -> float:
    """`HH:MM:SS.ffffff` or plain seconds -> seconds from the start of a part.

    Raises ValueError unless finite and from 0 to `MAX_PART_SECONDS`: a nan or infinite time would become INT64_MIN on
    the microsecond timeline of `labels_at`.
    """
    match = _HMS.match(value)
    try:
        if match:
            hours, minutes, seconds = match.groups()
            elapsed = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        else:
            elapsed = float(value)
    except ValueError:
        elapsed = math.nan
    if not 0.0 <= elapsed <= MAX_PART_SECONDS:  # also false for nan
        raise ValueError(f"{_shown(value)} is not a time from 0 to {MAX_PART_SECONDS:.0f} seconds")
    return elapsed


def parse_part(value: str) -> int:
    """Part numbers are written `1`, `1.0`: 1-based, matching `_video_part_001`, at most `MAX_PART`.

    Raises ValueError otherwise (the bound keeps `1e9` from sizing the timeline of a case).
    """
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 1 <= number <= MAX_PART or number != int(number):  # the range check first: int(inf) overflows
        raise ValueError(f"{_shown(value)} is not a part number from 1 to {MAX_PART}")
    return int(number)


def _shown(value: str, limit: int = 60) -> str:
    """A field as a warning shows it: quoted, cut to `limit` characters (a line can hold a whole corrupt file)."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def _read_rows(
    path: Path, expected: tuple[str, ...], kind: str, noise: collections.Counter
) -> list[tuple[int, dict[str, str]]]:
    """The data rows of a label file with their line numbers, each line parsed on its own so that one bad line (bytes
    that are not UTF-8, a field the CSV reader refuses, an unclosed quote) costs only that line; none below the header
    is a case without segments (all Other) or tools, with a warning."""
    try:
        data = path.read_bytes()
    except OSError as error:
        noise[f"{kind}/unusable_file"] += 1
        raise UnusableLabelFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    lines = data.removeprefix(codecs.BOM_UTF8).splitlines()
    if not any(line.strip() for line in lines):
        noise[f"{kind}/unusable_file"] += 1
        raise UnusableLabelFileError(f"{path}: the file is empty; expected a header with columns {list(expected)}")
    try:
        header = [column.strip() for column in next(csv.reader([lines[0].decode("utf-8")]), [])]
    except (UnicodeDecodeError, csv.Error):
        raise SurgVULabelError(f"{path}: the header is not a line of UTF-8 CSV: {lines[0][:60]!r}") from None
    missing = [column for column in expected if column not in header]
    if missing:
        found = _shown(",".join(header), 300)
        raise SurgVULabelError(f"{path}: missing columns {missing}; expected columns {list(expected)}, found {found}")
    needed = max(header.index(column) for column in expected) + 1
    if not any(line.strip() for line in lines[1:]):  # a short case: no task segment (all Other), or no tool
        logger.warning("%s: no rows below the header: %s", path,
                       "no tool installed in the case" if kind == "tools" else "every frame of the case is Other")
        noise[f"{kind}/no_rows"] += 1
        return []
    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            values = next(csv.reader([line.decode("utf-8")]))
        except UnicodeDecodeError:
            logger.warning("%s:%d: skipping a line that is not UTF-8 text: %r", path, line_number, line[:60])
            noise[f"{kind}/not_utf8"] += 1
            continue
        except csv.Error as error:
            logger.warning("%s:%d: skipping a line the CSV reader refuses (%s): %s", path, line_number, error,
                           _shown(line.decode("utf-8")))
            noise[f"{kind}/unreadable_row"] += 1
            continue
        if len(values) < needed:
            logger.warning("%s:%d: skipping a row of %d fields, the columns %s need %d: %s", path, line_number,
                           len(values), list(expected), needed, _shown(",".join(values)))
            noise[f"{kind}/too_few_fields"] += 1
            continue
        rows.append((line_number, dict(zip(header, values))))
    if not rows:
        noise[f"{kind}/unusable_file"] += 1
        raise UnusableLabelFileError(f"{path}: every row was skipped (see the warnings above)")
    return rows


def _read_intervals(
    path: str | Path,
    columns: tuple[str, ...],
    kind: str,
    normalize,
    noise: collections.Counter | None,
    arm_column: str | None = None,
    parts: Collection[int] | None = None,
) -> list[LabelInterval]:
    """Parse a label file whose first four columns are start part, start time, stop part, stop time and whose
    last is the name; `kind` (`tools`, `tasks`) prefixes the noise counters. With `parts` (the case's video parts),
    a row naming another part is skipped: no frame of it can be labelled, and its times cannot be placed."""
    path = Path(path)
    noise = collections.Counter() if noise is None else noise
    fields = [(columns[0], parse_part), (columns[1], parse_time), (columns[2], parse_part), (columns[3], parse_time)]
    name_column = columns[-1]
    intervals = []
    rows = _read_rows(path, columns, kind, noise)
    for line, row in rows:
        values = []
        for column, parse in fields:
            try:
                values.append(parse(row[column]))
            except ValueError as error:
                logger.warning("%s:%d: skipping a row whose %s %s", path, line, column, error)
                noise[f"{kind}/{'bad_part' if parse is parse_part else 'bad_time'}"] += 1
                break
        if len(values) < len(fields):
            continue
        start_part, start_time, stop_part, stop_time = values
        if parts is not None and not {start_part, stop_part} <= set(parts):
            logger.warning("%s:%d: skipping a row in part %s, which has no video (the case's parts: %s)", path, line,
                           stop_part if start_part in parts else start_part, sorted(parts))
            noise[f"{kind}/part_without_video"] += 1
            continue
        if (stop_part, stop_time) < (start_part, start_time):
            logger.warning("%s:%d: skipping a row that stops (part %d, %gs) before it starts (part %d, %gs)", path,
                           line, stop_part, stop_time, start_part, start_time)
            noise[f"{kind}/reversed_interval"] += 1
            continue
        arm = None
        if arm_column is not None:
            arm_name = row[arm_column].strip().upper()
            arm = ARMS.index(arm_name) if arm_name in ARMS else None
            if arm is None:
                noise[f"{kind}/unknown_arm"] += 1
        class_index, kinds = normalize(row[name_column])
        for noise_kind in kinds:
            noise[f"{kind}/{noise_kind}"] += 1
        intervals.append(
            LabelInterval(start_part, start_time, stop_part, stop_time, class_index, arm, row[name_column])
        )
    if rows and not intervals:
        noise[f"{kind}/unusable_file"] += 1
        raise UnusableLabelFileError(f"{path}: every row was skipped (see the warnings above)")
    return intervals


def read_tools_csv(
    path: str | Path, noise: collections.Counter | None = None, parts: Collection[int] | None = None
) -> list[LabelInterval]:
    """Parse a `tools.csv`; rows that are not a tool of `TOOL_CLASSES` keep `class_index=None`."""
    return _read_intervals(path, TOOLS_COLUMNS, "tools", normalize_tool_name, noise, arm_column="arm", parts=parts)


def read_tasks_csv(
    path: str | Path, noise: collections.Counter | None = None, parts: Collection[int] | None = None
) -> list[LabelInterval]:
    """Parse a `tasks.csv`; names outside `TASK_CLASSES` become Other."""
    return _read_intervals(path, TASKS_COLUMNS, "tasks", normalize_task_name, noise, parts=parts)


def read_case_labels(
    tools_csv: str | Path,
    tasks_csv: str | Path,
    parts: Collection[int] | None = None,
    noise: collections.Counter | None = None,
) -> CaseLabels:
    """Both label files of a case; `parts`: its video parts (rows naming others are skipped); `noise`: a counter to
    count into (a build's, which keeps the counts of a case whose file then raises `UnusableLabelFileError`)."""
    noise = collections.Counter() if noise is None else noise
    tools = read_tools_csv(tools_csv, noise, parts)
    tasks = read_tasks_csv(tasks_csv, noise, parts)
    return CaseLabels(tools=tools, tasks=tasks, noise=noise)


# --------------------------------------------------------------------------------------------------------------------
# Lookup on the case timeline
# --------------------------------------------------------------------------------------------------------------------
def part_offsets(labels: CaseLabels, durations: dict[int, float | None]) -> dict[int, float]:
    """Start of each part on the case timeline: the parts are played back to back in part order.

    `durations` holds each part's duration from its stream metadata. A part whose video cannot be read (None) is
    given the extent its labels reach, so that the parts after it stay aligned with their own labels.
    """
    referenced = {}
    for interval in labels.tools + labels.tasks:
        for part, time in ((interval.start_part, interval.start_time), (interval.stop_part, interval.stop_time)):
            referenced[part] = max(referenced.get(part, 0.0), time)
    offsets, position = {}, 0.0
    for part in sorted({1, *durations, *referenced}):  # a part named by neither has no extent
        offsets[part] = position
        duration = durations.get(part)
        position += duration if duration is not None else referenced.get(part, 0.0)
    return offsets


def to_microseconds(seconds) -> np.ndarray:
    """Seconds -> whole microseconds (int64), the resolution at which the label files write their times."""
    return np.round(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)


def labels_at(
    labels: CaseLabels, offsets: dict[int, float], part: int, timestamps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-arm tools [N, 4, 12] uint8 and task indices [N] int64 at `timestamps` (seconds from the part's start).

    A tool counts while installed (install <= t < uninstall), even off screen (the labels are weak). Frames covered by
    no task segment are Other; where segments overlap, the later row in the file wins. Times are compared on the case
    timeline in whole microseconds, the resolution of the label files: a frame exactly on a boundary is on it even
    when the file rounds the boundary (frame 8 at 30 fps is 0.2666...s, written `0.266667`).
    """
    offsets = {number: int(to_microseconds(offset)) for number, offset in offsets.items()}
    times = offsets[part] + to_microseconds(timestamps)

    def case_time(interval_part: int, seconds: float) -> int:
        return offsets[interval_part] + int(to_microseconds(seconds))

    arm_tools = np.zeros((len(times), len(ARMS), len(TOOL_CLASSES)), dtype=np.uint8)
    for interval in labels.tools:
        if interval.class_index is None or interval.arm is None:
            continue
        start = case_time(interval.start_part, interval.start_time)
        stop = case_time(interval.stop_part, interval.stop_time)
        arm_tools[(times >= start) & (times < stop), interval.arm, interval.class_index] = 1
    tasks = np.full(len(times), OTHER_TASK, dtype=np.int64)
    for segment in labels.tasks:
        start = case_time(segment.start_part, segment.start_time)
        stop = case_time(segment.stop_part, segment.stop_time)
        tasks[(times >= start) & (times < stop)] = segment.class_index
    return arm_tools, tasks

"""A small synthetic dataset in the SurgVU layout, faithful to the real release's file formats and label noise.

`make_synthetic_surgvu(out_dir)` writes `surgvu24/case_NNN/case_NNN_video_part_00K.mp4` (H.264) and
`labels/case_NNN/tools.csv` + `tasks.csv`, deterministically from a seed:

- some cases in two parts, with a tool interval and a task segment that span the two parts;
- label times half a frame from any frame, except in each part the first in-class tool interval and the first task
  segment, whose ends fall exactly on frames that the builder samples at 4 fps (the edges of [start, stop));
- frames with black side margins, a bottom band listing the installed tool names (the real label leak) and
  instrument-like shapes: an instrument is drawn for each arm with a tool installed, its colour, its wrist and its jaws depend on
  the tool and its motion on the current task, and each task but Other shows its own anatomy (a coloured region in
  its own place), so the frames follow the per-step actions and the task and tool labels can be learnt from them;
- label noise of every kind the real files show: `nan(camera in)` rows, empty names, `Single Site"`, trailing spaces,
  tools outside the class list, task names in two capitalisations, with stray quotes and leading spaces, and names
  outside the list; parts written `1.0` in tools.csv, times as `HH:MM:SS.ffffff` there and as seconds in tasks.csv;
- `__MACOSX/` junk, optionally a truncated (unreadable) video and a case without labels.

It returns (and writes to `synthetic_manifest.json`) the clean ground truth on the case timeline, for tests.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import multiprocessing
import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

from .builder import sample_frame_indices
from .labels import ARMS, OTHER_TASK, TASK_CLASSES, TOOL_CLASSES


logger = logging.getLogger(__name__)

COMMERCIAL_NAMES = {
    "needle driver": "Large Needle Driver",
    "cadiere forceps": "Cadiere Forceps",
    "prograsp forceps": "ProGrasp Forceps",
    "monopolar curved scissors": "Monopolar Curved Scissors",
    "bipolar forceps": "Maryland Bipolar Forceps",
    "stapler": "SureForm 45 Stapler",
    "force bipolar": "Force Bipolar",
    "vessel sealer": "Vessel Sealer Extend",
    "permanent cautery hook/spatula": "Permanent Cautery Hook",
    "clip applier": "Medium-Large Clip Applier",
    "tip-up fenestrated grasper": "Tip-Up Fenestrated Grasper",
    "grasping retractor": "Small Grasping Retractor",
}
OUT_OF_CLASS_TOOLS = ("suction irrigator", "synchroseal", "tenaculum forceps", "potts scissors", "bipolar dissector")
OUT_OF_CLASS_TASKS = ('retraction arm positioning"', " camera adjustments", "dissection", "other")

TOOL_BAND_FRACTION = 0.07  # inside the 8% that the builder crops by default
MARGIN_FRACTION = 0.08
EDGE_SAMPLE_FPS = 4.0  # the builder's default sampling rate: some label edges fall exactly on its frames

_TOOL_COLOURS = np.array(
    [
        [40, 200, 255], [255, 220, 40], [60, 255, 120], [255, 90, 220], [120, 80, 255], [255, 255, 255],
        [0, 140, 90], [255, 140, 0], [180, 255, 255], [200, 0, 40], [90, 160, 255], [230, 230, 120],
    ],
    dtype=np.uint8,
)  # fmt: skip
_ENTRY = np.array([[0.0, 0.9], [1.0, 0.9], [0.0, 0.1], [1.0, 0.1]])  # where each arm enters the view (x, y)
_REST = np.array([[0.36, 0.62], [0.64, 0.62], [0.3, 0.36], [0.7, 0.36]])  # tip position at rest
# The anatomy each task works on (every task but Other): where it lies in the view (x, y), its radius (a fraction of
# the view's height) and its colour. Real tasks differ in what is in view, not only in how the instruments move.
_TASK_ANATOMY = (
    ((0.50, 0.50), 0.30, (235, 190, 170)),  # Range of motion: pale bowel
    ((0.30, 0.70), 0.22, (120, 20, 60)),  # Rectal artery/vein: dark vessel
    ((0.70, 0.30), 0.26, (250, 240, 120)),  # Retraction and collision avoidance: fat, yellow
    ((0.50, 0.30), 0.20, (90, 160, 210)),  # Skills application: a blue training pad
    ((0.25, 0.35), 0.24, (240, 140, 200)),  # Suspensory ligaments: pink band
    ((0.75, 0.70), 0.18, (250, 250, 250)),  # Suturing: white suture pad
    ((0.50, 0.75), 0.28, (200, 60, 30)),  # Uterine horn: bright red-orange
)


# --------------------------------------------------------------------------------------------------------------------
# Label timeline
# --------------------------------------------------------------------------------------------------------------------
def _fill(rng, start, end, min_length, max_length, min_gap, max_gap):
    """Back-to-back intervals with gaps inside [start, end)."""
    intervals, time = [], start + rng.uniform(min_gap, max_gap) / 2
    while time + min_length < end:
        stop = min(time + rng.uniform(min_length, max_length), end)
        intervals.append([time, stop])
        time = stop + rng.uniform(min_gap, max_gap)
    return intervals


def _case_timeline(rng, duration, boundary):
    """Clean per-arm tool intervals and task segments (seconds on the case timeline); one of each spans `boundary`."""
    tools = []
    for arm in range(len(ARMS)):
        preferred = rng.choice(len(TOOL_CLASSES), size=4, replace=False)
        if boundary is not None and arm == 0:
            start, stop = boundary - rng.uniform(3, 6), boundary + rng.uniform(3, 6)
            before, after = _fill(rng, 0, start - 1, 6, 18, 1, 4), _fill(rng, stop + 1, duration, 6, 18, 1, 4)
            spans = before + [[start, stop]] + after
        else:
            spans = _fill(rng, 0, duration, 6, 18, 1, 4)
        for number, (start, stop) in enumerate(spans):
            out_of_class = (arm == 3 and number == 1) or rng.random() < 0.08
            tool = OUT_OF_CLASS_TOOLS[rng.integers(len(OUT_OF_CLASS_TOOLS))] if out_of_class else None
            tool = int(rng.choice(preferred)) if tool is None else tool
            tools.append({"arm": arm, "tool": tool, "start": start, "stop": stop})
    if boundary is not None:
        span = [boundary - rng.uniform(2, 5), boundary + rng.uniform(2, 5)]
        segments = _fill(rng, 0, span[0] - 2, 4, 10, 3, 9) + [span] + _fill(rng, span[1] + 2, duration, 4, 10, 3, 9)
    else:
        segments = _fill(rng, 0, duration, 4, 10, 3, 9)
    tasks = [{"task": int(rng.integers(OTHER_TASK)), "start": start, "stop": stop} for start, stop in segments]
    return tools, tasks


def _put_edges_on_sampled_frames(tools, tasks, part_frames, fps):
    """In each part, move both ends of the first in-class tool interval and of the first task segment that lie well
    inside the part onto the nearest frames of the `EDGE_SAMPLE_FPS` grid (by at most half a grid step)."""
    in_class_tools = [tool for tool in tools if isinstance(tool["tool"], int)]
    first_frame = 0
    for count in part_frames:
        part_start, part_stop = first_frame / fps, (first_frame + count) / fps
        grid_times = sample_frame_indices(count, fps, EDGE_SAMPLE_FPS) / fps  # from the part's start
        for items in (in_class_tools, tasks):
            # well inside the part: clips of 8 frames at 4 fps leave at most its last 1.75 s out
            inside = [item for item in items if item["start"] >= part_start + 0.5 and item["stop"] <= part_stop - 2.5]
            if inside:
                item = min(inside, key=lambda item: item["start"])
                for end in ("start", "stop"):  # part start + frame index / fps, as the tests compute frame times
                    item[end] = part_start + float(grid_times[np.argmin(np.abs(part_start + grid_times - item[end]))])
        first_frame += count


def _state_at(tools, tasks, time):
    """Installed tool per arm (class index, out-of-class name or None, with its install time) and task at `time`."""
    arms = [None] * len(ARMS)
    for interval in tools:
        if interval["start"] <= time < interval["stop"]:
            arms[interval["arm"]] = (interval["tool"], interval["start"])
    task = OTHER_TASK
    for segment in tasks:
        if segment["start"] <= time < segment["stop"]:
            task = segment["task"]
    return arms, task


# --------------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------------
def _glyph(character: str) -> np.ndarray:
    """A 5x3 pseudo-letter for a character: text-like, without any font."""
    if character == " ":
        return np.zeros((5, 3), dtype=bool)
    code = (ord(character) * 2654435761) & 0xFFFFFFFF
    bits = np.array([(code >> k) & 1 for k in range(15)], dtype=bool).reshape(5, 3)
    bits[:, 1] |= bits.sum() < 5  # never an almost empty glyph
    return bits


def _text_bitmap(text: str, scale: int) -> np.ndarray:
    columns = []
    for character in text:
        columns += [_glyph(character), np.zeros((5, 1), dtype=bool)]
    bitmap = np.concatenate(columns, axis=1) if columns else np.zeros((5, 1), dtype=bool)
    return bitmap.repeat(scale, axis=0).repeat(scale, axis=1)


def _draw_segment(image, start, end, radius, colour):
    (x0, y0), (x1, y1) = start, end
    top, bottom = int(max(0, min(y0, y1) - radius)), int(min(image.shape[0], max(y0, y1) + radius + 1))
    left, right = int(max(0, min(x0, x1) - radius)), int(min(image.shape[1], max(x0, x1) + radius + 1))
    if top >= bottom or left >= right:
        return
    ys = np.arange(top, bottom, dtype=np.float32)[:, None] - y0
    xs = np.arange(left, right, dtype=np.float32)[None, :] - x0
    dx, dy = x1 - x0, y1 - y0
    length = dx * dx + dy * dy
    along = np.clip((xs * dx + ys * dy) / length, 0, 1) if length > 0 else 0.0
    distance = (xs - along * dx) ** 2 + (ys - along * dy) ** 2
    image[top:bottom, left:right][distance <= radius * radius] = colour


def _background(rng, height, width):
    """Smooth tissue-like colours (reddish, varied), wider than the frame so the camera can drift."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), dtype=np.float32) + np.array([170, 80, 80], dtype=np.float32)
    for _ in range(6):
        kx, ky = rng.uniform(1, 6, size=2) * 2 * np.pi / np.array([width, height])
        phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(8, 25, size=3) * np.array([1.0, 0.6, 0.5])
        image += np.sin(kx * xs + ky * ys + phase)[..., None] * amplitude
    image += rng.normal(0, 4, size=image.shape)  # fine texture
    return np.clip(image, 45, 255).astype(np.uint8)


class _Renderer:
    def __init__(self, rng, width, height):
        self.width, self.height = width, height
        self.band = max(4, int(round(height * TOOL_BAND_FRACTION)))
        self.margin = int(round(width * MARGIN_FRACTION))
        self.drift = max(4, width // 40)
        self.view_height = height - self.band
        self.view_width = width - 2 * self.margin
        self.background = _background(rng, self.view_height, self.view_width + 2 * self.drift)
        self.shaft_radius = max(1.5, height / 40)  # da Vinci shafts are wide in the view (8 mm at close range)
        self.tip_radius = max(2.5, height / 32)
        self.text_scale = max(1, (self.band - 2) // 6)
        self._texts = {}

    def _to_pixels(self, point):
        return np.array([self.margin + point[0] * (self.view_width - 1), point[1] * (self.view_height - 1)])

    def _tip(self, arm, task, time, installed_at):
        amplitude = 0.03 + 0.018 * task
        frequency = 0.12 + 0.07 * task
        phase = 2 * np.pi * frequency * time + arm * np.pi / 2
        target = _REST[arm] + amplitude * np.array([np.sin(phase), 0.7 * np.sin(2 * phase + task)])
        inserted = min(1.0, (time - installed_at) / 1.0)  # slides in over one second after installation
        return _ENTRY[arm] + inserted * (target - _ENTRY[arm])

    def frame(self, arms, task, time) -> np.ndarray:
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        shift = int(round(self.drift * (1 + math.sin(0.3 * time))))
        image[: self.view_height, self.margin : self.margin + self.view_width] = self.background[
            :, shift : shift + self.view_width
        ]
        if task < len(_TASK_ANATOMY):  # Other shows no particular anatomy
            (x, y), radius, colour = _TASK_ANATOMY[task]
            centre = self._to_pixels(np.array([x, y]))
            _draw_segment(image, centre, centre, radius * self.view_height, colour)
        for arm, installed in enumerate(arms):
            if installed is None:
                continue
            tool, installed_at = installed
            tip = self._to_pixels(self._tip(arm, task, time, installed_at))
            entry = self._to_pixels(_ENTRY[arm])
            colour = _TOOL_COLOURS[tool] if isinstance(tool, int) else (250, 250, 250)
            # The shaft is in the tool's colour and its wrist (the last third) thicker: what tells tools apart at the
            # encoder's resolution, as the instruments' shapes do in real video.
            _draw_segment(image, entry, tip, self.shaft_radius, colour)
            _draw_segment(image, tip + (entry - tip) / 3, tip, self.shaft_radius * 2, colour)
            direction = (tip - entry) / max(1e-6, np.linalg.norm(tip - entry))
            normal = np.array([-direction[1], direction[0]])
            jaw = self.tip_radius * (1.6 if isinstance(tool, int) and tool % 3 == 0 else 0.9)
            opening = 0.5 + 0.5 * math.sin(2 * np.pi * 0.8 * time) if isinstance(tool, int) and tool % 2 else 0.3
            for side in (-1, 1):
                _draw_segment(image, tip, tip + jaw * (direction + side * opening * normal), self.shaft_radius, colour)
            _draw_segment(image, tip, tip, self.tip_radius * 0.7, colour)
        image[: self.view_height, : self.margin] = 0
        image[: self.view_height, self.width - self.margin :] = 0
        self._draw_band(image, arms)
        return image

    def _draw_band(self, image, arms):
        band = image[self.height - self.band :]
        band[:] = (28, 28, 34)
        slot = self.width // len(ARMS)
        for arm, installed in enumerate(arms):
            tool = None if installed is None else installed[0]
            name = "" if tool is None else (TOOL_CLASSES[tool] if isinstance(tool, int) else tool)
            key = (arm, name)
            if key not in self._texts:
                self._texts[key] = _text_bitmap(f"{arm + 1} {name}".upper(), self.text_scale)
            text = self._texts[key][: self.band - 2, : slot - 4]
            band[1 : 1 + text.shape[0], arm * slot + 2 : arm * slot + 2 + text.shape[1]][text] = (235, 235, 235)


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------
def _encode(path, frames, width, height, fps, start_frame, preset, gop):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": preset, "crf": "26"}
        if gop:
            stream.codec_context.gop_size = gop
        for number, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = start_frame + number
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _hms(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{rest:09.6f}"


def _local(time, part_starts):
    """(part, seconds from that part's start) of a time on the case timeline."""
    for part in range(len(part_starts), 0, -1):
        if time >= part_starts[part - 1] or part == 1:
            return part, time - part_starts[part - 1]


def _write_labels(label_dir, rng, tools, tasks, part_starts, duration, noise):
    """tools.csv and tasks.csv with the real files' formats and noise; returns nothing, counts into `noise`."""
    rows = []  # (install time, csv line without index)
    for number, interval in enumerate(tools):
        tool = interval["tool"]
        name = TOOL_CLASSES[tool] if isinstance(tool, int) else tool
        commercial = COMMERCIAL_NAMES.get(name, name.title())
        if isinstance(tool, int) and number % 7 == 3:
            name += " "  # trailing space: `clip applier `
            noise["tools/trailing_space"] += 1
        elif not isinstance(tool, int):
            noise["tools/out_of_class"] += 1
        rows.append((interval["start"], interval["stop"], ARMS[interval["arm"]], commercial, name))
    extras = [("nan(camera in)", "", "camera_in")] * 2
    extras += [("", "", "empty_name"), ('Single Site"', "Single Site", "malformed")]
    for name, commercial, kind in extras:
        start = rng.uniform(0, max(duration - 3, 0.1))
        rows.append((start, start + rng.uniform(0.5, 2.5), ARMS[rng.integers(len(ARMS))], commercial, name))
        noise[f"tools/{kind}"] += 1
    lines = [
        "index,install_case_part,install_case_time,uninstall_case_part,uninstall_case_time,arm,"
        "commercial_toolname,groundtruth_toolname"
    ]
    for index, (start, stop, arm, commercial, name) in enumerate(sorted(rows, key=lambda row: row[0])):
        (start_part, start_local), (stop_part, stop_local) = (_local(t, part_starts) for t in (start, stop))
        start_field, stop_field = f"{float(start_part)},{_hms(start_local)}", f"{float(stop_part)},{_hms(stop_local)}"
        lines.append(f"{index},{start_field},{stop_field},{arm},{commercial},{name}")
    (label_dir / "tools.csv").write_text("\n".join(lines) + "\n")

    rows = []
    for number, segment in enumerate(tasks):
        name = TASK_CLASSES[segment["task"]]
        if number % 3 == 1:
            name = name.lower()  # `suturing` next to `Suturing`
            noise["tasks/lowercase"] += 1
        elif number % 5 == 2:
            name = " " + name  # leading space on a real class
            noise["tasks/leading_space"] += 1
        rows.append((segment["start"], segment["stop"], name))
    gaps = [(a["stop"], b["start"]) for a, b in zip(tasks, tasks[1:]) if b["start"] - a["stop"] > 2.5]
    for (gap_start, gap_stop), name in zip(gaps, OUT_OF_CLASS_TASKS):  # names outside the list, in the gaps
        rows.append((gap_start + 0.5, gap_stop - 0.5, name))
        noise["tasks/out_of_class"] += 1
    lines = ["index,start_part,start_time,stop_part,stop_time,groundtruth_taskname"]
    for index, (start, stop, name) in enumerate(sorted(rows, key=lambda row: row[0])):
        (start_part, start_local), (stop_part, stop_local) = (_local(t, part_starts) for t in (start, stop))
        lines.append(f"{index},{start_part},{start_local:.6f},{stop_part},{stop_local:.6f},{name}")
    (label_dir / "tasks.csv").write_text("\n".join(lines) + "\n")


def _write_junk(out_dir, case_ids):
    for case_id in case_ids[:2]:
        for relative in (f"surgvu24/{case_id}/._{case_id}_video_part_001.mp4", f"labels/{case_id}/._tools.csv"):
            path = out_dir / "__MACOSX" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    (out_dir / "surgvu24" / ".DS_Store").write_bytes(bytes(32))


def _make_case(out_dir, number, case_id, options):
    """One case: labels and videos. Everything follows from (seed, case number), so cases can be made in parallel."""
    seed, num_cases, fps = options["seed"], options["num_cases"], options["fps"]
    width, height, two_part_every = options["width"], options["height"], options["two_part_every"]
    corrupt_video, unlabeled_case = options["corrupt_video"], options["unlabeled_case"]
    rng = np.random.default_rng([seed, number])
    total_frames = int(round(options["seconds"] * rng.uniform(0.8, 1.2) * fps))
    part_frames = [total_frames]
    if two_part_every and number % two_part_every == 1:
        first = int(total_frames * rng.uniform(0.45, 0.6))
        part_frames = [first, total_frames - first]
    corrupt = corrupt_video and number == min(2, num_cases - 1)
    if corrupt:
        part_frames.append(int(5 * fps))
    part_starts = [sum(part_frames[:k]) / fps for k in range(len(part_frames))]
    part_durations = [count / fps for count in part_frames]
    duration = sum(part_durations)
    boundary = part_starts[1] if len(part_frames) > 1 else None
    tools, tasks = _case_timeline(rng, duration, boundary)

    def on_frame(time):  # label times sit between frames, half a frame from either
        return (math.floor(time * fps) + 0.5) / fps

    for item in tools + tasks:
        item["start"], item["stop"] = on_frame(max(item["start"], 0.0)), on_frame(min(item["stop"], duration - 1 / fps))
    _put_edges_on_sampled_frames(tools, tasks, part_frames, fps)
    labeled = not (unlabeled_case and number == num_cases - 1 and num_cases > 1)
    case_noise = {}
    if labeled:
        label_dir = out_dir / "labels" / case_id
        label_dir.mkdir(parents=True, exist_ok=True)
        counter = collections.Counter()
        _write_labels(label_dir, rng, tools, tasks, part_starts, duration, counter)
        case_noise = dict(counter)

    renderer = _Renderer(rng, width, height)
    video_dir = out_dir / "surgvu24" / case_id
    video_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for part, (count, start) in enumerate(zip(part_frames, part_starts), start=1):
        path = video_dir / f"{case_id}_video_part_{part:03d}.mp4"
        first_frame = int(round(start * fps))
        frames = (
            renderer.frame(*_state_at(tools, tasks, (first_frame + k) / fps), (first_frame + k) / fps)
            for k in range(count)
        )
        _encode(path, frames, width, height, fps, options["start_frame"], options["preset"], options["gop"])
        is_corrupt = corrupt and part == len(part_frames)
        if is_corrupt:
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * 0.45)])  # cut mid-file: the index at the end is lost
        parts.append({"part": part, "path": str(path.relative_to(out_dir)), "num_frames": count, "corrupt": is_corrupt})
    return {
        "parts": parts,
        "labeled": labeled,
        "duration": duration,
        "tools": [
            {"arm": ARMS[t["arm"]], "tool": TOOL_CLASSES[t["tool"]], "start": t["start"], "stop": t["stop"]}
            for t in tools
            if isinstance(t["tool"], int)
        ],
        "tasks": [{"task": TASK_CLASSES[s["task"]], "start": s["start"], "stop": s["stop"]} for s in tasks],
        "noise": case_noise,
    }


def make_synthetic_surgvu(
    out_dir,
    *,
    seed: int = 0,
    num_cases: int = 6,
    width: int = 320,
    height: int = 180,
    fps: float = 60,
    seconds: float = 80.0,
    two_part_every: int = 2,
    start_frame: int = 0,
    preset: str = "ultrafast",
    gop: int | None = None,
    corrupt_video: bool = True,
    unlabeled_case: bool = True,
    macosx_junk: bool = True,
    overwrite: bool = True,
    num_workers: int | None = None,
) -> dict:
    """Write a synthetic SurgVU-format folder and return its clean ground truth (also in `synthetic_manifest.json`).

    Args:
        out_dir: where `surgvu24/`, `labels/` and `__MACOSX/` go.
        seed: everything (case lengths, labels, noise, pictures) follows from it.
        num_cases, seconds: number of cases and their mean length (each case varies by +-20%).
        width, height, fps: of the videos (the real release: 1280x720 at 60 fps).
        two_part_every: every n-th case (from the second) is split into two parts; 0 for none.
        start_frame: presentation time of the first frame, in frames (a stream whose first timestamp is not 0).
        preset, gop: libx264 preset (`veryfast` and slower use B-frames) and keyframe interval (default: x264's).
        corrupt_video: the third case gets a truncated, unreadable extra part.
        unlabeled_case: the last case has videos but no label files.
        num_workers: processes making cases in parallel (default: up to 2); the result does not depend on it.
    """
    out_dir = Path(out_dir)
    num_workers = num_workers if num_workers is not None else min(2, os.cpu_count() or 1)
    if overwrite:
        for name in ("surgvu24", "labels", "__MACOSX"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    if num_cases < 1 or seconds <= 0:
        raise ValueError(f"need at least one case and a positive length, got {num_cases} cases of {seconds}s")
    case_ids = [f"case_{number + number // 3:03d}" for number in range(num_cases)]  # gaps, as in the release
    manifest = {"seed": seed, "fps": fps, "width": width, "height": height, "start_frame": start_frame, "cases": {}}
    options = dict(
        seed=seed, num_cases=num_cases, width=width, height=height, fps=fps, seconds=seconds,
        two_part_every=two_part_every, start_frame=start_frame, preset=preset, gop=gop,
        corrupt_video=corrupt_video, unlabeled_case=unlabeled_case,
    )
    jobs = [(out_dir, number, case_id, options) for number, case_id in enumerate(case_ids)]
    workers = min(num_workers or 1, len(jobs))
    if workers > 1:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with context.Pool(workers) as pool:
            cases = pool.starmap(_make_case, jobs)
    else:
        cases = [_make_case(*job) for job in jobs]
    noise = collections.Counter()
    for case_id, case in zip(case_ids, cases):
        manifest["cases"][case_id] = case
        noise.update(case["noise"])
    if macosx_junk:
        _write_junk(out_dir, case_ids)
    manifest["noise"] = dict(sorted(noise.items()))
    (out_dir / "synthetic_manifest.json").write_text(json.dumps(manifest, indent=1))
    logger.info("wrote %d synthetic SurgVU cases to %s", num_cases, out_dir)
    return manifest

"""The SurgVU `datasets` builder: one row per clip of a few frames sampled at a fixed rate from a video part.

The builder reads only container metadata and label files; frames are decoded lazily by `ClipTransform`.
datasets 4+ no longer runs loading scripts, so `load_surgvu` instantiates the builder directly and keeps its Arrow
cache, keyed by the options and by a fingerprint of the files (paths, sizes, modification times). What a build found in
the data (unreadable videos, cases without labels, the case split, label noise) is saved beside its Arrow files as
`surgvu_build.json` and read back by `get_build_metadata`.

The cases are split three ways, each case into one split: `train`, `validation` (which chooses checkpoints) and
`test` (which chose nothing, for the figures a report gives). SurgVU's own test videos are not public, so by default
a fifth of the cases is held out for each of validation and test.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
from datasets.builder import Key
from datasets.naming import filenames_for_dataset_split

from .labels import (
    ARMS,
    SKIPPED_ROW_KINDS,
    TASK_CLASSES,
    TOOL_CLASSES,
    SurgVULabelError,
    UnusableLabelFileError,
    action_names,
    build_actions,
    labels_at,
    part_offsets,
    read_case_labels,
)
from .layout import find_cases, resolve_dirs
from .video import CorruptVideoError, probe_video, read_keyframes


logger = logging.getLogger(__name__)

_BUILD_VERSION = "1.2.0"  # 1.1: the build metadata moved to surgvu_build.json; 1.2: a test split
BUILD_INFO_FILENAME = "surgvu_build.json"

_DESCRIPTION = """\
SurgVU (SurgVU 2024 challenge): da Vinci robotic training exercises on porcine tissue, 280 videos from 155 cases at
60 fps. Each row is a clip of `frames_per_clip` frames sampled at `fps` from one video part, with per-step task
(8 classes, Other where no segment covers the frame), tools installed per arm (USM1..USM4, 12 classes; weak labels:
a tool counts while installed, even off screen) and actions built from those labels. Frames are decoded lazily from
`video_path`; `crop_box` (top, left, height, width) removes the bottom tool-name band, which leaks the tool labels,
and the black side margins."""

_CITATION = """\
@article{zia2025surgvu,
  title   = {SurgVU: Surgical Video Understanding challenge data set},
  author  = {Zia, Aneeq and others},
  journal = {arXiv preprint arXiv:2501.09209},
  year    = {2025}
}"""

_LICENSE = (
    "CC BY-NC-SA 4.0 as reported for the SurgVU release (not confirmed from a primary source: check the challenge "
    "terms). Non-commercial; the videos and labels must not be redistributed with this code."
)
_HOMEPAGE = "https://surgvu24.grand-challenge.org/"


@dataclasses.dataclass
class SurgVUConfig(datasets.BuilderConfig):
    """Options of the SurgVU builder (validated on creation)."""

    videos_dir: str | None = None  # the folder holding case_NNN/ folders (surgvu24/)
    labels_dir: str | None = None  # the folder holding case_NNN/tools.csv and tasks.csv
    fps: float = 4.0  # sampling rate of the clip frames
    frames_per_clip: int = 8
    clip_stride: int | None = None  # sampled steps between clip starts; None: frames_per_clip (no overlap)
    validation_fraction: float = 0.2  # of the cases
    test_fraction: float = 0.2  # of the cases; no labelled SurgVU test set is public, so some are held out
    split_seed: int = 0  # of the case split (not of training)
    exclude_cases: tuple[str, ...] = ()
    validation_cases: tuple[str, ...] = ()  # forced into validation
    train_cases: tuple[str, ...] = ()  # forced into train
    test_cases: tuple[str, ...] = ()  # forced into test (e.g. the organisers' held-out cases)
    crop_tool_band: bool = True  # the bottom band shows the installed tool names: a label leak
    tool_band_fraction: float = 0.08  # height of that band (public pipelines keep the top 92%)
    crop_black_margins: bool = True
    require_labels: bool = True  # False keeps cases without labels, with has_labels=False and tasks -1
    check_video_ends: bool = True  # demux each video's last packets to catch truncated files

    def __post_init__(self):
        super().__post_init__()
        if not self.videos_dir:
            raise ValueError("SurgVUConfig needs videos_dir (the folder holding the case_NNN folders)")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.frames_per_clip < 1:
            raise ValueError(f"frames_per_clip must be at least 1, got {self.frames_per_clip}")
        if self.clip_stride is not None and self.clip_stride < 1:
            raise ValueError(f"clip_stride must be at least 1 (sampled steps), got {self.clip_stride}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not 0.0 <= self.test_fraction < 1.0 or self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"test_fraction must be in [0, 1) and leave cases for training next to validation_fraction "
                             f"{self.validation_fraction}, got {self.test_fraction}")
        if not 0.0 <= self.tool_band_fraction < 0.5:
            raise ValueError(f"tool_band_fraction must be in [0, 0.5), got {self.tool_band_fraction}")
        for name in ("exclude_cases", "validation_cases", "train_cases", "test_cases"):
            setattr(self, name, tuple(sorted(getattr(self, name) or ())))
        for first, second in (("train", "validation"), ("train", "test"), ("validation", "test")):
            both = set(getattr(self, f"{first}_cases")) & set(getattr(self, f"{second}_cases"))
            if both:
                raise ValueError(f"cases forced into both {first} and {second}: {sorted(both)}")

    @property
    def stride(self) -> int:
        return self.clip_stride or self.frames_per_clip


@dataclasses.dataclass(frozen=True)
class SurgVUBuildInfo:
    """What one build found in the data; saved as `surgvu_build.json` beside the build's Arrow files."""

    train_cases: tuple[str, ...]
    validation_cases: tuple[str, ...]
    test_cases: tuple[str, ...]
    excluded_cases: tuple[str, ...]  # asked for and present
    cases_without_labels: tuple[str, ...]  # left out, or kept with has_labels=False (see options)
    corrupt_videos: dict[str, str]  # video path -> why it could not be read; skipped
    label_noise: dict[str, int]  # `tools/camera_in`, `tasks/out_of_class`, ... -> rows seen
    options: dict[str, object]  # the builder options that shaped the rows

    @property
    def num_corrupt_videos(self) -> int:
        return len(self.corrupt_videos)

    def to_metadata(self) -> dict:
        """The build info as a plain dict, with the action spec and the class lists."""
        return {
            "action_spec": action_names(),
            "arms": list(ARMS),
            "tool_classes": list(TOOL_CLASSES),
            "task_classes": list(TASK_CLASSES),
            "corrupt_videos": dict(self.corrupt_videos),
            "num_corrupt_videos": self.num_corrupt_videos,
            "cases_without_labels": list(self.cases_without_labels),
            "excluded_cases": list(self.excluded_cases),
            "train_cases": list(self.train_cases),
            "validation_cases": list(self.validation_cases),
            "test_cases": list(self.test_cases),
            "label_noise": dict(self.label_noise),
            "options": dict(self.options),
        }

    def save(self, directory) -> Path:
        """Write `directory/surgvu_build.json` atomically (a temporary file renamed over it)."""
        path = Path(directory) / BUILD_INFO_FILENAME
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{BUILD_INFO_FILENAME}.")
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(dataclasses.asdict(self), stream, indent=1)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        return path

    @classmethod
    def load(cls, directory) -> SurgVUBuildInfo:
        path = Path(directory) / BUILD_INFO_FILENAME
        try:
            fields = json.loads(path.read_text())
            values = {field.name: fields[field.name] for field in dataclasses.fields(cls)}
            for name in ("train_cases", "validation_cases", "test_cases", "excluded_cases", "cases_without_labels"):
                values[name] = tuple(values[name])
            return cls(**values)
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{path}: not a SurgVU build info file ({type(error).__name__}: {error})") from error


class SurgVU(datasets.GeneratorBasedBuilder):
    """SurgVU clips for world-model training (see `load_surgvu`)."""

    BUILDER_CONFIG_CLASS = SurgVUConfig
    VERSION = datasets.Version(_BUILD_VERSION)

    def _info(self) -> datasets.DatasetInfo:
        steps = self.config.frames_per_clip
        features = datasets.Features(
            {
                "case_id": datasets.Value("string"),
                "part": datasets.Value("int32"),
                "video_path": datasets.Value("string"),
                "video_fps": datasets.Value("float64"),
                "frame_indices": datasets.List(datasets.Value("int64"), length=steps),  # at the video's own fps
                "timestamps": datasets.List(datasets.Value("float64"), length=steps),  # seconds from the part start
                "tasks": datasets.List(datasets.ClassLabel(names=list(TASK_CLASSES)), length=steps),
                "tools": datasets.Array2D((steps, len(TOOL_CLASSES)), "uint8"),
                "arm_tools": datasets.Array3D((steps, len(ARMS), len(TOOL_CLASSES)), "uint8"),
                "actions": datasets.Array2D((steps, len(action_names())), "float32"),
                "crop_box": datasets.List(datasets.Value("int32"), length=4),  # top, left, height, width
                "has_labels": datasets.Value("bool"),
            }
        )
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=features,
            homepage=_HOMEPAGE,
            citation=_CITATION,
            license=_LICENSE,
        )

    def _split_generators(self, dl_manager):
        config = self.config
        labels_dir = Path(config.labels_dir) if config.labels_dir else None
        cases = find_cases(Path(config.videos_dir), labels_dir)
        excluded = [case_id for case_id in config.exclude_cases if case_id in cases]
        if len(excluded) < len(config.exclude_cases):
            unknown = sorted(set(config.exclude_cases) - set(excluded))
            logger.warning("exclude_cases names cases that are not in the dataset: %s", unknown)
        for case_id in excluded:
            del cases[case_id]
        corrupt, unlabeled, items, noise = {}, [], {}, collections.Counter()
        for case in cases.values():
            labels, why = None, "no tools.csv/tasks.csv under the labels folder"
            if case.has_labels:
                try:
                    labels = read_case_labels(case.tools_csv, case.tasks_csv, parts=case.parts, noise=noise)
                except UnusableLabelFileError as error:  # as if the file were missing: one damaged case stops no build
                    why = str(error)
            if labels is None:
                unlabeled.append(case.case_id)
                if config.require_labels:
                    logger.warning("%s: %s; case left out", case.case_id, why)
                    continue
                logger.warning("%s: %s; kept with has_labels=False", case.case_id, why)
            infos = {}
            for part, video in sorted(case.parts.items()):
                try:
                    infos[part] = probe_video(video, check_end=config.check_video_ends)
                except CorruptVideoError as error:
                    logger.warning("skipping an unreadable video: %s", error)
                    corrupt[str(video)] = str(error)
                    infos[part] = None
            durations = {part: (info.duration if info is not None else None) for part, info in infos.items()}
            offsets = part_offsets(labels, durations) if labels is not None else None
            parts = [
                {"info": info, "crop_box": crop_box(info, crop_tool_band=config.crop_tool_band,
                                                    tool_band_fraction=config.tool_band_fraction,
                                                    crop_black_margins=config.crop_black_margins), "part": part}
                for part, info in infos.items()
                if info is not None
            ]
            if parts:
                items[case.case_id] = {"case_id": case.case_id, "labels": labels, "offsets": offsets, "parts": parts}

        _log_skipped_labels(noise)
        validation, test = assign_cases(
            sorted(items), config.validation_fraction, config.test_fraction, config.split_seed,
            validation_cases=config.validation_cases, train_cases=config.train_cases, test_cases=config.test_cases,
        )
        self._build_info = SurgVUBuildInfo(
            train_cases=tuple(sorted(set(items) - validation - test)),
            validation_cases=tuple(sorted(validation)),
            test_cases=tuple(sorted(test)),
            excluded_cases=tuple(excluded),
            cases_without_labels=tuple(sorted(unlabeled)),
            corrupt_videos=corrupt,
            label_noise=dict(sorted(noise.items())),
            options={
                "fps": config.fps,
                "frames_per_clip": config.frames_per_clip,
                "clip_stride": config.stride,
                "crop_tool_band": config.crop_tool_band,
                "tool_band_fraction": config.tool_band_fraction,
                "crop_black_margins": config.crop_black_margins,
                "require_labels": config.require_labels,
                "split_seed": config.split_seed,
                "validation_fraction": config.validation_fraction,
                "test_fraction": config.test_fraction,
                "forced_cases": {"train": list(config.train_cases), "validation": list(config.validation_cases),
                                 "test": list(config.test_cases)},
            },
        )
        return [
            datasets.SplitGenerator(datasets.Split.TRAIN, {"cases": [items[c] for c in self._build_info.train_cases]}),
            datasets.SplitGenerator(
                datasets.Split.VALIDATION, {"cases": [items[c] for c in self._build_info.validation_cases]}
            ),
            datasets.SplitGenerator(datasets.Split.TEST, {"cases": [items[c] for c in self._build_info.test_cases]}),
        ]

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
        # `_output_dir` is still the `.incomplete` folder here: the file appears with the Arrow files, or not at all.
        self._build_info.save(self._output_dir)

    def _generate_examples(self, cases):
        config = self.config
        steps_per_clip, stride = config.frames_per_clip, config.stride
        for case_number, case in enumerate(cases):
            for part in case["parts"]:
                info = part["info"]
                frame_indices = sample_frame_indices(info.num_frames, info.fps, config.fps)
                timestamps = frame_indices / info.fps
                if case["labels"] is not None:
                    arm_tools, tasks = labels_at(case["labels"], case["offsets"], part["part"], timestamps)
                else:
                    arm_tools = np.zeros((len(frame_indices), len(ARMS), len(TOOL_CLASSES)), dtype=np.uint8)
                    tasks = np.full(len(frame_indices), -1, dtype=np.int64)
                actions = build_actions(arm_tools, tasks)
                for start in range(0, len(frame_indices) - steps_per_clip + 1, stride):
                    clip = slice(start, start + steps_per_clip)
                    yield Key(case_number, part["part"] * 10_000_000 + start), {
                        "case_id": case["case_id"],
                        "part": part["part"],
                        "video_path": info.path,
                        "video_fps": info.fps,
                        "frame_indices": frame_indices[clip].tolist(),
                        "timestamps": timestamps[clip].tolist(),
                        "tasks": tasks[clip].tolist(),
                        "tools": arm_tools[clip].max(axis=1),
                        "arm_tools": arm_tools[clip],
                        "actions": actions[clip],
                        "crop_box": part["crop_box"],
                        "has_labels": case["labels"] is not None,
                    }


# --------------------------------------------------------------------------------------------------------------------
# Helpers of the builder
# --------------------------------------------------------------------------------------------------------------------
def crop_box(info, *, crop_tool_band: bool = True, tool_band_fraction: float = 0.08,
             crop_black_margins: bool = True) -> list[int]:
    """The `[top, left, height, width]` box of a video's picture (`info`: its `VideoInfo`) that the builder gives its
    rows: without the bottom tool-name band (`tool_band_fraction` of the height) and the black side margins, as
    `SurgVUConfig`'s options of the same names (whose defaults these are) say."""
    height = info.height
    if crop_tool_band:
        height = int(math.floor(info.height * (1.0 - tool_band_fraction)))
    left, width = 0, info.width
    if crop_black_margins:
        left, width = detect_black_margins(read_keyframes(info.path), height, info.width)
    return [0, left, height, width]


def sample_frame_indices(num_frames: int, video_fps: float, sample_fps: float) -> np.ndarray:
    """Frame numbers of a `sample_fps` grid over a video at `video_fps` (nearest frame; the rates need not divide)."""
    num_steps = int(math.floor((num_frames - 1) * sample_fps / video_fps + 1e-9)) + 1 if num_frames > 0 else 0
    indices = np.floor(np.arange(num_steps) * (video_fps / sample_fps) + 0.5).astype(np.int64)
    return indices[indices < num_frames]


def detect_black_margins(
    frames: list[np.ndarray], rows: int, width: int, threshold: float = 24.0
) -> tuple[int, int]:
    """Left column and width of the picture between black side margins, from a few frames' top `rows` rows."""
    if not frames:
        return 0, width
    brightness = np.max([frame[:rows].max(axis=2).mean(axis=0) for frame in frames], axis=0)  # per column
    content = np.nonzero(brightness > threshold)[0]
    if len(content) == 0 or content[-1] + 1 - content[0] < width // 2:
        return 0, width  # too dark to tell: keep the full width
    return int(content[0]), int(content[-1] + 1 - content[0])


def assign_cases(case_ids: list[str], validation_fraction: float, test_fraction: float, seed: int, *,
                 validation_cases=(), train_cases=(), test_cases=()) -> tuple[set[str], set[str]]:
    """The validation and test cases (the rest is train): the forced ones, then the free cases ranked by a seeded
    hash of their id, validation taking the first and test the next.

    A case's rank does not depend on the other cases, so adding a case to the folder moves at most a few cases; with
    `test_fraction` 0 and no forced test case, validation is the same as before the test split existed, so older
    builds keep their split. A split with a positive fraction gets at least one case while each split can have one
    (validation from 2 cases, test from 3).
    """
    present = set(case_ids)
    for name, forced in (("validation_cases", validation_cases), ("train_cases", train_cases),
                         ("test_cases", test_cases)):
        unknown = sorted(set(forced) - present)
        if unknown:
            logger.warning("%s names cases that are not in the dataset: %s", name, unknown)
    forced_validation, forced_test = set(validation_cases) & present, set(test_cases) & present
    free = present - forced_validation - forced_test - set(train_cases)
    ranked = sorted(free, key=lambda case_id: hashlib.sha256(f"{seed}/{case_id}".encode()).hexdigest())

    def wanted(fraction: float, fewest_cases: int) -> int:
        count = int(round(fraction * len(case_ids)))
        return max(count, 1) if fraction > 0 and len(case_ids) >= fewest_cases else count

    free_validation = max(0, wanted(validation_fraction, 2) - len(forced_validation))
    free_test = max(0, wanted(test_fraction, 3) - len(forced_test))
    validation = forced_validation | set(ranked[:free_validation])
    test = forced_test | set(ranked[free_validation:free_validation + free_test])
    return validation, test


def _log_skipped_labels(noise: collections.Counter) -> None:
    """One line for the whole build: how many label rows were skipped, by kind, and how many files held nothing usable
    (each was named in its own warning)."""
    skipped = {kind: count for kind, count in sorted(noise.items()) if kind.split("/")[-1] in SKIPPED_ROW_KINDS}
    unusable = sum(count for kind, count in noise.items() if kind.endswith("/unusable_file"))
    if skipped or unusable:
        logger.warning(
            "label files: %d malformed row(s) skipped (%s) and %d unusable file(s), their cases as cases without "
            "labels; each is named in a warning above", sum(skipped.values()),
            ", ".join(f"{kind}: {count}" for kind, count in skipped.items()) or "none", unusable,
        )


def _fingerprint(videos_dir: Path, labels_dir: Path | None) -> str:
    digest = hashlib.sha256()
    for root in (videos_dir, labels_dir):
        if root is None:
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__MACOSX" not in path.parts and path.suffix.lower() in (".mp4", ".csv"):
                stat = path.stat()
                digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------------
def load_surgvu(
    data_dir,
    labels_dir=None,
    *,
    fps: float = 4.0,
    frames_per_clip: int = 8,
    clip_stride: int | None = None,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    exclude_cases=None,
    validation_cases=None,
    train_cases=None,
    test_cases=None,
    crop_tool_band: bool = True,
    tool_band_fraction: float = 0.08,
    crop_black_margins: bool = True,
    require_labels: bool = True,
    check_video_ends: bool = True,
    cache_dir=None,
) -> datasets.DatasetDict:
    """Build (or reuse from the Arrow cache) the SurgVU clip dataset; returns `train`, `validation` and `test`, split
    by case.

    Args:
        data_dir: the folder holding `surgvu24/` and `labels/`, or `surgvu24/` itself (then give `labels_dir`).
        labels_dir: the folder holding `case_NNN/tools.csv` and `tasks.csv` (default: `labels/` next to the videos).
        fps, frames_per_clip, clip_stride: clips of `frames_per_clip` frames sampled at `fps`, starting every
            `clip_stride` sampled steps (default: `frames_per_clip`, no overlap). A part shorter than a clip yields
            none.
        validation_fraction, test_fraction, split_seed: the shares of cases in validation and in test, chosen by a
            hash of the case id seeded by `split_seed` (its own seed: changing the training seed does not move cases
            between the splits); see `assign_cases`.
        exclude_cases, validation_cases, train_cases, test_cases: case ids (`case_012`) left out, or forced into a
            split (`test_cases`: e.g. the organisers' held-out cases, for a user who has their labels).
        crop_tool_band, tool_band_fraction, crop_black_margins: what `crop_box` removes.
        require_labels: leave out cases without label files (default); False keeps them with `has_labels=False`.
        check_video_ends: demux each video's last packets to detect truncated files (skipped, listed in the info).
        cache_dir: where the Arrow files go (default: the `datasets` cache); `surgvu_build.json` goes beside them.

    Malformed label rows are skipped with a warning naming the file, line and value, and counted in one summary line
    and in the build info's `label_noise`; a case whose label file holds nothing usable (empty, unreadable, every row
    skipped) is as a case without labels.

    Raises:
        SurgVULabelError: a label file's header lacks a required column or is not UTF-8 text (the message names the
            file and the columns expected).
    """
    videos_dir, labels_dir = resolve_dirs(data_dir, labels_dir)
    builder = SurgVU(
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        dataset_name="surgvu",
        hash=_fingerprint(videos_dir, labels_dir),  # the options go into the config id, the files into this hash
        videos_dir=str(videos_dir.resolve()),
        labels_dir=str(labels_dir.resolve()) if labels_dir is not None else None,
        fps=float(fps),
        frames_per_clip=int(frames_per_clip),
        clip_stride=clip_stride,
        validation_fraction=float(validation_fraction),
        test_fraction=float(test_fraction),
        split_seed=int(split_seed),
        exclude_cases=tuple(exclude_cases or ()),
        validation_cases=tuple(validation_cases or ()),
        train_cases=tuple(train_cases or ()),
        test_cases=tuple(test_cases or ()),
        crop_tool_band=crop_tool_band,
        tool_band_fraction=float(tool_band_fraction),
        crop_black_margins=crop_black_margins,
        require_labels=require_labels,
        check_video_ends=check_video_ends,
    )
    builder.download_and_prepare()
    build_info = Path(builder.cache_dir) / BUILD_INFO_FILENAME
    if not build_info.is_file():  # Arrow files without it: an older build, or the file was removed
        logger.warning("%s is missing beside the cached Arrow files: building the dataset again", build_info)
        builder.download_and_prepare(download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD)
    splits = {}
    for split in ("train", "validation", "test"):
        if builder.info.splits[split].num_examples > 0:
            splits[split] = builder.as_dataset(split=split)
        else:  # the Arrow reader refuses an empty split; its (empty) Arrow file still holds the features
            (path,) = filenames_for_dataset_split(builder.cache_dir, builder.dataset_name, split, "arrow")
            splits[split] = datasets.Dataset.from_file(path, info=builder.info.copy(), split=split)
    return datasets.DatasetDict(splits)


class TaskFrames(NamedTuple):
    """The task ground truth of one video on a frame grid (`case_task_frames`)."""

    frame_indices: np.ndarray  # (F,) int64, frame numbers at the video's own rate; frame_nr k is the k-th
    tasks: np.ndarray  # (F,) int64, TASK_CLASSES indices (Other where no segment covers the frame)
    video_fps: float


def case_task_frames(data_dir, case_id: str, fps: float = 1.0, labels_dir=None,
                     unreadable=()) -> dict[int, TaskFrames]:
    """Every labelled frame of each readable part of a labelled case on a `fps` grid, with its task: the ground truth
    the organisers score task recognition on (one label per frame at 1 fps per video), clips or no clips.

    The parts are placed on the case timeline as the builder places them: a part named in `unreadable` (the build's
    `corrupt_videos`) or whose metadata cannot be read now takes the extent its labels reach, and is left out.
    """
    videos_dir, labels_dir = resolve_dirs(data_dir, labels_dir)
    case = find_cases(videos_dir.resolve(), labels_dir.resolve() if labels_dir is not None else None).get(case_id)
    if case is None or not case.has_labels:
        raise FileNotFoundError(f"{videos_dir}/{case_id}: no such case with tools.csv and tasks.csv under {labels_dir}")
    labels = read_case_labels(case.tools_csv, case.tasks_csv, parts=case.parts)
    infos = {}
    for part, video in sorted(case.parts.items()):
        try:
            infos[part] = None if str(video) in unreadable else probe_video(video, check_end=False)
        except CorruptVideoError:
            infos[part] = None
    offsets = part_offsets(labels, {part: info.duration if info else None for part, info in infos.items()})
    frames = {}
    for part, info in infos.items():
        if info is not None:
            indices = sample_frame_indices(info.num_frames, info.fps, fps)
            _, tasks = labels_at(labels, offsets, part, indices / info.fps)
            frames[part] = TaskFrames(indices, tasks, info.fps)
    return frames


def get_build_info(dataset) -> SurgVUBuildInfo:
    """The `SurgVUBuildInfo` saved beside the Arrow files of a dataset from `load_surgvu` (any split of it, or the
    whole `DatasetDict`)."""
    if isinstance(dataset, datasets.DatasetDict):
        splits = list(dataset.values())
    elif isinstance(dataset, datasets.Dataset):
        splits = [dataset]
    else:
        raise TypeError(f"expected a Dataset or DatasetDict from load_surgvu, got {type(dataset).__name__}")
    folders = list(dict.fromkeys(Path(f["filename"]).parent for split in splits for f in split.cache_files))
    if not folders:
        raise ValueError(
            "the dataset has no Arrow cache files (it lives in memory): the build info is read from beside the Arrow "
            "files that load_surgvu writes"
        )
    for folder in folders:
        if (folder / BUILD_INFO_FILENAME).is_file():
            return SurgVUBuildInfo.load(folder)
    raise FileNotFoundError(
        f"no {BUILD_INFO_FILENAME} beside the dataset's Arrow files in {', '.join(map(str, folders))}: not built by "
        "load_surgvu, or built before the build info had its own file (load_surgvu builds such a cache again)"
    )


def get_build_metadata(dataset) -> dict:
    """`get_build_info(dataset)` as a dict: action spec, class lists, corrupt videos, cases without labels, excluded,
    train, validation and test cases, label noise and options."""
    return get_build_info(dataset).to_metadata()


def get_action_spec(dataset=None) -> list[str]:
    """One name per action dimension (`USM1/needle driver`, ..., `task/Other`): fixed by the label vocabulary.

    `dataset`, if given, is checked to hold SurgVU actions of that width.
    """
    spec = action_names()
    if dataset is not None:
        splits = dataset.values() if isinstance(dataset, datasets.DatasetDict) else [dataset]
        for split in splits:
            actions = split.features.get("actions")
            if not isinstance(actions, datasets.Array2D) or actions.shape[-1] != len(spec):
                raise ValueError(
                    f"not a SurgVU clip dataset: its `actions` feature is {actions!r}, expected Array2D with "
                    f"{len(spec)} columns (one per name in the action spec)"
                )
    return spec


__all__ = [
    "SurgVU",
    "SurgVUConfig",
    "SurgVUBuildInfo",
    "BUILD_INFO_FILENAME",
    "SurgVULabelError",
    "UnusableLabelFileError",
    "load_surgvu",
    "get_action_spec",
    "get_build_info",
    "get_build_metadata",
    "assign_cases",
    "sample_frame_indices",
    "case_task_frames",
    "TaskFrames",
]

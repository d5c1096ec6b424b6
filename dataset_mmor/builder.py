"""The MM-OR `datasets` builder: one row per clip of consecutive timepoints of one take, seen by one camera.

The builder reads the label files, the timestamp lists and the camera folders' listings; JPEGs are decoded lazily by
`MMORClipTransform`. As for SurgVU, `load_mmor` instantiates the builder directly (datasets 4+ runs no loading
scripts) and keeps its Arrow cache, keyed by the options and by a fingerprint of the label and timestamp files and of
the camera's JPEGs (names, sizes, modification times). What a build found (takes per split, label noise, missing
frames) is saved beside the Arrow files as `mmor_build.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import datasets
import numpy as np
from datasets.builder import Key
from datasets.naming import filenames_for_dataset_split

from .labels import BREACH_CLASSES, NEXT_ACTIONS, ROBOT_PHASES, action_names, build_actions, take_labels
from .layout import (
    LABEL_FOLDERS,
    OFFICIAL_SPLITS,
    SPLIT_TO_TAKES,
    Camera,
    MMORDataError,
    parse_camera,
    read_label_file,
    read_timepoint_frames,
    take_folder,
    timestamps_file,
)


logger = logging.getLogger(__name__)

_BUILD_VERSION = "1.0.0"
BUILD_INFO_FILENAME = "mmor_build.json"

_DESCRIPTION = """\
MM-OR (Özsoy et al., CVPR 2025): simulated robotic knee replacements (MAKO, TKA and PKA) in one operating room,
recorded by five Azure Kinect cameras, four simstation detail cameras and more. Each row is a clip of
`frames_per_clip` consecutive (or every `timepoint_stride`-th) timepoints of one take, seen by one camera, with per-step
sterility breach (binary and its triplets as JSON), robot phase (9 classes, -1 missing), next action (12 classes, -1
for null) with the seconds until it (NaN for null), and actions (one-hot phase and next action, 21 dimensions). Frames
are decoded lazily from `frame_paths`."""

_CITATION = """\
@inproceedings{ozsoy2025mmor,
  title     = {MM-OR: A Large Multimodal Operating Room Dataset for Semantic Understanding of High-Intensity Surgical
               Environments},
  author    = {{\\"O}zsoy, Ege and Pellegrini, Chantal and Czempiel, Tobias and Tristram, Felix and Yuan, Kun and
               Bani-Harouni, David and Eck, Ulrich and Busam, Benjamin and Keicher, Matthias and Navab, Nassir},
  booktitle = {CVPR},
  year      = {2025}
}"""

_LICENSE = "Granted by the authors' access form; the data must not be redistributed with this code."
_HOMEPAGE = "https://github.com/egeozsoy/MM-OR"


@dataclasses.dataclass
class MMORConfig(datasets.BuilderConfig):
    """Options of the MM-OR builder (validated on creation)."""

    data_root: str | None = None  # MM-OR_data/: take folders and take_timestamp_to_*/ label folders
    camera: str = "azure:1"  # azure:1..5 (colorimage/) or simstation:0..3 (simstation/)
    frames_per_clip: int = 8
    timepoint_stride: int = 1  # take every n-th timepoint (the files give no seconds per timepoint)
    clip_stride: int | None = None  # sampled steps between clip starts; None: frames_per_clip (no overlap)
    splits: tuple[str, ...] = OFFICIAL_SPLITS  # any of train, validation, test, short
    take_to_folder: dict | None = None  # updates layout.TAKE_NAME_TO_FOLDER
    split_to_takes: dict | None = None  # replaces the takes of the splits it names
    skip_missing_frames: bool = False  # False: a missing frame file is an error; True: its clips are left out

    def __post_init__(self):
        super().__post_init__()
        if not self.data_root:
            raise ValueError("MMORConfig needs data_root (the MM-OR_data folder)")
        self.camera = parse_camera(self.camera).name
        if self.frames_per_clip < 1:
            raise ValueError(f"frames_per_clip must be at least 1, got {self.frames_per_clip}")
        if self.timepoint_stride < 1:
            raise ValueError(f"timepoint_stride must be at least 1, got {self.timepoint_stride}")
        if self.clip_stride is not None and self.clip_stride < 1:
            raise ValueError(f"clip_stride must be at least 1 (sampled steps), got {self.clip_stride}")
        self.splits = tuple(self.splits)
        unknown = sorted(set(self.splits) - set(SPLIT_TO_TAKES) - set(self.split_to_takes or {}))
        if unknown or not self.splits:
            raise ValueError(f"splits must be among {sorted(SPLIT_TO_TAKES)}, got {list(self.splits)}")

    @property
    def stride(self) -> int:
        return self.clip_stride or self.frames_per_clip

    def takes(self, split: str) -> tuple[str, ...]:
        return tuple((self.split_to_takes or {}).get(split, SPLIT_TO_TAKES.get(split, ())))


class MMOR(datasets.GeneratorBasedBuilder):
    """MM-OR clips for world-model training and downstream evaluation (see `load_mmor`)."""

    BUILDER_CONFIG_CLASS = MMORConfig
    VERSION = datasets.Version(_BUILD_VERSION)

    def _info(self) -> datasets.DatasetInfo:
        steps = self.config.frames_per_clip
        features = datasets.Features(
            {
                "take": datasets.Value("string"),
                "folder": datasets.Value("string"),
                "camera": datasets.Value("string"),
                "timepoints": datasets.List(datasets.Value("int64"), length=steps),
                "frame_paths": datasets.List(datasets.Value("string"), length=steps),
                "breach": datasets.List(datasets.ClassLabel(names=list(BREACH_CLASSES)), length=steps),
                "breach_triplets": datasets.List(datasets.Value("string"), length=steps),  # JSON lists of triplets
                "phase": datasets.List(datasets.ClassLabel(names=list(ROBOT_PHASES)), length=steps),
                "next_action": datasets.List(datasets.ClassLabel(names=list(NEXT_ACTIONS)), length=steps),
                "seconds_to_next_action": datasets.List(datasets.Value("float32"), length=steps),
                "actions": datasets.Array2D((steps, len(action_names())), "float32"),
            }
        )
        return datasets.DatasetInfo(
            description=_DESCRIPTION, features=features, homepage=_HOMEPAGE, citation=_CITATION, license=_LICENSE
        )

    def _split_generators(self, dl_manager):
        config = self.config
        root = Path(config.data_root)
        camera = parse_camera(config.camera)
        takes, noise, split_info, absent = {}, {}, {}, []
        for split in config.splits:
            split_takes, split_absent = [], []
            for take in config.takes(split):
                if not (root / take_folder(take, config.take_to_folder)).is_dir():
                    split_absent.append(take)  # not downloaded: the release comes as one zip per take folder
                    continue
                item = self._read_take(root, take, camera)
                for kind, count in item.pop("noise").items():
                    noise[kind] = noise.get(kind, 0) + count
                takes[take] = item
                split_takes.append(take)
            if split_absent:
                logger.warning("%s split: takes without a folder under %s, left out: %s", split, root, split_absent)
                absent.extend(split_absent)
            num_clips = sum(len(takes[take]["starts"]) for take in split_takes)
            if num_clips == 0:
                files = ", ".join(str(takes[take]["timestamps_file"]) for take in split_takes) or "none"
                raise MMORDataError(
                    f"split {split!r} has no clip of {config.frames_per_clip} timepoints: takes found "
                    f"{list(split_takes)} (timestamp files: {files}); takes without a folder under {root}: "
                    f"{[take for take in config.takes(split) if take not in split_takes]}"
                )
            split_info[split] = split_takes
        self._build_info = {
            "splits": split_info,
            "absent_takes": absent,
            "label_noise": dict(sorted(noise.items())),
            "clips_with_missing_frames": sum(takes[take]["dropped"] for take in takes),
            "missing_frames": sum(takes[take]["missing_frames"] for take in takes),
            "action_spec": action_names(),
            "options": {"camera": camera.name, "frames_per_clip": config.frames_per_clip,
                        "timepoint_stride": config.timepoint_stride, "clip_stride": config.stride},
        }  # fmt: skip
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"takes": [takes[take] for take in split_takes]})
            for split, split_takes in split_info.items()
        ]

    def _read_take(self, root: Path, take: str, camera) -> dict:
        config = self.config
        folder = take_folder(take, config.take_to_folder)
        take_dir = root / folder
        labels = {kind: read_label_file(root / sub / f"{take}.json") for kind, sub in LABEL_FOLDERS.items()}
        timestamps = timestamps_file(take_dir, take)
        frames = read_timepoint_frames(timestamps, camera.group)
        sampled = np.arange(0, len(frames), config.timepoint_stride)
        paths = [str(camera.frame_path(take_dir, frames[t])) for t in sampled]
        camera_dir = take_dir / camera.folder
        present = set(os.listdir(camera_dir)) if camera_dir.is_dir() else set()
        prefix = camera.file_name("")[: -len(".jpg")]
        if not any(name.startswith(prefix) for name in present):
            raise MMORDataError(f"{camera_dir}: take {take} has no images of camera {camera.name} ({prefix}*.jpg)")
        missing = np.array([Path(path).name not in present for path in paths], dtype=bool)
        if missing.any() and not config.skip_missing_frames:
            first = paths[int(np.argmax(missing))]
            raise MMORDataError(
                f"{first}: frame file missing ({int(missing.sum())} of {len(paths)} frames of take {take}, camera "
                f"{camera.name}, are missing; skip_missing_frames=True (--skip_missing_frames) leaves their clips out)"
            )
        per_step, noise = take_labels(len(frames), labels["breach"], labels["phase"], labels["next_action"])
        steps = config.frames_per_clip
        starts = [s for s in range(0, len(sampled) - steps + 1, config.stride)]
        kept = [s for s in starts if not missing[s : s + steps].any()]
        if missing.any():
            logger.warning("%s: frame file missing (%d of %d frames of take %s, camera %s): %d of %d clips left out",
                           paths[int(np.argmax(missing))], int(missing.sum()), len(paths), take, camera.name,
                           len(starts) - len(kept), len(starts))
        return {
            "take": take,
            "folder": folder,
            "timestamps_file": timestamps,
            "timepoints": sampled,
            "paths": paths,
            "labels": per_step,
            "starts": kept,
            "dropped": len(starts) - len(kept),
            "missing_frames": int(missing.sum()),
            "noise": noise,
        }

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
        # `_output_dir` is still the `.incomplete` folder here: the file appears with the Arrow files, or not at all.
        (Path(self._output_dir) / BUILD_INFO_FILENAME).write_text(json.dumps(self._build_info, indent=1))

    def _generate_examples(self, takes):
        steps, camera = self.config.frames_per_clip, parse_camera(self.config.camera).name
        for take_number, take in enumerate(takes):
            labels, timepoints = take["labels"], take["timepoints"]
            actions = build_actions(labels["phase"][timepoints], labels["next_action"][timepoints])
            for start in take["starts"]:
                clip = slice(start, start + steps)
                at = timepoints[clip]
                yield Key(take_number, start), {
                    "take": take["take"],
                    "folder": take["folder"],
                    "camera": camera,
                    "timepoints": at.tolist(),
                    "frame_paths": take["paths"][clip],
                    "breach": labels["breach"][at].tolist(),
                    "breach_triplets": [labels["breach_triplets"][t] for t in at],
                    "phase": labels["phase"][at].tolist(),
                    "next_action": labels["next_action"][at].tolist(),
                    "seconds_to_next_action": labels["seconds_to_next_action"][at].tolist(),
                    "actions": actions[clip],
                }


def _fingerprint(root: Path, folders: set[str], camera: Camera) -> str:
    """Label files and timestamp lists (paths, sizes, modification times), and the names, sizes and modification times
    of the camera's JPEGs in the take `folders`: a changed, added or removed image rebuilds the splits, another
    camera's does not. One stat per image, its contents unread."""
    digest = hashlib.sha256()
    candidates = [path for sub in LABEL_FOLDERS.values() for path in sorted((root / sub).glob("*.json"))]
    candidates += sorted(root.glob("*/timestamp_to_pcd_and_frames_list*.json"))
    for path in candidates:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    prefix = camera.file_name("")[: -len(".jpg")]
    for folder in sorted(folders):
        camera_dir = root / folder / camera.folder
        if not camera_dir.is_dir():
            continue  # a take not downloaded, or without this camera: the build names it
        with os.scandir(camera_dir) as entries:
            images = [entry for entry in entries if entry.name.startswith(prefix) and entry.name.endswith(".jpg")]
        for entry in sorted(images, key=lambda entry: entry.name):
            stat = entry.stat()
            digest.update(f"{folder}/{camera.folder}/{entry.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_mmor(
    data_root,
    camera: str = "azure:1",
    *,
    frames_per_clip: int = 8,
    timepoint_stride: int = 1,
    clip_stride: int | None = None,
    splits=OFFICIAL_SPLITS,
    take_to_folder: dict | None = None,
    split_to_takes: dict | None = None,
    skip_missing_frames: bool = False,
    cache_dir=None,
) -> datasets.DatasetDict:
    """Build (or reuse from the Arrow cache) the MM-OR clip dataset; returns the requested official splits.

    Args:
        data_root: the `MM-OR_data` folder (take folders, `take_timestamp_to_{sterility_breach,robot_phase,
            next_action}/`).
        camera: `azure:1`..`azure:5` (`colorimage/camera0{c}_colorimage-{frame}.jpg`) or `simstation:0`..`3`
            (`simstation/camera0{i}_{frame}.jpg`).
        frames_per_clip, timepoint_stride, clip_stride: clips of `frames_per_clip` timepoints taken every
            `timepoint_stride`-th timepoint, starting every `clip_stride` sampled steps (default: no overlap).
        splits: among `train`, `validation`, `test` (the official downstream splits) and `short` (the short clips
            013-033, in none of the official splits).
        take_to_folder: updates the public take -> folder mapping (`015_PKA` -> `015-018_PKA`, ...).
        split_to_takes: replaces the takes of the splits it names, e.g. `{"train": ["001_PKA"]}`.
        skip_missing_frames: leave out the clips of missing frame files instead of raising (each take's missing
            frames are logged; `mmor_build.json` counts them and the clips left out).
        cache_dir: where the Arrow files go (default: the `datasets` cache); `mmor_build.json` goes beside them.

    Raises:
        MMORDataError: a missing take folder, label file or timestamp list; a label file not keyed by frame ids; a take
            without images of the camera; a missing frame file; a requested split without clips. The message names
            the file.
    """
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected MM-OR_data with take folders)")
    split_takes = {**SPLIT_TO_TAKES, **(split_to_takes or {})}
    folders = {take_folder(take, take_to_folder) for split in splits for take in split_takes.get(split, ())}
    builder = MMOR(
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        dataset_name="mmor",
        hash=_fingerprint(root, folders, parse_camera(camera)),
        data_root=str(root.resolve()),
        camera=parse_camera(camera).name,
        frames_per_clip=int(frames_per_clip),
        timepoint_stride=int(timepoint_stride),
        clip_stride=clip_stride,
        splits=tuple(splits),
        take_to_folder=dict(take_to_folder) if take_to_folder else None,
        split_to_takes={k: list(v) for k, v in split_to_takes.items()} if split_to_takes else None,
        skip_missing_frames=skip_missing_frames,
    )
    builder.download_and_prepare()
    if not (Path(builder.cache_dir) / BUILD_INFO_FILENAME).is_file():
        builder.download_and_prepare(download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD)
    result = {}
    for split in builder.config.splits:
        if builder.info.splits[split].num_examples > 0:
            result[split] = builder.as_dataset(split=split)
        else:  # not reached from a fresh build (empty splits raise); kept for caches written with skipped frames
            (path,) = filenames_for_dataset_split(builder.cache_dir, builder.dataset_name, split, "arrow")
            result[split] = datasets.Dataset.from_file(path, info=builder.info.copy(), split=split)
    return datasets.DatasetDict(result)


def get_mmor_build_info(dataset) -> dict:
    """`mmor_build.json` of a dataset from `load_mmor`: takes per split, label noise, dropped clips, options."""
    splits = list(dataset.values()) if isinstance(dataset, datasets.DatasetDict) else [dataset]
    for split in splits:
        for cache_file in split.cache_files:
            path = Path(cache_file["filename"]).parent / BUILD_INFO_FILENAME
            if path.is_file():
                return json.loads(path.read_text())
    raise FileNotFoundError(f"no {BUILD_INFO_FILENAME} beside the dataset's Arrow files: not built by load_mmor")


def get_mmor_action_spec(dataset=None) -> list[str]:
    """One name per action dimension: `phase/<name>` (9 robot phases) then `next_action/<name>` (12).

    `dataset`, if given, is checked to hold MM-OR actions of that width.
    """
    spec = action_names()
    if dataset is not None:
        splits = dataset.values() if isinstance(dataset, datasets.DatasetDict) else [dataset]
        for split in splits:
            actions = split.features.get("actions")
            if not isinstance(actions, datasets.Array2D) or actions.shape[-1] != len(spec):
                raise ValueError(f"not an MM-OR clip dataset: its `actions` feature is {actions!r}, expected "
                                 f"Array2D with {len(spec)} columns")
    return spec


__all__ = ["MMOR", "MMORConfig", "BUILD_INFO_FILENAME", "load_mmor", "get_mmor_action_spec", "get_mmor_build_info"]

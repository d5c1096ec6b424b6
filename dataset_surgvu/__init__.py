"""SurgVU as a `datasets` dataset of clips, with exact and fast clip decoding and V-JEPA 2 preprocessing.

    from dataset_surgvu import load_surgvu, ClipTransform, get_action_spec
    dataset = load_surgvu("/data/surgvu")            # DatasetDict(train, validation, test), split by case
    transform = ClipTransform(crop_size=256)          # decodes lazily; use inside DataLoader workers
    inputs = transform(dataset["train"][0])           # pixel_values_videos [T, 3, 256, 256], actions [T, 56], ...
"""

from .builder import SurgVU, SurgVUConfig, crop_box, get_action_spec, get_build_metadata, load_surgvu
from .builder import SurgVUBuildInfo, TaskFrames, case_task_frames, get_build_info
from .clips import BrokenClip, BrokenFiles, EpochShuffleSampler, SurgVUClips, collate_clips
from .labels import ARMS, TASK_CLASSES, TOOL_CLASSES, SurgVULabelError, UnusableLabelFileError, action_names
from .layout import parse_part_file, scan_surgvu
from .transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ClipTransform, vjepa2_preprocess
from .video import (
    BackendChoice,
    CorruptVideoError,
    DecoderCache,
    FrameUnavailableError,
    VideoBackendError,
    VideoInfo,
    decode_clip,
    default_backend,
    probe_video,
    resolve_backend,
    select_backend,
)


__all__ = [
    "ARMS",
    "BackendChoice",
    "BrokenClip",
    "BrokenFiles",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "TASK_CLASSES",
    "TOOL_CLASSES",
    "ClipTransform",
    "CorruptVideoError",
    "DecoderCache",
    "EpochShuffleSampler",
    "FrameUnavailableError",
    "SurgVU",
    "SurgVUBuildInfo",
    "SurgVUClips",
    "SurgVUConfig",
    "SurgVULabelError",
    "TaskFrames",
    "UnusableLabelFileError",
    "VideoBackendError",
    "VideoInfo",
    "action_names",
    "case_task_frames",
    "collate_clips",
    "crop_box",
    "decode_clip",
    "default_backend",
    "get_action_spec",
    "get_build_info",
    "get_build_metadata",
    "load_surgvu",
    "parse_part_file",
    "probe_video",
    "resolve_backend",
    "scan_surgvu",
    "select_backend",
    "vjepa2_preprocess",
]

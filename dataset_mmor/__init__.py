"""MM-OR as a `datasets` dataset of clips of one camera, with its downstream labels as per-step labels and actions.

    from dataset_mmor import load_mmor, MMORClips, MMORClipTransform, get_mmor_action_spec
    dataset = load_mmor("/data/MM-OR_data", camera="azure:1")   # DatasetDict(train, validation, test)
    clips = MMORClips(dataset["train"], MMORClipTransform(crop_size=256))
    inputs = clips[0]                                     # pixel_values_videos [T, 3, 256, 256], actions [T, 21], ...
"""

from .builder import MMOR, MMORConfig, get_mmor_action_spec, get_mmor_build_info, load_mmor
from .clips import MMORClips, MMORClipTransform, decode_frames
from .labels import BREACH_CLASSES, NEXT_ACTIONS, ROBOT_PHASES, action_names
from .layout import OFFICIAL_SPLITS, SPLIT_TO_TAKES, TAKE_NAME_TO_FOLDER, MMORDataError, parse_camera


__all__ = [
    "BREACH_CLASSES",
    "MMOR",
    "MMORClipTransform",
    "MMORClips",
    "MMORConfig",
    "MMORDataError",
    "NEXT_ACTIONS",
    "OFFICIAL_SPLITS",
    "ROBOT_PHASES",
    "SPLIT_TO_TAKES",
    "TAKE_NAME_TO_FOLDER",
    "action_names",
    "decode_frames",
    "get_mmor_action_spec",
    "get_mmor_build_info",
    "load_mmor",
    "parse_camera",
]

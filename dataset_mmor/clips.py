"""The torch side of a `load_mmor` split: JPEG decoding and V-JEPA 2 preprocessing, run in DataLoader workers.

    from torch.utils.data import DataLoader
    from dataset_mmor import MMORClips, MMORClipTransform, load_mmor

    split = load_mmor("/data/MM-OR_data", camera="azure:1")["train"]
    clips = MMORClips(split, MMORClipTransform(crop_size=256))
    loader = DataLoader(clips, batch_size=4, shuffle=True, num_workers=8)
"""

from __future__ import annotations

import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from dataset_surgvu.clips import SurgVUClips
from dataset_surgvu.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, vjepa2_preprocess

from .layout import MMORDataError


def decode_frames(paths) -> torch.Tensor:
    """uint8 `[T, 3, H, W]` from JPEG files (grey or CMYK files are converted to RGB); names the file it cannot read."""
    frames = []
    for path in paths:
        try:
            frames.append(decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB))
        except (RuntimeError, OSError) as error:
            raise MMORDataError(f"{path}: cannot read the frame as a JPEG ({error})") from error
    if len({tuple(frame.shape) for frame in frames}) > 1:
        raise MMORDataError(f"{paths[0]}: the clip's frames differ in size: {[tuple(f.shape) for f in frames]}")
    return torch.stack(frames)  # (T, 3, H, W)


class MMORClipTransform:
    """Turn a `load_mmor` row into model inputs; picklable, for use inside torch `DataLoader` workers.

    Returns `pixel_values_videos` float32 `[T, 3, crop_size, crop_size]` (the same V-JEPA 2 preprocessing as SurgVU:
    `dataset_surgvu.transforms.vjepa2_preprocess`), `actions` float32 `[T, 21]`, `phase`, `next_action` and `breach`
    int64 `[T]` (-1 where missing or null), `seconds_to_next_action` float32 `[T]` (NaN where null) and `take`.
    """

    deterministic = True  # no random augmentation: a row always gives the same pixels

    def __init__(self, crop_size: int = 256, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD):
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.crop_size = crop_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)

    def __call__(self, example: dict) -> dict:
        videos = decode_frames(example["frame_paths"])
        return {
            "pixel_values_videos": vjepa2_preprocess(videos, self.crop_size, self.image_mean, self.image_std),
            "actions": torch.as_tensor(example["actions"], dtype=torch.float32),
            "phase": torch.as_tensor(example["phase"], dtype=torch.int64),
            "next_action": torch.as_tensor(example["next_action"], dtype=torch.int64),
            "seconds_to_next_action": torch.as_tensor(example["seconds_to_next_action"], dtype=torch.float32),
            "breach": torch.as_tensor(example["breach"], dtype=torch.int64),
            "take": example["take"],
        }


class MMORClips(SurgVUClips):
    """Rows of a `load_mmor` split turned into model inputs by an `MMORClipTransform`, plus `sample_id` (the row's
    index in the split); the same wrapper as SurgVU's."""

"""From a dataset row to model inputs: decode the clip, crop the tool-name band and margins, V-JEPA 2 preprocessing."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as tvF

from .video import DecoderCache, decode_clip, resolve_backend


IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def vjepa2_preprocess(
    videos: torch.Tensor,
    crop_size: int = 256,
    image_mean=IMAGENET_DEFAULT_MEAN,
    image_std=IMAGENET_DEFAULT_STD,
) -> torch.Tensor:
    """The `VJEPA2VideoProcessor` pipeline on uint8 channels-first video(s) `[..., T, 3, H, W]`.

    Resize the shortest edge to `int(crop_size * 256 / 224)` (bilinear, antialiased, on uint8), center crop to
    `crop_size`, rescale by 1/255 and normalize; returns float32 `[..., T, 3, crop_size, crop_size]`.
    """
    if videos.dtype != torch.uint8 or videos.ndim < 4 or videos.shape[-3] != 3:
        raise ValueError(f"expected uint8 video(s) [..., T, 3, H, W], got {tuple(videos.shape)} {videos.dtype}")
    leading, (height, width) = videos.shape[:-3], videos.shape[-2:]
    frames = videos.reshape(-1, 3, height, width)  # (B*T, 3, H, W)
    shortest = int(crop_size * 256 / 224)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest * long / short)
    new_size = (new_long, shortest) if width <= height else (shortest, new_long)
    frames = tvF.resize(frames, list(new_size), interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
    top = int((frames.shape[-2] - crop_size) / 2.0)
    left = int((frames.shape[-1] - crop_size) / 2.0)
    frames = tvF.crop(frames, top, left, crop_size, crop_size)
    # rescale and normalize fused, as the processor does: (x - 255 * mean) / (255 * std)
    mean = torch.tensor(image_mean, dtype=torch.float32) * 255.0
    std = torch.tensor(image_std, dtype=torch.float32) * 255.0
    frames = tvF.normalize(frames.to(torch.float32), mean.tolist(), std.tolist())
    return frames.reshape(*leading, 3, crop_size, crop_size)


def crop_frames(frames: torch.Tensor, crop_box) -> torch.Tensor:
    """Crop `[T, H, W, 3]` frames to `crop_box` = (top, left, height, width)."""
    top, left, height, width = (int(value) for value in crop_box)
    if height <= 0 or width <= 0 or top + height > frames.shape[1] or left + width > frames.shape[2]:
        raise ValueError(f"crop box {list(crop_box)} does not fit frames of shape {tuple(frames.shape)}")
    return frames[:, top : top + height, left : left + width]


class ClipTransform:
    """Turn a `load_surgvu` row into model inputs; picklable, for use inside torch `DataLoader` workers.

    Returns `pixel_values_videos` float32 `[T, 3, crop_size, crop_size]` (tool-name band and black margins cropped
    with the row's `crop_box` first, then the V-JEPA 2 preprocessing), `actions` float32 `[T, A]`, `tasks` int64 `[T]`
    (-1 where unlabeled), `tools` float32 `[T, 12]` and `case_id`. Each worker opens its own decoders, at most
    `max_open_decoders` at a time.
    """

    # No random augmentation: a row always gives the same pixels, so its latents can be cached (LatentCache).
    deterministic = True

    def __init__(
        self,
        crop_size: int = 256,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        backend: str | None = None,
        max_open_decoders: int = 4,
    ):
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.crop_size = crop_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        # Resolved here, in the parent: workers get the backend's name, so the choice (and its one log line, or
        # the error of a backend that cannot decode) happens once, not in every worker.
        self.backend = resolve_backend(backend)
        self.max_open_decoders = max_open_decoders
        self._cache = None

    @property
    def cache(self) -> DecoderCache:
        if self._cache is None:
            self._cache = DecoderCache(self.backend, self.max_open_decoders)
        return self._cache

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None  # decoders are never shared across processes
        return state

    def __call__(self, example: dict) -> dict:
        frames = decode_clip(example["video_path"], example["frame_indices"], cache=self.cache)
        frames = crop_frames(frames, example["crop_box"])
        videos = frames.permute(0, 3, 1, 2)  # (T, 3, H, W)
        return {
            "pixel_values_videos": vjepa2_preprocess(videos, self.crop_size, self.image_mean, self.image_std),
            "actions": torch.as_tensor(example["actions"], dtype=torch.float32),
            "tasks": torch.as_tensor(example["tasks"], dtype=torch.int64),
            "tools": torch.as_tensor(example["tools"], dtype=torch.float32),
            "case_id": example["case_id"],
        }

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

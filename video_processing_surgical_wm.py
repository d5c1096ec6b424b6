# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""The video processor of the surgical world model and its probes: frames sampled at the model's steps, the SurgVU
picture cropped out of the frame, then V-JEPA 2's preprocessing.

    processor = AutoVideoProcessor.from_pretrained(export, trust_remote_code=True)
    inputs = processor("case.mp4", return_tensors="pt")       # pixel_values_videos (1, T, 3, crop_size, crop_size)

Training decodes clips with dataset_surgvu, crops each video to its `crop_box` (without the bottom band that lists the
installed tools, a label leak, and without the black side margins) and applies V-JEPA 2's resize, center crop and
normalization (`dataset_surgvu.transforms`). `VJEPA2VideoProcessor` cannot express the crop, so this class adds it, and
samples a video file on the grid training samples it on: one frame every `1 / fps` seconds, the nearest frame of the
video's own rate. It travels with the model as its other files do (it imports only torch, numpy and transformers).

A video file is decoded with PyAV (`load_video(backend="pyav")`), whose wheels bundle FFmpeg: transformers' default,
torchcodec, needs the system's FFmpeg libraries and fails without them when its first decoder opens.
"""

import math
import os

import numpy as np
import torch
from transformers import VJEPA2VideoProcessor
from transformers.processing_utils import VideosKwargs
from transformers.video_utils import VideoMetadata, load_video


class SurgicalWorldModelVideosKwargs(VideosKwargs, total=False):
    """`VideosKwargs` and the crop of the surgical picture.

    crop_tool_band (`bool`): remove the bottom band listing the installed tools (`tool_band_fraction` of the height).
    tool_band_fraction (`float`): the height of that band, as a fraction of the frame's.
    crop_black_margins (`bool`): remove the black side margins, found in the frames' top rows as the builder does.
    black_margin_threshold (`float`): the brightness (0-255) above which a column holds picture.
    """

    crop_tool_band: bool
    tool_band_fraction: float
    crop_black_margins: bool
    black_margin_threshold: float


class SurgicalWorldModelVideoProcessor(VJEPA2VideoProcessor):
    """V-JEPA 2's video processor after the crop of the surgical picture, sampling video files at the model's fps.

    `num_frames=None` (the default) keeps every step of a video file: what `SurgicalWorldModel.encode` takes to follow
    a whole video. A probe's export sets `num_frames` to the frames of the clips it was trained on, and the
    video-classification pipeline asks for that many (`config.num_frames`): the video's first clip. Frames given as
    arrays are taken as they are with `do_sample_frames=False`; sampling them needs their rate
    (`video_metadata={"fps": ...}`).
    """

    valid_kwargs = SurgicalWorldModelVideosKwargs
    do_sample_frames = True
    fps = 4.0
    num_frames = None
    crop_tool_band = True
    tool_band_fraction = 0.08
    crop_black_margins = True
    black_margin_threshold = 24.0

    def sample_frames(self, metadata: VideoMetadata, num_frames: int | None = None, fps: float | None = None,
                      **kwargs) -> np.ndarray:
        """Frame numbers of a `fps` grid over the video (the nearest frame of its own rate), the first `num_frames`
        of them when given: dataset_surgvu's `sample_frame_indices`."""
        fps = fps if fps is not None else self.fps
        if metadata.fps is None or not metadata.total_num_frames:
            raise ValueError("frames given without their video's frame rate: pass video_metadata={'fps': ...} to "
                             f"sample them at the model's {fps:g} fps, or do_sample_frames=False for frames that "
                             "already are its steps")
        total, video_fps = int(metadata.total_num_frames), float(metadata.fps)
        num_steps = int(math.floor((total - 1) * fps / video_fps + 1e-9)) + 1
        indices = np.floor(np.arange(num_steps) * (video_fps / fps) + 0.5).astype(np.int64)
        indices = indices[indices < total]
        if num_frames is not None:
            if len(indices) < num_frames:
                raise ValueError(f"the video has {len(indices)} steps at {fps:g} fps ({total} frames at "
                                 f"{video_fps:g} fps), fewer than the {num_frames} of a clip")
            indices = indices[:num_frames]
        return indices

    def fetch_videos(self, video_url_or_urls, sample_indices_fn=None):
        """Decodes video files with PyAV (bundled FFmpeg), and refuses a file that gives fewer frames than sampled."""
        if isinstance(video_url_or_urls, list):
            return list(zip(*[self.fetch_videos(item, sample_indices_fn) for item in video_url_or_urls]))
        import av

        path = str(video_url_or_urls)
        if "://" not in path and not os.path.isfile(path):
            raise ValueError(f"{path}: no such video file")
        try:
            video, metadata = load_video(video_url_or_urls, backend="pyav", sample_indices_fn=sample_indices_fn)
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise ValueError(f"{video_url_or_urls}: cannot be decoded ({error})") from error
        if metadata.frames_indices is not None and len(video) != len(metadata.frames_indices):
            raise ValueError(f"{video_url_or_urls}: {len(video)} of {len(metadata.frames_indices)} sampled frames "
                             f"could be decoded (the container announces {metadata.total_num_frames}: truncated?)")
        return video, metadata

    def picture_box(self, video: torch.Tensor, crop_tool_band: bool, tool_band_fraction: float,
                    crop_black_margins: bool, black_margin_threshold: float) -> tuple[int, int, int, int]:
        """`(top, left, height, width)` of the picture in a uint8 video `(T, 3, H, W)`: dataset_surgvu's `crop_box`,
        the margins found in these frames rather than in three keyframes of the whole file."""
        height, width = video.shape[-2:]
        if crop_tool_band:
            height = int(math.floor(height * (1.0 - tool_band_fraction)))
        left = 0
        if crop_black_margins:
            # per column, the brightest frame's mean over the picture's rows of the brightest channel
            brightness = video[:, :, :height].amax(dim=1).to(torch.float64).mean(dim=1).amax(dim=0)  # (W,)
            content = torch.nonzero(brightness > black_margin_threshold).flatten()
            if len(content) and int(content[-1]) + 1 - int(content[0]) >= width // 2:
                left, width = int(content[0]), int(content[-1]) + 1 - int(content[0])
        return 0, left, height, width

    def _preprocess(self, videos: list[torch.Tensor], crop_tool_band: bool, tool_band_fraction: float,
                    crop_black_margins: bool, black_margin_threshold: float, **kwargs):
        cropped = []
        for video in videos:
            top, left, height, width = self.picture_box(video, crop_tool_band, tool_band_fraction,
                                                        crop_black_margins, black_margin_threshold)
            cropped.append(video[..., top : top + height, left : left + width])  # (T, 3, height, width)
        return super()._preprocess(cropped, **kwargs)


SurgicalWorldModelVideoProcessor.register_for_auto_class("AutoVideoProcessor")

__all__ = ["SurgicalWorldModelVideoProcessor"]

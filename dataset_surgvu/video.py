"""Exact, fast clip decoding from long H.264 videos, with torchcodec or PyAV.

One entry point, `decode_clip(path, frame_indices)`, returns exactly the frames a plain sequential decode would give
at those frame numbers, without decoding the video from its start: it seeks to the keyframe before the first frame
and decodes forward, picking frames by presentation time (first frame at `start_time`, frame `i` at
`start_time + i / fps`), so streams whose first timestamp is not zero are handled. For a constant frame rate
(SurgVU's 60 fps) frame `i` is the i-th frame of the stream; for a variable one, it is the frame on screen at that
time on the stream's average-rate grid. torchcodec is used when it really decodes here (it needs the system's
FFmpeg shared libraries: apt-get install ffmpeg); PyAV, whose wheels bundle FFmpeg, otherwise, with one warning.
`SURGICAL_WM_VIDEO_BACKEND=pyav|torchcodec` forces one (see `select_backend`). Both give identical frames.

Open decoders live in a `DecoderCache` that belongs to one process: a DataLoader worker opens its own decoders and
closes the ones it evicts; a cache inherited through fork is dropped, never used.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib.util
import io
import logging
import os
import re
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch


logger = logging.getLogger(__name__)

BACKENDS = ("torchcodec", "pyav")
BACKEND_ENV = "SURGICAL_WM_VIDEO_BACKEND"  # forces a backend: "torchcodec" or "pyav"
_FFMPEG_FIX = "apt-get install ffmpeg"  # gives torchcodec the FFmpeg shared libraries it loads
_RESEEK_GAP_SECONDS = 2.0  # PyAV: requested frames further apart than this are reached by a new seek


class CorruptVideoError(RuntimeError):
    """A video file cannot be opened or read to its end."""


class FrameUnavailableError(IndexError):
    """A requested frame is outside the video or could not be decoded."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video stream, read without decoding it."""

    path: str
    fps: float  # average frame rate of the stream
    num_frames: int
    width: int
    height: int
    start_time: float  # presentation time of the first frame, seconds
    time_base: Fraction

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def frame_time(self, index: int) -> float:
        """Presentation time of frame `index` (seconds, stream clock)."""
        return self.start_time + index / self.fps


# --------------------------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------------------------
def probe_video(path: str | os.PathLike, check_end: bool = True) -> VideoInfo:
    """Read a video's stream metadata; with `check_end`, also check that the packets reach the stream's end.

    The end check demuxes (without decoding) from the last keyframe: a file cut short after its header would otherwise
    report frames that are not there. Raises `CorruptVideoError` naming the file.
    """
    import av

    path = str(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise CorruptVideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate or stream.time_base is None:
                raise CorruptVideoError(f"{path}: the stream has no frame rate or time base")
            fps = float(rate)
            time_base = Fraction(stream.time_base)
            start_pts = stream.start_time or 0
            num_frames = stream.frames
            if not num_frames:
                if stream.duration is None:
                    raise CorruptVideoError(f"{path}: the container states neither a frame count nor a duration")
                num_frames = int(round(float(stream.duration * time_base) * fps))
            info = VideoInfo(
                path=path,
                fps=fps,
                num_frames=int(num_frames),
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                start_time=float(start_pts * time_base),
                time_base=time_base,
            )
            if info.num_frames <= 0 or info.width <= 0 or info.height <= 0:
                raise CorruptVideoError(f"{path}: empty stream ({info.num_frames} frames, {info.width}x{info.height})")
            if check_end:
                _check_stream_end(container, stream, info)
            return info
    except CorruptVideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise CorruptVideoError(f"{path}: cannot be read ({error})") from error


def _check_stream_end(container, stream, info: VideoInfo) -> None:
    last_time = info.frame_time(info.num_frames - 1)
    container.seek(_to_pts(last_time, info), stream=stream, backward=True, any_frame=False)
    last_seen = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            time = float(packet.pts * info.time_base)
            last_seen = time if last_seen is None else max(last_seen, time)
    if last_seen is None or last_seen < last_time - 0.5 / info.fps:
        reached = "no packet" if last_seen is None else f"{last_seen:.3f}s"
        raise CorruptVideoError(
            f"{info.path}: truncated: the header announces {info.num_frames} frames (last at {last_time:.3f}s) "
            f"but the packets end at {reached}"
        )


def _to_pts(seconds: float, info: VideoInfo) -> int:
    return int(Fraction(seconds).limit_denominator(10**9) / info.time_base)


def read_keyframes(path: str | os.PathLike, fractions: tuple[float, ...] = (0.25, 0.5, 0.75)) -> list[np.ndarray]:
    """Decode only the keyframes nearest to a few positions of the video (cheap: no inter frame is decoded)."""
    import av

    info = probe_video(path, check_end=False)
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        for fraction in fractions:
            container.seek(
                _to_pts(info.frame_time(int(fraction * (info.num_frames - 1))), info), stream=stream, backward=True
            )
            frame = next(container.decode(stream), None)
            if frame is not None:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames


# --------------------------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------------------------
class VideoBackendError(RuntimeError):
    """The video backend asked for cannot decode on this machine."""


class BackendChoice(NamedTuple):
    """The backend `decode_clip` uses when none is given, and why, in one line: `SURGICAL_WM_VIDEO_BACKEND=<name>`
    when forced; the cause and the fix when PyAV stands in for torchcodec."""

    name: str
    reason: str


@functools.cache
def torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode on this machine (one line naming the cause and the fix), or None when it can.

    Importing torchcodec proves nothing: it loads its FFmpeg-linked libraries (libtorchcodec_core{4..9}, which need
    the system's libavutil, libavcodec, ...) only when the first decoder is created. So this creates one, on a
    two-frame clip written in memory with PyAV, and decodes a frame. Checked once per process.
    """
    if importlib.util.find_spec("torchcodec") is None:
        return f"torchcodec is not installed; pip install torchcodec and {_FFMPEG_FIX} to decode with torchcodec"
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as error:  # e.g. a torchcodec built for another torch
        fix = f"install the torchcodec release matching torch {torch.__version__}"
        return f"torchcodec cannot be imported ({_first_line(error)}); {fix}"
    clip = _tiny_clip()
    try:
        decoder = VideoDecoder(clip, seek_mode="approximate")
        decoder[len(decoder) - 1]
    except Exception as error:
        return _describe_torchcodec_failure(error)
    return None


def _describe_torchcodec_failure(error: Exception) -> str:
    message = str(error)
    if not message.startswith("Could not load libtorchcodec"):
        return f"torchcodec cannot decode a test clip ({type(error).__name__}: {_first_line(error)})"
    # The message holds one traceback per FFmpeg major version torchcodec tried; their last lines are the loader's
    # errors, e.g. "OSError: libavutil.so.59: cannot open shared object file: No such file or directory" (torch's
    # own "Could not load this library: <path>" wrappers say nothing more).
    causes = [
        match.group(1)
        for match in re.finditer(r"^\w*Error: (.+)$", message, flags=re.MULTILINE)
        if not match.group(1).startswith("Could not load this library")
    ]
    # A library that is there but fails to load (undefined symbol, ...) is the one that matters.
    present = [cause for cause in causes if "cannot open shared object file" not in cause]
    if present:
        return (
            f"torchcodec cannot load against this machine's FFmpeg ({present[0]}); install the torchcodec release "
            f"matching torch {torch.__version__} and FFmpeg"
        )
    cause = causes[0] if causes else _first_line(error)
    return f"torchcodec cannot load FFmpeg's shared libraries ({cause}); {_FFMPEG_FIX} to decode with torchcodec"


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _tiny_clip() -> bytes:
    """Two 16x16 MPEG-4 frames in an MP4, written with PyAV (bundled FFmpeg), for torchcodec to decode."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for value in (0, 255):
            image = np.full((16, 16, 3), value, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


@functools.cache
def select_backend() -> BackendChoice:
    """The backend `decode_clip` uses when none is given: torchcodec when it really decodes here, PyAV otherwise.

    `SURGICAL_WM_VIDEO_BACKEND=pyav|torchcodec` forces one; forcing torchcodec where it cannot decode raises
    `VideoBackendError` here, with the cause and the fix. The fallback to PyAV logs one warning. Decided once per
    process: forked DataLoader workers inherit the decision (and the libraries it loaded), spawned ones decide once
    each; `ClipTransform` and `DecoderCache` resolve it in the parent and hand workers the backend's name.

    Raises:
        ValueError: `SURGICAL_WM_VIDEO_BACKEND` is set to something else.
        VideoBackendError: it forces torchcodec and torchcodec cannot decode.
    """
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced and forced not in BACKENDS:
        raise ValueError(
            f"{BACKEND_ENV}={os.environ[BACKEND_ENV]!r} is not a video backend: use one of {', '.join(BACKENDS)}, "
            "or unset it to use torchcodec when it loads and PyAV otherwise"
        )
    if forced == "pyav":
        return BackendChoice("pyav", f"{BACKEND_ENV}=pyav")
    problem = torchcodec_problem()
    if forced == "torchcodec":
        if problem is not None:
            raise VideoBackendError(f"{BACKEND_ENV}=torchcodec, but {problem}; or unset it to decode with PyAV")
        return BackendChoice("torchcodec", f"{BACKEND_ENV}=torchcodec")
    if problem is None:
        return BackendChoice("torchcodec", "torchcodec loads FFmpeg's shared libraries")
    logger.warning("decoding video with PyAV: %s. %s=pyav silences this warning.", problem, BACKEND_ENV)
    return BackendChoice("pyav", problem)


def default_backend() -> str:
    """The name of the backend `select_backend` chooses: "torchcodec" or "pyav"."""
    return select_backend().name


def resolve_backend(backend: str | None) -> str:
    """The backend to decode with: `backend` when given and usable (else a named error), or `select_backend`'s
    choice for None."""
    if backend is None:
        return select_backend().name
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
    if backend == "torchcodec" and (problem := torchcodec_problem()) is not None:
        raise VideoBackendError(f"the torchcodec video backend was asked for, but {problem}")
    return backend


class _PyAVHandle:
    def __init__(self, path: str, threads: bool = True):
        import av

        self.info = probe_video(path, check_end=False)
        self.container = av.open(path)
        self.stream = self.container.streams.video[0]
        if threads:
            self.stream.thread_type = "AUTO"

    def close(self):
        self.container.close()


class _TorchCodecHandle:
    def __init__(self, path: str):
        from torchcodec.decoders import VideoDecoder

        self.info = probe_video(path, check_end=False)
        # approximate: no scan of the whole file on open; frames are requested by time, which is exact.
        self.decoder = VideoDecoder(path, seek_mode="approximate", dimension_order="NHWC", num_ffmpeg_threads=0)

    def close(self):
        self.decoder = None


def open_decoder(path: str | os.PathLike, backend: str | None = None):
    backend = resolve_backend(backend)
    return _TorchCodecHandle(str(path)) if backend == "torchcodec" else _PyAVHandle(str(path))


def _decode_torchcodec(handle: _TorchCodecHandle, indices: list[int]) -> torch.Tensor:
    info = handle.info
    # Ask for the middle of each frame's display interval: robust to timestamp rounding in either direction.
    seconds = [info.frame_time(index) + 0.5 / info.fps for index in indices]
    try:
        frames = handle.decoder.get_frames_played_at(seconds=seconds).data
    except (RuntimeError, IndexError, ValueError) as error:
        raise FrameUnavailableError(f"{info.path}: cannot decode frames {indices} ({error})") from error
    return frames.contiguous()


def _decode_pyav(handle: _PyAVHandle, indices: list[int]) -> torch.Tensor:
    info = handle.info
    targets = sorted(set(indices))
    # Frames far apart are reached by a new seek rather than by decoding everything between them.
    gap = max(1, int(round(_RESEEK_GAP_SECONDS * info.fps)))
    groups, group = [], [targets[0]]
    for index in targets[1:]:
        if index - group[-1] > gap:
            groups.append(group)
            group = []
        group.append(index)
    groups.append(group)
    picked = {}
    for group in groups:
        picked.update(_decode_pyav_run(handle, group))
    arrays = {index: frame.to_ndarray(format="rgb24") for index, frame in picked.items()}
    return torch.from_numpy(np.stack([arrays[index] for index in indices]))


def _decode_pyav_run(handle: _PyAVHandle, targets: list[int]) -> dict:
    """Seek to the keyframe before `targets[0]`, decode forward to `targets[-1]`, pick frames by presentation time."""
    import av

    info, container, stream = handle.info, handle.container, handle.stream
    target_times = [info.frame_time(index) + 0.5 / info.fps for index in targets]
    back_off = 0.0
    while True:
        seek_time = max(info.frame_time(targets[0]) - back_off, info.start_time)
        container.seek(_to_pts(seek_time, info), stream=stream, backward=True, any_frame=False)
        picked, previous, overshoot, position = {}, None, False, 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                time = float(frame.pts * info.time_base)
                if previous is None and time > target_times[0]:
                    overshoot = True  # the seek landed after the first target: seek further back
                    break
                while position < len(targets) and time > target_times[position]:
                    picked[targets[position]] = previous  # the frame on screen at that time
                    position += 1
                if position == len(targets):
                    break
                previous = frame
        except av.error.FFmpegError as error:
            message = f"{info.path}: decoding failed near frame {targets[position]} ({error})"
            raise FrameUnavailableError(message) from error
        if overshoot and seek_time > info.start_time:
            back_off = max(2 * back_off, 1.0)
            continue
        break
    # The stream ended: its last frame stays on screen until the end of the video.
    end_time = info.frame_time(info.num_frames)
    while position < len(targets) and previous is not None and target_times[position] < end_time:
        picked[targets[position]] = previous
        position += 1
    missing = [index for index in targets if picked.get(index) is None]
    if missing:
        raise FrameUnavailableError(f"{info.path}: frames {missing} could not be decoded")
    return picked


_DECODERS = {"torchcodec": _decode_torchcodec, "pyav": _decode_pyav}


# --------------------------------------------------------------------------------------------------------------------
# Per-process cache of open decoders
# --------------------------------------------------------------------------------------------------------------------
_INHERITED_HANDLES: list = []  # decoders a forked process inherited: kept referenced, never used or closed


class DecoderCache:
    """A bounded LRU of open decoders owned by one process; evicted decoders are closed.

    Pickling it (DataLoader workers under spawn) or forking (workers under fork) leaves the copy empty: each worker
    opens its own decoders.
    """

    def __init__(self, backend: str | None = None, max_open: int = 4):
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.backend = resolve_backend(backend)
        self.max_open = max_open
        self._handles: collections.OrderedDict = collections.OrderedDict()
        self._pid = os.getpid()

    def get(self, path: str | os.PathLike):
        if self._pid != os.getpid():
            # Inherited through fork: never use the parent's decoders, and never free them here either (their
            # destructors would wait for FFmpeg threads that only exist in the parent, and hang).
            _INHERITED_HANDLES.append(self._handles)
            self._handles = collections.OrderedDict()
            self._pid = os.getpid()
        path = str(path)
        handle = self._handles.pop(path, None)
        if handle is None:
            handle = open_decoder(path, self.backend)
            while len(self._handles) >= self.max_open:
                _, evicted = self._handles.popitem(last=False)
                evicted.close()
        self._handles[path] = handle
        return handle

    def close(self) -> None:
        while self._handles:
            _, handle = self._handles.popitem()
            handle.close()

    def __len__(self) -> int:
        return len(self._handles)

    def __getstate__(self):
        return {"backend": self.backend, "max_open": self.max_open}

    def __setstate__(self, state):
        self.__init__(**state)


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------
def decode_clip(
    path: str | os.PathLike,
    frame_indices,
    backend: str | None = None,
    cache: DecoderCache | None = None,
) -> torch.Tensor:
    """Decode exactly the frames `frame_indices` (frame numbers at the video's own fps) as uint8 `[T, H, W, 3]`.

    Args:
        path: the video file.
        frame_indices: frame numbers, any order, repeats allowed.
        backend: "torchcodec" or "pyav"; by default torchcodec when it loads.
        cache: a `DecoderCache` to keep decoders open between calls (its backend is used).

    Raises:
        FrameUnavailableError: an index is outside the video or its frame cannot be decoded.
        CorruptVideoError: the file cannot be opened.
    """
    indices = [int(index) for index in frame_indices]
    if not indices:
        raise ValueError("frame_indices is empty")
    if cache is not None:
        if backend is not None and resolve_backend(backend) != cache.backend:
            raise ValueError(f"backend {backend!r} differs from the cache's backend {cache.backend!r}")
        handle, backend = cache.get(path), cache.backend
    else:
        backend = resolve_backend(backend)
        handle = open_decoder(path, backend)
    try:
        info = handle.info
        outside = [index for index in indices if not 0 <= index < info.num_frames]
        if outside:
            raise FrameUnavailableError(f"{path}: frames {outside} are outside the video's {info.num_frames} frames")
        return _DECODERS[backend](handle, indices)
    finally:
        if cache is None:
            handle.close()

"""A machine without FFmpeg's shared libraries, as torchcodec sees it, in every Python process started with this
folder first on PYTHONPATH (a training subprocess, spawned DataLoader workers).

There, torchcodec imports fine and only fails when its first decoder loads `libtorchcodec_core{N}.so`, for each FFmpeg
major version N it supports: `torch.ops.load_library` calls dlopen, which cannot find `libavutil.so.{N + 52}`, and
torch re-raises that as "Could not load this library: <path>". This module makes `torch.ops.load_library` fail in
exactly that way for torchcodec's FFmpeg-linked libraries only, so torchcodec's own loader runs and raises its real
"Could not load libtorchcodec" error; PyAV (bundled FFmpeg), torchvision and torchcodec's image library load as usual.
It works the same on a machine that has FFmpeg (CI installs it).

In-process, tests use `no_ffmpeg.simulate()` instead, which wraps `torch.ops.load_library` with `missing_ffmpeg`.
"""

import importlib.abc
import os
import re
import sys


# torchcodec's libraries that link FFmpeg: one core and one custom-ops library per FFmpeg major version.
_FFMPEG_LINKED = re.compile(r"^libtorchcodec_(?:core|custom_ops)(\d+)\.")


def missing_ffmpeg(load_library):
    """`load_library` (torch.ops.load_library), except that torchcodec's FFmpeg-linked libraries fail to load."""

    def load_library_without_ffmpeg(path):
        match = _FFMPEG_LINKED.match(os.path.basename(str(path)))
        if match is None:
            return load_library(path)
        # FFmpeg N ships libavutil N + 52 (FFmpeg 7: libavutil.so.59), the first FFmpeg library dlopen looks for.
        libavutil = f"libavutil.so.{int(match.group(1)) + 52}"
        dlopen_error = OSError(f"{libavutil}: cannot open shared object file: No such file or directory")
        raise OSError(f"Could not load this library: {path}") from dlopen_error  # as torch._ops._Ops.load_library

    load_library_without_ffmpeg.simulates_missing_ffmpeg = True
    return load_library_without_ffmpeg


class _BeforeTorchcodec(importlib.abc.MetaPathFinder):
    """Patches torch when torchcodec is first imported: torch is not imported at startup for nothing, and torchcodec
    (which imports torch first) tries its FFmpeg libraries already at import time."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchcodec":
            sys.meta_path.remove(self)
            import torch

            torch.ops.load_library = missing_ffmpeg(torch.ops.load_library)
        return None  # the regular finders import torchcodec


if __name__ == "sitecustomize":  # run by `site` at startup; imported as no_ffmpeg.sitecustomize it changes nothing
    sys.meta_path.insert(0, _BeforeTorchcodec())

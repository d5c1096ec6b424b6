"""Simulate a machine without FFmpeg's shared libraries for torchcodec, in this process or in subprocesses.

    with no_ffmpeg.simulate():                                  # this process (and the workers it forks)
        ...
    train(args, env={"PYTHONPATH": no_ffmpeg.pythonpath()})     # a subprocess (and the workers it spawns)

Both make torchcodec's FFmpeg-linked libraries fail to load as dlopen fails there (see `sitecustomize.py`), on a
machine with or without FFmpeg.
"""

import contextlib
import os

import pytest

from .sitecustomize import missing_ffmpeg


FOLDER = os.path.dirname(os.path.abspath(__file__))


def pythonpath() -> str:
    """A PYTHONPATH that puts the simulation's sitecustomize first."""
    return os.pathsep.join([FOLDER, *filter(None, [os.environ.get("PYTHONPATH")])])


def forget_backend_choice() -> None:
    """Make the next decode decide again (the choice is cached once per process)."""
    from dataset_surgvu import video

    video.select_backend.cache_clear()
    video.torchcodec_problem.cache_clear()


@contextlib.contextmanager
def simulate():
    """In this process: torchcodec cannot load FFmpeg's shared libraries, no backend is forced, nothing is decided."""
    import torch
    import torchcodec.decoders  # noqa: F401  (imported for real first: see below)
    from torchcodec._internally_replaced_utils import load_core_libraries

    from dataset_surgvu import video

    # torchcodec binds its FFmpeg ops at import time when the libraries load: importing it under the simulation on a
    # machine with FFmpeg would leave it half-bound for the tests that run after this one.
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(torch.ops, "load_library", missing_ffmpeg(torch.ops.load_library))
        monkeypatch.delenv(video.BACKEND_ENV, raising=False)
        load_core_libraries.cache_clear()  # with FFmpeg, a successful load is memoized
        forget_backend_choice()
        try:
            yield
        finally:
            forget_backend_choice()  # later tests decide for the real machine

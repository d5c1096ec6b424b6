"""Video decoding on a machine without FFmpeg's shared libraries: torchcodec imports there but cannot load them, so
PyAV (bundled FFmpeg) decodes, with one warning naming the cause and the fix.

The machine is simulated (see tests/no_ffmpeg/): torchcodec's FFmpeg-linked libraries fail to load as dlopen fails
there, so torchcodec's own loader raises its real error, also on machines that have FFmpeg.
"""

import logging
import os

import pytest
import torch

import no_ffmpeg
from conftest import train
from dataset_surgvu import ClipTransform, DecoderCache, decode_clip, load_surgvu, probe_video
from dataset_surgvu import video
from dataset_surgvu.video import BACKEND_ENV, VideoBackendError


# torchcodec is the `video` extra: without it there is nothing to fall back from.
pytest.importorskip("torchcodec.decoders")

CAUSE = "cannot load FFmpeg's shared libraries (libavutil.so."
FIX = "apt-get install ffmpeg"


@pytest.fixture()
def without_ffmpeg():
    with no_ffmpeg.simulate():
        yield


@pytest.fixture()
def video_path(surgvu_sample):
    root, manifest = surgvu_sample
    part = next(part for case in manifest["cases"].values() for part in case["parts"] if not part["corrupt"])
    return root / part["path"]


def fallback_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == video.__name__ and r.levelno == logging.WARNING]


def test_torchcodec_fails_as_without_ffmpeg(without_ffmpeg):
    """The simulation walks torchcodec's real loader up to its real error."""
    from torchcodec.decoders import VideoDecoder

    with pytest.raises(RuntimeError, match="Could not load libtorchcodec") as raised:
        VideoDecoder(video._tiny_clip())
    assert "libavutil.so.59: cannot open shared object file: No such file or directory" in str(raised.value)


def test_the_simulation_gives_the_reason_this_machine_gives():
    real = video.torchcodec_problem.__wrapped__()
    with no_ffmpeg.simulate():
        simulated = video.torchcodec_problem()
    assert simulated is not None and CAUSE in simulated and FIX in simulated
    if real is not None and "cannot open shared object file" in real:  # this machine has no FFmpeg either
        assert simulated == real


def test_an_ffmpeg_that_is_there_but_does_not_load_is_the_reason_given():
    """With FFmpeg 6 installed but a torchcodec built for another torch, the FFmpeg 6 error is the one that matters."""
    message = "\n".join([
        "Could not load libtorchcodec. Likely causes:",
        "FFmpeg version 7:",
        "OSError: libavutil.so.59: cannot open shared object file: No such file or directory",
        "OSError: Could not load this library: /site-packages/torchcodec/libtorchcodec_core7.so",
        "FFmpeg version 6:",
        "OSError: /site-packages/torchcodec/libtorchcodec_core6.so: undefined symbol: _ZN3c104impl3cow",
        "OSError: Could not load this library: /site-packages/torchcodec/libtorchcodec_core6.so",
    ])
    reason = video._describe_torchcodec_failure(RuntimeError(message))
    assert "undefined symbol: _ZN3c104impl3cow" in reason and f"torch {torch.__version__}" in reason
    assert "libavutil.so.59" not in reason


def test_falls_back_to_pyav_and_logs_once_with_cause_and_fix(without_ffmpeg, video_path, caplog):
    with caplog.at_level(logging.WARNING, logger=video.__name__):
        name, reason = video.select_backend()
        decode_clip(video_path, [0, 1])
        DecoderCache().close()
        ClipTransform(crop_size=32).close()
        assert video.default_backend() == "pyav"
    assert name == "pyav" and CAUSE in reason and FIX in reason
    warnings = fallback_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "PyAV" in warnings[0] and CAUSE in warnings[0] and FIX in warnings[0] and BACKEND_ENV in warnings[0]


def test_forced_torchcodec_fails_clearly_when_the_backend_is_resolved(without_ffmpeg, monkeypatch, video_path):
    monkeypatch.setenv(BACKEND_ENV, "torchcodec")
    for resolve in (video.select_backend, ClipTransform, lambda: decode_clip(video_path, [0])):
        with pytest.raises(VideoBackendError) as raised:
            resolve()
        message = str(raised.value)
        assert f"{BACKEND_ENV}=torchcodec" in message and CAUSE in message and FIX in message
        assert "Traceback" not in message  # one line, not torchcodec's traceback wall
    monkeypatch.delenv(BACKEND_ENV)  # asked for explicitly: the same clear error
    with pytest.raises(VideoBackendError, match=FIX):
        decode_clip(video_path, [0], backend="torchcodec")


def test_forced_pyav_decodes_without_trying_torchcodec(without_ffmpeg, monkeypatch, video_path, caplog):
    monkeypatch.setenv(BACKEND_ENV, "PyAV ")  # case and spaces do not matter
    with caplog.at_level(logging.WARNING, logger=video.__name__):
        assert video.select_backend() == ("pyav", f"{BACKEND_ENV}=pyav")
        assert decode_clip(video_path, [3]).shape[0] == 1
    assert video.torchcodec_problem.cache_info().misses == 0
    assert fallback_warnings(caplog) == []


@pytest.mark.parametrize("value", ["ffmpeg", "torch codec"])
def test_an_invalid_backend_value_is_a_clear_error(without_ffmpeg, monkeypatch, value):
    monkeypatch.setenv(BACKEND_ENV, value)
    with pytest.raises(ValueError, match=f"{BACKEND_ENV}='{value}' is not a video backend: use one of torchcodec"):
        video.select_backend()


def test_decode_clip_gives_pyav_frames(without_ffmpeg, video_path):
    info = probe_video(video_path)
    indices = [info.num_frames - 1, 0, 30, 30]
    frames = decode_clip(video_path, indices)
    assert frames.shape == (4, info.height, info.width, 3) and frames.dtype == torch.uint8
    cache = DecoderCache("pyav")
    torch.testing.assert_close(frames, decode_clip(video_path, indices, cache=cache), rtol=0, atol=0)
    assert isinstance(cache.get(video_path), video._PyAVHandle)
    cache.close()


class _Clips(torch.utils.data.Dataset):
    """Decoded clips, with what decoded them: the worker's pid, its backend and how often it chose one."""

    def __init__(self, split, transform=None):
        self.split, self.transform = split, transform

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index):
        row = self.split[index]
        if self.transform is None:  # the worker chooses the backend itself
            pixels = decode_clip(row["video_path"], row["frame_indices"]).float()
            backend = video.select_backend().name
        else:
            pixels = self.transform(row)["pixel_values_videos"]
            backend = "pyav" if isinstance(self.transform.cache.get(row["video_path"]), video._PyAVHandle) else "?"
        choices = video.select_backend.cache_info().misses
        return {"pixels": pixels, "pid": os.getpid(), "backend": backend, "choices": choices}


def _load(loader) -> tuple[list[dict], set[int]]:
    """Every item of a batch_size=1 loader, and the pids of the processes that made them."""
    items = [{key: value[0] for key, value in batch.items()} for batch in loader]
    return items, {int(item["pid"]) for item in items}


@pytest.fixture()
def split(surgvu_sample, tmp_path):
    root, _ = surgvu_sample
    return load_surgvu(root, cache_dir=tmp_path / "cache")["train"].select(range(6))


def test_clip_transform_in_forked_workers_decodes_with_pyav(without_ffmpeg, split):
    transform = ClipTransform(crop_size=32, max_open_decoders=2)
    assert transform.backend == "pyav"
    loader = torch.utils.data.DataLoader(
        _Clips(split, transform), batch_size=1, num_workers=2, multiprocessing_context="fork", timeout=120
    )
    items, pids = _load(loader)
    assert len(items) == 6 and len(pids) == 2 and os.getpid() not in pids
    assert [item["backend"] for item in items] == ["pyav"] * 6
    expected = transform(split[5])["pixel_values_videos"]
    torch.testing.assert_close(items[5]["pixels"], expected)
    transform.close()


def _workers_choose(split, context: str) -> list[dict]:
    loader = torch.utils.data.DataLoader(
        _Clips(split), batch_size=1, num_workers=2, multiprocessing_context=context, timeout=300
    )
    items, pids = _load(loader)
    assert len(items) == 6 and len(pids) == 2 and os.getpid() not in pids
    return items


def test_forked_workers_that_choose_choose_pyav_once_each(without_ffmpeg, split):
    assert video.select_backend.cache_info().misses == 0  # nothing decided in the parent: each worker decides
    items = _workers_choose(split, "fork")
    assert {(item["backend"], int(item["choices"])) for item in items} == {("pyav", 1)}
    reference = decode_clip(split[0]["video_path"], split[0]["frame_indices"], backend="pyav").float()
    torch.testing.assert_close(items[0]["pixels"], reference)


@pytest.mark.slow
def test_spawned_workers_choose_pyav_once_each(without_ffmpeg, split, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", no_ffmpeg.pythonpath())  # a spawned worker is a new Python: sitecustomize
    items = _workers_choose(split, "spawn")
    assert {(item["backend"], int(item["choices"])) for item in items} == {("pyav", 1)}


@pytest.mark.slow
def test_training_runs_without_ffmpeg(train_inputs, tmp_path):
    args = [*train_inputs, "--num_workers", "2", "--output_dir", str(tmp_path / "run"), "--num_epochs", "1",
            "--max_train_steps", "2", "--checkpointing_steps", "100"]
    result = train(args, env={"PYTHONPATH": no_ffmpeg.pythonpath(), BACKEND_ENV: ""})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    fallbacks = [line for line in output.splitlines() if "decoding video with PyAV" in line]
    assert len(fallbacks) == 1, fallbacks  # once, in the main process, not once per worker
    assert CAUSE in fallbacks[0] and FIX in fallbacks[0]
    assert "Could not load libtorchcodec" not in output  # no traceback wall
    assert (tmp_path / "run").is_dir()

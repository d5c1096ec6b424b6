"""Exact clip decoding (torchcodec and PyAV) and the V-JEPA 2 clip transform."""

import logging
import pickle

import av
import numpy as np
import pytest
import torch

import no_ffmpeg
from dataset_surgvu import (
    ClipTransform,
    DecoderCache,
    FrameUnavailableError,
    SurgVUClips,
    VideoBackendError,
    decode_clip,
    load_surgvu,
    probe_video,
)
from dataset_surgvu import video as video_module
from dataset_surgvu.transforms import vjepa2_preprocess


# Whether torchcodec decodes here, whatever SURGICAL_WM_VIDEO_BACKEND says: both backends are tested where both work.
TORCHCODEC_PROBLEM = video_module.torchcodec_problem()
needs_torchcodec = pytest.mark.skipif(TORCHCODEC_PROBLEM is not None, reason=str(TORCHCODEC_PROBLEM))
BACKENDS = ["pyav", pytest.param("torchcodec", marks=needs_torchcodec)]


def _sequential(path, indices):
    """A plain PyAV decode from the first frame, counting frames."""
    wanted, frames = set(indices), {}
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number in wanted:
                frames[number] = frame.to_ndarray(format="rgb24")
            if number >= max(indices):
                break
    return np.stack([frames[index] for index in indices])


def _videos(root, manifest):
    return [
        root / part["path"] for case in manifest["cases"].values() for part in case["parts"] if not part["corrupt"]
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sample", ["surgvu_sample", "surgvu_sample_30fps"])
def test_frames_identical_to_a_sequential_decode(sample, backend, request):
    root, manifest = request.getfixturevalue(sample)
    rng = np.random.default_rng(0)
    for path in _videos(root, manifest)[:3]:
        info = probe_video(path)
        if sample == "surgvu_sample_30fps":
            assert info.start_time > 0  # the first timestamp is not zero
        last = info.num_frames - 1
        clip_start = int(rng.integers(1, last - 60))
        requests = [
            [0, 1, 2],
            list(range(clip_start, clip_start + 8 * 7, 7)),
            [last, last - 3, clip_start, clip_start],  # any order, repeats
            [last - 1, last],
        ]
        every = sorted({index for indices in requests for index in indices})
        reference = dict(zip(every, _sequential(path, every)))
        for indices in requests:
            frames = decode_clip(path, indices, backend=backend)
            assert frames.dtype == torch.uint8 and frames.shape == (len(indices), info.height, info.width, 3)
            expected = np.stack([reference[index] for index in indices])
            np.testing.assert_array_equal(frames.numpy(), expected, err_msg=f"{path} {indices}")


@needs_torchcodec
def test_backends_agree_through_a_cache(surgvu_sample_30fps):
    root, manifest = surgvu_sample_30fps
    caches = {backend: DecoderCache(backend, max_open=2) for backend in ("pyav", "torchcodec")}
    for path in _videos(root, manifest):
        indices = [5, 12, 20, 27]
        decoded = {backend: decode_clip(path, indices, cache=cache) for backend, cache in caches.items()}
        assert torch.equal(decoded["pyav"], decoded["torchcodec"])
    for cache in caches.values():
        assert len(cache) == 2
        cache.close()


class _CountingContainer:
    """Wraps a PyAV container and counts the frames it decodes."""

    def __init__(self, container):
        self.container, self.decoded = container, 0

    def seek(self, *args, **kwargs):
        return self.container.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.decoded += 1
            yield frame

    def close(self):
        self.container.close()


def test_a_clip_late_in_a_video_is_not_decoded_from_the_start(surgvu_sample_30fps):
    root, manifest = surgvu_sample_30fps
    path = max(_videos(root, manifest), key=lambda p: probe_video(p).num_frames)
    info = probe_video(path)
    cache = DecoderCache("pyav", max_open=1)
    handle = cache.get(path)
    handle.container = _CountingContainer(handle.container)
    first = info.num_frames - 60
    indices = list(range(first, first + 8 * 7, 7))
    frames = decode_clip(path, indices, cache=cache)
    gop = 48  # the sample's keyframe interval
    assert handle.container.decoded <= gop + indices[-1] - indices[0] + 1 + 8  # a few frames of reorder delay
    assert handle.container.decoded < first
    np.testing.assert_array_equal(frames.numpy(), _sequential(path, indices))
    cache.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_outside_the_video_raises_a_named_error(backend, surgvu_sample):
    root, manifest = surgvu_sample
    path = _videos(root, manifest)[0]
    count = probe_video(path).num_frames
    with pytest.raises(FrameUnavailableError, match=str(count)):
        decode_clip(path, [count - 1, count], backend=backend)
    with pytest.raises(FrameUnavailableError):
        decode_clip(path, [-1], backend=backend)


def test_default_backend_falls_back_to_pyav_with_a_log(caplog):
    with no_ffmpeg.simulate(), caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        assert video_module.default_backend() == "pyav"
    assert "decoding video with PyAV" in caplog.text and "apt-get install ffmpeg" in caplog.text


def test_resolve_backend_names_the_choice_or_refuses():
    assert video_module.resolve_backend("pyav") == "pyav"
    with no_ffmpeg.simulate():
        assert video_module.resolve_backend(None) == "pyav"
        with pytest.raises(VideoBackendError, match="torchcodec video backend was asked for"):
            video_module.resolve_backend("torchcodec")
    with pytest.raises(ValueError, match="unknown video backend 'ffmpeg'"):
        video_module.resolve_backend("ffmpeg")


def test_decoder_cache_is_bounded_closes_evicted_and_is_not_shared(surgvu_sample):
    root, manifest = surgvu_sample
    paths = _videos(root, manifest)
    cache = DecoderCache("pyav", max_open=2)
    handles = [cache.get(path) for path in paths[:3]]
    assert len(cache) == 2
    with pytest.raises(AssertionError, match="not open"):  # the evicted decoder was closed
        next(handles[0].container.demux())
    copy = pickle.loads(pickle.dumps(cache))
    assert len(copy) == 0 and copy.max_open == 2
    transform = ClipTransform(crop_size=32, backend="pyav")
    transform.cache.get(paths[0])
    assert pickle.loads(pickle.dumps(transform))._cache is None
    cache.close()
    transform.close()


def _processor(crop_size):
    from transformers import VJEPA2VideoProcessor

    return VJEPA2VideoProcessor(crop_size=crop_size)


@pytest.mark.parametrize("crop_size", [64, 256])
def test_preprocessing_matches_the_vjepa2_video_processor(crop_size):
    generator = torch.Generator().manual_seed(0)
    videos = torch.randint(0, 256, (2, 4, 3, 165, 268), dtype=torch.uint8, generator=generator)
    processor = _processor(crop_size)
    ours_batched = vjepa2_preprocess(videos, crop_size)
    assert ours_batched.shape == (2, 4, 3, crop_size, crop_size) and ours_batched.dtype == torch.float32
    reference_list = processor(list(videos), return_tensors="pt")["pixel_values_videos"]
    reference_batched = processor(videos, return_tensors="pt")["pixel_values_videos"]
    torch.testing.assert_close(ours_batched, reference_list, atol=1e-3, rtol=0)
    torch.testing.assert_close(ours_batched, reference_batched, atol=1e-3, rtol=0)
    torch.testing.assert_close(vjepa2_preprocess(videos[1], crop_size), reference_list[1], atol=1e-3, rtol=0)


def test_clip_transform_outputs_and_crop(surgvu_sample, tmp_path):
    root, _ = surgvu_sample
    dataset = load_surgvu(root, cache_dir=tmp_path / "cache")
    row = dataset["train"][3]
    transform = ClipTransform(crop_size=64)
    item = transform(row)
    assert item["pixel_values_videos"].shape == (8, 3, 64, 64) and item["pixel_values_videos"].dtype == torch.float32
    assert item["actions"].shape == (8, 56) and item["actions"].dtype == torch.float32
    assert item["tasks"].dtype == torch.int64 and item["tools"].shape == (8, 12)
    assert item["case_id"] == row["case_id"]
    top, left, height, width = row["crop_box"]
    frames = decode_clip(row["video_path"], row["frame_indices"], backend="pyav")
    cropped = frames[:, top : top + height, left : left + width].permute(0, 3, 1, 2)
    reference = _processor(64)(cropped, return_tensors="pt")["pixel_values_videos"][0]
    torch.testing.assert_close(item["pixel_values_videos"], reference, atol=1e-3, rtol=0)
    uncropped = _processor(64)(frames.permute(0, 3, 1, 2), return_tensors="pt")["pixel_values_videos"][0]
    assert not torch.allclose(item["pixel_values_videos"], uncropped, atol=1e-2)
    transform.close()


def test_clip_transform_in_dataloader_workers(surgvu_sample, tmp_path):
    root, _ = surgvu_sample
    dataset = load_surgvu(root, cache_dir=tmp_path / "cache")["train"].select(range(6))
    transform = ClipTransform(crop_size=32, max_open_decoders=2)
    transform(dataset[0])  # a decoder opened in the parent must not reach the workers
    loader = torch.utils.data.DataLoader(SurgVUClips(dataset, transform), batch_size=3, num_workers=2, timeout=120)
    batches = list(loader)
    assert [batch["pixel_values_videos"].shape for batch in batches] == [(3, 8, 3, 32, 32)] * 2
    expected = torch.stack([transform(dataset[index])["pixel_values_videos"] for index in range(3)])
    torch.testing.assert_close(batches[0]["pixel_values_videos"], expected)
    transform.close()

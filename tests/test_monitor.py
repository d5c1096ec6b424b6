"""The live surprise monitor: streaming against recomputation, the script's CSV / JSON with a calibrated threshold,
a video that grows while it is followed, and a bad file."""

import csv
import json
import os
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT
from monitor import main as monitor_main
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.surprise import (
    SurpriseMonitor,
    context_start,
    video_steps,
    window_surprise,
)


def random_world_model(make_tiny_config, **overrides) -> SurgicalWorldModel:
    torch.manual_seed(0)
    model = SurgicalWorldModel(make_tiny_config(**overrides)).eval()
    torch.nn.init.normal_(model.predictor.output_proj.weight, std=0.2)  # zero at initialisation: predicts no change
    return model


@pytest.mark.parametrize("overrides", [{}, {"action_dropout": 0.5, "action_conditioning": "adaln"}])
def test_streaming_equals_recomputing_each_context(make_tiny_config, overrides):
    model = random_world_model(make_tiny_config, **overrides)
    if model.predictor.null_action is not None:
        torch.nn.init.normal_(model.predictor.null_action)
    generator = torch.Generator().manual_seed(1)
    latents = F.layer_norm(torch.randn(23, model.config.tokens_per_step, model.config.latent_dim,
                                       generator=generator), (model.config.latent_dim,))
    window = 6
    monitor = SurpriseMonitor(model, window)
    streamed = [monitor.push(latent) for latent in latents]
    assert streamed[0] is None
    recomputed = window_surprise(model, latents, window)
    torch.testing.assert_close(torch.tensor(streamed[1:]), recomputed, atol=1e-5, rtol=0)
    # The contexts moved on: late steps are predicted from at most `window` steps, not from the whole stream.
    starts = [context_start(step, window) for step in range(1, 23)]
    assert max(starts) > 0 and all(0 < step - start <= window for step, start in zip(range(1, 23), starts))
    whole = window_surprise(model, latents, len(latents))
    assert (whole - recomputed).abs().max() > 1e-3
    # Step 20 as the evaluation scores the last step of a clip: `predict` over its context, unknown actions.
    start = context_start(20, window)
    actions = None
    if model.config.action_dropout:
        actions = torch.full((1, 20 - start, model.config.action_dim), float("nan"))
    with torch.no_grad():
        predicted = model.predict(latents[None, start:20], actions)[:, -1:]
    assert streamed[20] == pytest.approx(float((predicted - latents[None, 20:21]).abs().mean()), abs=1e-5)


def write_video(path, frames: np.ndarray, fps: int = 30) -> None:
    """An MPEG-4 video without B-frames: a frame's encoding depends on the frames before it only, so a video of the
    first frames of another decodes to the same pictures."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """(short, long): 2 s and 5 s of the same moving picture, bright everywhere (no black margins to crop)."""
    folder = tmp_path_factory.mktemp("monitor_videos")
    rng = np.random.default_rng(0)
    base = rng.integers(80, 256, size=(96, 128, 3))
    frames = np.stack([np.roll(base, 3 * index, axis=1) for index in range(150)]).astype(np.uint8)
    frames[100:] = 255 - frames[100:]  # a sudden change at 3.33 s
    short, long = folder / "short.mp4", folder / "long.mp4"
    write_video(short, frames[:60])
    write_video(long, frames)
    return short, long


def run_monitor(*args, wait=True):
    command = [sys.executable, "scripts/monitor.py", "--device", "cpu", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def expected_surprise(checkpoint: str, video, window: int) -> torch.Tensor:
    """The video's surprise recomputed here: its steps at the model's 4 fps, each context run afresh."""
    model = SurgicalWorldModel.from_pretrained(checkpoint).eval()
    steps = list(video_steps(video, 4.0, 1, model.config.encoder_config.crop_size))
    latents = torch.cat([model.encode_targets(step.pixels[None])[0] for step in steps])
    return window_surprise(model, latents, window), [step.time for step in steps]


def test_follows_a_growing_video_and_writes_alerts(world_model_dir, videos, tmp_path):
    short, long = videos
    live = tmp_path / "live.mp4"
    live.write_bytes(short.read_bytes())
    out = tmp_path / "surprise.csv"
    process = run_monitor("--checkpoint", world_model_dir, "--video", live, "--window", "4", "--threshold", "0.9",
                          "--out", out, "--follow", "--idle_timeout", "6", "--poll", "0.2", wait=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= 3:  # header and the short video's first steps
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    first_rows = len(out.read_text().splitlines()) - 1
    partial = tmp_path / "partial.mp4"
    partial.write_bytes(long.read_bytes())
    os.replace(partial, live)  # the recording goes on
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr

    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected, times = expected_surprise(world_model_dir, long, 4)
    assert first_rows < len(rows) == len(expected) == 19  # 5 s at 4 fps: steps 0 ... 19, all but the first scored
    assert [int(row["step"]) for row in rows] == list(range(1, 20))
    assert [float(row["time"]) for row in rows] == pytest.approx(times[1:], abs=1e-3)
    surprise = torch.tensor([float(row["surprise"]) for row in rows])
    torch.testing.assert_close(surprise, expected.float(), atol=1e-5, rtol=0)
    assert [row["alert"] for row in rows] == [str(int(value >= 0.9)) for value in surprise.tolist()]
    assert stdout.count("alert: step") == sum(row["alert"] == "1" for row in rows)


def test_calibrated_threshold_and_json(world_model_dir, videos, tmp_path, capsys):
    from dataset_mmor import MMORClipTransform, load_mmor
    from dataset_mmor.synthetic import make_synthetic_mmor

    mmor = tmp_path / "mmor"
    make_synthetic_mmor(mmor, seed=0, width=64, height=48,
                        takes={"001_PKA": ("train", 16), "002_PKA": ("validation", 40), "004_PKA": ("test", 16)})
    _, long = videos
    out, arrow = tmp_path / "surprise.json", tmp_path / "arrow"
    assert monitor_main(["--checkpoint", world_model_dir, "--video", str(long), "--window", "4", "--calibration_dir",
                         str(mmor), "--dataset_cache_dir", str(arrow), "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    threshold = report["threshold"]
    assert "validation takes" in report["threshold_from"] and f"threshold {threshold:.5f}" in capsys.readouterr().out

    # The same threshold from the validation take recomputed here: each context run afresh, breach labels per timepoint.
    import evaluate

    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    validation = load_mmor(str(mmor), "azure:1", frames_per_clip=1, clip_stride=1, cache_dir=str(arrow))["validation"]
    transform = MMORClipTransform(crop_size=model.config.encoder_config.crop_size)
    rows = [transform(row) for row in sorted(validation, key=lambda row: row["timepoints"][0])]
    pixels = torch.cat([row["pixel_values_videos"] for row in rows])[None]  # (1, 40, 3, crop, crop)
    labels = torch.cat([row["breach"] for row in rows])[1:].tolist()
    scores = window_surprise(model, model.encode_targets(pixels)[0], 4).tolist()
    kept = [(score, label) for score, label in zip(scores, labels) if label >= 0]
    metric = evaluate.load(os.path.join(REPO_ROOT, "metrics", "binary_detection"))
    expected = metric.compute(predictions=[s for s, _ in kept], references=[label for _, label in kept])["threshold"]
    assert threshold == pytest.approx(expected, abs=1e-5)

    steps = report["steps"]
    assert len(steps) == 19 and report["window"] == 4
    assert [step["alert"] for step in steps] == [step["surprise"] >= threshold for step in steps]


def test_a_bad_video_gives_one_line(world_model_dir, tmp_path):
    video = tmp_path / "case.mp4"
    video.write_bytes(b"this is not a video\n" * 50)
    with pytest.raises(SystemExit) as stopped:
        monitor_main(["--checkpoint", world_model_dir, "--video", str(video), "--out", str(tmp_path / "s.csv")])
    message = str(stopped.value)
    assert message.startswith("error: ") and "\n" not in message and str(video) in message

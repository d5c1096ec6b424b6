#!/usr/bin/env python
"""How fast does `decode_clip` load training clips from a long 1280x720 60 fps H.264 video?

Three loaders fetch the same 8-frame clips sampled at 4 fps (frames 15 apart) at random places in a synthetic
SurgVU-like video (made once, cached under benchmarks/.cache/):
- ours: `decode_clip` with a `DecoderCache` on the backend the data loader uses (`--backend auto`: torchcodec when
  it loads FFmpeg's shared libraries, PyAV otherwise; or the one named), PyAV timed too, returning uint8 RGB frames;
- naive: the common OpenCV-style loop: open the video, decode and convert every frame from the start up to the
  clip's last frame, keep the wanted ones (slow, so it runs on the first `--naive_clips` clips only);
- bound: a bare PyAV decoder on an open file: seek to the keyframe before the clip, decode up to its last frame,
  no conversion, nothing else.
The last two lines: `vs naive: N.Nx` (naive time over ours, on the same clips) and `vs bound: N.NNx` (our time over
the bound's). Targets: at least 20x and at most 1.5x.
"""

import argparse
import csv
import os
import time

import av
import numpy as np

from bench_utils import make_video
from dataset_surgvu import DecoderCache, decode_clip, probe_video, select_backend
from dataset_surgvu.video import BACKENDS, torchcodec_problem


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def naive_clip(path: str, indices: list[int]) -> list[np.ndarray]:
    """Decode from the start, converting every frame (as `cv2.VideoCapture.read` does), keep the wanted ones."""
    wanted, frames = set(indices), {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for number, frame in enumerate(container.decode(stream)):
            image = frame.to_ndarray(format="rgb24")
            if number in wanted:
                frames[number] = image
            if number >= indices[-1]:
                break
    return [frames[index] for index in indices]


class BareDecoder:
    """The lower bound: an open PyAV decoder, seek, decode up to the clip's last frame, nothing else."""

    def __init__(self, path: str):
        self.info = probe_video(path, check_end=False)
        self.container = av.open(path)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"

    def clip(self, indices: list[int]) -> int:
        info = self.info
        first_pts = int((info.frame_time(indices[0])) / info.time_base)
        last_time = info.frame_time(indices[-1])
        self.container.seek(first_pts, stream=self.stream, backward=True, any_frame=False)
        decoded = 0
        for frame in self.container.decode(self.stream):
            decoded += 1
            if frame.pts is not None and float(frame.pts * info.time_base) >= last_time - 0.5 / info.fps:
                break
        return decoded


def time_each(function, clips) -> list[float]:
    timings = []
    for indices in clips:
        started = time.perf_counter()
        function(indices)
        timings.append(time.perf_counter() - started)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the video (real parts: 40 min to 5 h)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=60)
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--sample_fps", type=float, default=4.0)
    parser.add_argument("--naive_clips", type=int, default=5, help="clips timed with the naive loader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="our backend: auto (what the data loader chooses, SURGICAL_WM_VIDEO_BACKEND included) or "
                        "one of them; a backend that cannot decode here is an error")
    parser.add_argument("--cache_dir", default=os.path.join(REPO_ROOT, "benchmarks", ".cache"))
    parser.add_argument("--csv", default=os.path.join(REPO_ROOT, "benchmarks", "results", "decode.csv"))
    args = parser.parse_args()
    backend, reason = select_backend() if args.backend == "auto" else (args.backend, "--backend")
    if backend == "torchcodec" and (problem := torchcodec_problem()) is not None:
        parser.error(problem)

    path = make_video(args.cache_dir, args.seconds, args.width, args.height, args.fps)
    info = probe_video(path)
    step = info.fps / args.sample_fps
    span = int(round((args.frames - 1) * step))
    rng = np.random.default_rng(args.seed)

    def random_clips(count):
        starts = rng.integers(0, info.num_frames - span, size=count)
        return [[int(round(start + k * step)) for k in range(args.frames)] for start in starts]

    warm_up, clips = random_clips(3), random_clips(args.clips)
    print(f"video: {info.width}x{info.height} at {info.fps:g} fps, {info.num_frames} frames ({info.duration:.0f}s)")
    print(f"clips: {args.clips} random clips of {args.frames} frames at {args.sample_fps:g} fps (span {span} frames)")
    print(f"our backend: {backend} ({reason}); CPU threads available: {os.cpu_count()}")

    results = {}
    for name in dict.fromkeys([backend, "pyav"]):
        cache = DecoderCache(name, max_open=1)
        for indices in warm_up:
            decode_clip(path, indices, cache=cache)
        results[f"ours ({name})"] = time_each(lambda indices: decode_clip(path, indices, cache=cache), clips)
        cache.close()

    bare = BareDecoder(path)
    for indices in warm_up:
        bare.clip(indices)
    results["bound (bare PyAV)"] = time_each(bare.clip, clips)
    bare.container.close()

    naive_subset = clips[: args.naive_clips]
    results["naive (from start)"] = time_each(lambda indices: naive_clip(path, indices), naive_subset)

    ours = results[f"ours ({backend})"]
    print(f"{'loader':<22} {'clips':>5} {'clips/s':>9} {'ms/clip':>9}")
    for name, timings in results.items():
        print(f"{name:<22} {len(timings):>5} {len(timings) / sum(timings):>9.2f} {1000 * np.mean(timings):>9.1f}")
    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["loader", "clips", "clips_per_s", "ms_per_clip", "video", "backend"])
        for name, timings in results.items():
            writer.writerow([name, len(timings), f"{len(timings) / sum(timings):.3f}", f"{1000 * np.mean(timings):.1f}",
                             f"{info.width}x{info.height}@{info.fps:g}fps/{info.duration:.0f}s", backend])
    vs_naive = sum(results["naive (from start)"]) / sum(ours[: len(naive_subset)])
    vs_bound = sum(ours) / sum(results["bound (bare PyAV)"])
    print(f"vs naive: {vs_naive:.1f}x")
    print(f"vs bound: {vs_bound:.2f}x")


if __name__ == "__main__":
    main()

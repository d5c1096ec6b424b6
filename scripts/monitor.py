#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Follows a video with the world model and writes its surprise per step, with alerts above a threshold.

    python scripts/monitor.py --checkpoint outputs/surgical_wm/best --video case.mp4 \
        [--threshold 0.42 | --calibration_dir /data/MM-OR_data] [--window 32] [--out surprise.csv] [--follow]

The video's frames are sampled at the model's fps (its config's, as planning and the evaluation find it; `--fps`
overrides it) and cropped and preprocessed as training prepared its clips; each step is encoded on its own and scored
as it comes: its surprise is the evaluation's (the latent L1 of the step against its prediction from the steps before
it), from a context of up to `--window` steps kept in the predictor's KV cache, with the actions unknown (see
training_surgical_wm/surprise.py, which holds the streaming). With `--follow` the file may still be being written: it is
read again whenever it changes, until it has not changed for `--idle_timeout` seconds.

An alert is a step whose surprise reaches the threshold: `--threshold`, or the one `--calibration_dir` fits as the
evaluation fits MM-OR's breach threshold (the F1-best threshold of this surprise on the breach labels of the validation
takes of that MM-OR data, `--camera`). Without either, surprise only. `--out` writes CSV (time, step, surprise, alert;
a row as each step is scored, so it can be read while the video plays) or, for a `.json` name, the same rows with the
settings once the video ends. Time is seconds from the video's first frame to the step's last frame.
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch

from dataset_surgvu import CorruptVideoError, FrameUnavailableError, probe_video
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.loading import fail, time_base, training_settings, world_model_config
from training_surgical_wm.surprise import (
    CALIBRATION_SPLIT,
    SurpriseMonitor,
    calibrate_threshold,
    video_steps,
)


CSV_COLUMNS = ["time", "step", "surprise", "alert"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a world model directory (train_hf.py export) or Hub id")
    parser.add_argument("--video", required=True, help="the video file (with --follow, one still being written)")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, default=None, help="alert at this surprise or above")
    threshold.add_argument("--calibration_dir", default=None,
                           help=f"MM-OR data whose {CALIBRATION_SPLIT} takes calibrate the threshold on their breach "
                                "labels")
    parser.add_argument("--camera", default="azure:1", help="the MM-OR camera of --calibration_dir")
    parser.add_argument("--dataset_cache_dir", default=None, help="where the Arrow files of --calibration_dir go")
    parser.add_argument("--window", type=int, default=32, help="steps of context kept (default 32)")
    parser.add_argument("--out", default="surprise.csv", help="a .csv or .json file")
    parser.add_argument("--follow", action="store_true", help="the video is still being written: keep reading it")
    parser.add_argument("--idle_timeout", type=float, default=10.0,
                        help="--follow: stop when the file has not changed for this many seconds")
    parser.add_argument("--poll", type=float, default=0.5, help="--follow: seconds between looks at the file")
    parser.add_argument("--fps", type=float, default=None, help="steps' frame rate (default: the model config's)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error(f"--window must be at least 1, got {args.window}")
    if Path(args.out).suffix not in (".csv", ".json"):
        parser.error(f"--out must name a .csv or .json file, got {args.out}")
    for name in ("fps", "idle_timeout", "poll"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name} must be positive, got {value}")
    return args


def load_world_model(path: str) -> tuple[SurgicalWorldModel, str]:
    """The world model at `path` and where its config was read; one line when it is something else."""
    config, where = world_model_config(path)
    if config.get("state_dim"):
        fail(f"{where}: the model expects a state of {config['state_dim']} values per step; a video has none")
    return SurgicalWorldModel.from_pretrained(path).eval(), where


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    video = Path(args.video).expanduser()
    if not video.is_file():
        fail(f"{video}: no such video file")
    if not args.follow:  # a file still being written may not be readable yet
        try:
            probe_video(video)
        except CorruptVideoError as error:
            fail(f"{error} (not a readable video)")
    model, where = load_world_model(args.checkpoint)
    model.to(device)
    config = model.config
    settings, settings_file = training_settings(args.checkpoint)
    fps, fps_source = time_base(args.fps, config, where, settings, settings_file)

    threshold, threshold_from = args.threshold, "--threshold" if args.threshold is not None else None
    if args.calibration_dir:
        if not Path(args.calibration_dir).is_dir():
            fail(f"{args.calibration_dir}: no such MM-OR data folder")
        try:
            threshold, timepoints, breaches = calibrate_threshold(model, args.calibration_dir, args.window,
                                                                  args.camera, args.dataset_cache_dir)
        except ValueError as error:
            fail(str(error))
        threshold_from = (f"the {CALIBRATION_SPLIT} takes of {args.calibration_dir} (F1-best threshold over "
                          f"{timepoints} timepoints, {breaches} breaches)")
        print(f"threshold {threshold:.5f}, calibrated on {threshold_from}", flush=True)
    print(f"monitoring {video} at {fps:g} fps (from {fps_source}), {config.frames_per_step} frame(s) per step, "
          f"context up to {args.window} steps" + (", following the file" if args.follow else ""), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    as_csv = out.suffix == ".csv"
    rows, monitor = [], SurpriseMonitor(model, args.window)
    handle = out.open("w", newline="") if as_csv else None
    try:
        writer = csv.writer(handle) if as_csv else None
        if writer:
            writer.writerow(CSV_COLUMNS)
            handle.flush()
        for step in video_steps(video, fps, config.frames_per_step, config.encoder_config.crop_size,
                                follow=args.follow, idle_timeout=args.idle_timeout, poll=args.poll):
            latent = model.encode_targets(step.pixels[None].to(device))[0, 0]  # (N, D)
            surprise = monitor.push(latent)
            if surprise is None:
                continue  # the first step: nothing predicts it
            alert = None if threshold is None else surprise >= threshold
            row = {"time": round(step.time, 4), "step": step.index, "surprise": surprise, "alert": alert}
            rows.append(row)
            if writer:
                writer.writerow([row["time"], row["step"], f"{surprise:.6f}", "" if alert is None else int(alert)])
                handle.flush()
            if alert:
                print(f"alert: step {step.index} at {step.time:.2f} s, surprise {surprise:.5f} >= {threshold:.5f}",
                      flush=True)
    except (CorruptVideoError, FrameUnavailableError) as error:
        fail(f"{error} (not a readable video)")
    finally:
        if handle is not None:
            handle.close()
    if not rows:
        fail(f"{video}: fewer than 2 steps at {fps:g} fps: nothing to score")
    if not as_csv:
        result = {"checkpoint": args.checkpoint, "video": str(video), "fps": fps, "frames_per_step":
                  config.frames_per_step, "window": args.window, "threshold": threshold,
                  "threshold_from": threshold_from, "steps": rows,
                  "surprise": "latent L1 of each step against its prediction from up to --window steps before it, "
                              "actions unknown"}
        partial = out.with_name(f".{out.name}.partial")
        partial.write_text(json.dumps(result, indent=2))
        os.replace(partial, out)
    alerts = sum(bool(row["alert"]) for row in rows)
    print(f"{len(rows)} steps scored, " + (f"{alerts} alert(s)" if threshold is not None else "no threshold")
          + f"; surprise per step: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

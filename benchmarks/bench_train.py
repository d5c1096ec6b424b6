#!/usr/bin/env python
"""How much faster is frozen-encoder training from the latent cache than decoding and encoding every epoch?

One process, one synthetic SurgVU-like video (1280x720, 60 fps H.264, made once under benchmarks/.cache/), one
training split of non-overlapping 8-frame clips at 4 fps, one world model: the default config (ViT-L encoder,
1024-wide 24-deep predictor) scaled down in width and depth with the encoder-to-predictor FLOP ratio kept (random
weights). The same `--epochs` of frozen-encoder training run three ways, from the same initial weights, with the same
batch size, AdamW, clip order (`EpochShuffleSampler`) and DataLoader settings (train_hf's: workers, persistent):
- uncached: `SurgVUClips` + `ClipTransform` every epoch, `model(pixel_values_videos=..., actions=...)`;
- cached: `dataset_surgvu.latent_cache.build_latent_cache` (key, encode, shards, checksums, manifest), then `LatentClips` every epoch,
  `model(latents=..., actions=...)`;
- limit: one pass of decode, preprocess and encode (same loader), then predictor-only epochs on latents in memory.
It also times each stage per clip on its own (decode, preprocess, encode, one predictor step) and prints the
speed-up those costs allow: epochs * (all four) / ((decode + preprocess + encode) + epochs * predictor step).
The last two lines: `speed-up: N.Nx` (uncached time over cached) and `vs limit: N.NNx` (cached time over the limit).
Targets: the cached run within 1.3x of the limit, and a speed-up of at least 0.8 of the ideal one.
"""

import argparse
import copy
import csv
import os
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from accelerate import Accelerator

from bench_utils import make_video
from configuration_surgical_wm import VJEPA2_PRESETS, SurgicalWorldModelConfig
from dataset_surgvu import ClipTransform, DecoderCache, EpochShuffleSampler, SurgVUClips, decode_clip, get_action_spec
from dataset_surgvu.latent_cache import LatentClips, build_latent_cache, latent_cache_key
from dataset_surgvu.transforms import crop_frames, vjepa2_preprocess
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.accelerator import available_cores
from training_surgical_wm.arguments import DataArguments
from training_surgical_wm.data import load_dataset_splits


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD_DIM = 64  # ViT-L's and the default predictor's: 1024 wide, 16 heads


# ------------------------------------------------------------------------------------------------------ the model
def scaled_config(width: int, encoder_layers: int, predictor_layers: int, action_spec: list[str]):
    encoder = {**VJEPA2_PRESETS["vitl"]["encoder"], "hidden_size": width, "num_hidden_layers": encoder_layers,
               "num_attention_heads": width // HEAD_DIM}
    return SurgicalWorldModelConfig(
        encoder_config=encoder, predictor_hidden_size=width, predictor_num_hidden_layers=predictor_layers,
        predictor_num_attention_heads=width // HEAD_DIM, action_dim=len(action_spec), action_spec=action_spec,
    )


def flops_per_clip(config, frames: int) -> tuple[int, int]:
    """Counted FLOPs of encoding one clip, and of one predictor training step on it (forward and backward), on the
    meta device (no memory, no time)."""
    with torch.device("meta"):
        model = SurgicalWorldModel(config)
        crop = config.encoder_config.crop_size
        pixels = torch.zeros(1, frames, 3, crop, crop)
        actions = torch.zeros(1, frames // config.frames_per_step, config.action_dim)
        with FlopCounterMode(display=False) as counter:
            latents = model.encode(pixels)
        encode = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model(latents=latents, actions=actions).loss.backward()
        return encode, counter.get_total_flops()


# ---------------------------------------------------------------------------------------------------- training
class Trainer:
    """The predictor's AdamW, reset to the same initial weights and optimizer state before every side."""

    def __init__(self, model, device, learning_rate: float = 2e-4, weight_decay: float = 0.04):
        self.model, self.device = model, device
        self.initial = copy.deepcopy(model.state_dict())
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.reset()

    def reset(self) -> None:
        self.model.load_state_dict(self.initial)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=self.learning_rate, weight_decay=self.weight_decay)
        self.model.train()

    def step(self, inputs: dict, actions: torch.Tensor) -> float:
        output = self.model(**{k: v.to(self.device) for k, v in inputs.items()}, actions=actions.to(self.device))
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return output.loss.item()


def train_epochs(trainer: Trainer, loader, sampler, epochs: int, input_name: str) -> float:
    """`epochs` passes over `loader` (batches with `input_name` and `actions`); returns the last epoch's mean loss."""
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        losses = [trainer.step({input_name: batch[input_name]}, batch["actions"]) for batch in loader]
    return statistics.fmean(losses)


def in_memory_batches(latents: torch.Tensor, actions: torch.Tensor, sampler, batch_size: int):
    """The batches a drop_last DataLoader over `sampler` would give, sliced from tensors held in memory."""
    order = list(sampler)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = torch.tensor(order[start : start + batch_size])
        yield {"latents": latents[index], "actions": actions[index]}


# ------------------------------------------------------------------------------------------------ stage costs
def stage_costs(model, trainer: Trainer, split, transform, order: list[int], clips: int, batch_size: int,
                device) -> dict:
    """Seconds per clip of each stage, measured on its own in this process on `clips` clips taken in training order
    (random places in the video, as an epoch seeks), after a warm-up batch: decode (uint8 frames), preprocess (crop
    and V-JEPA 2 preprocessing), encode, predictor step; for decode and preprocess also the CPU time (all threads)."""
    rows = [split[index] for index in order[: clips + batch_size]]
    cache = DecoderCache(transform.backend, max_open=1)
    timings = {"decode": [], "preprocess": [], "encode": [], "predict": [], "decode_cpu": [], "preprocess_cpu": []}
    pixels = []
    for number, row in enumerate(rows):
        started, started_cpu = time.perf_counter(), time.process_time()
        frames = decode_clip(row["video_path"], row["frame_indices"], cache=cache)
        decoded, decoded_cpu = time.perf_counter(), time.process_time()
        videos = crop_frames(frames, row["crop_box"]).permute(0, 3, 1, 2)  # (T, 3, H, W)
        pixels.append(vjepa2_preprocess(videos, transform.crop_size, transform.image_mean, transform.image_std))
        if number >= batch_size:  # the first batch warms up
            timings["decode"].append(decoded - started)
            timings["preprocess"].append(time.perf_counter() - decoded)
            timings["decode_cpu"].append(decoded_cpu - started_cpu)  # CPU time of all this process's threads
            timings["preprocess_cpu"].append(time.process_time() - decoded_cpu)
    cache.close()
    actions = torch.stack([torch.as_tensor(row["actions"], dtype=torch.float32) for row in rows])
    for start in range(0, len(rows) - batch_size + 1, batch_size):
        batch = torch.stack(pixels[start : start + batch_size]).to(device)
        started = time.perf_counter()
        latents = model.encode(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()  # the step's .item() waits for its own kernels; encode has none such
        encoded = time.perf_counter()
        trainer.step({"latents": latents}, actions[start : start + batch_size])
        if start:
            timings["encode"].append((encoded - started) / batch_size)
            timings["predict"].append((time.perf_counter() - encoded) / batch_size)
    trainer.reset()
    return {stage: statistics.fmean(values) for stage, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=80.0, help="video length (about seconds/2 clips at 4 fps)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=60)
    parser.add_argument("--sample_fps", type=float, default=4.0)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_workers", type=int, default=8, help="DataLoader workers, capped at the cores (train_hf)")
    parser.add_argument("--hidden_size", type=int, default=128, help="encoder and predictor width (default 1024)")
    parser.add_argument("--encoder_layers", type=int, default=3, help="encoder depth (default 24)")
    parser.add_argument("--predictor_layers", type=int, default=2, help="predictor depth (default 24)")
    parser.add_argument("--precision", choices=("float16", "int8"), default="float16")
    parser.add_argument("--shard_size", type=int, default=128)
    parser.add_argument("--cost_clips", type=int, default=16, help="clips timed per stage (after a warm-up batch)")
    parser.add_argument("--device", choices=("cpu",), default=None, help="cpu forces it (default: what accelerate picks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=os.path.join(REPO_ROOT, "benchmarks", ".cache"))
    parser.add_argument("--csv", default=os.path.join(REPO_ROOT, "benchmarks", "results", "train.csv"))
    args = parser.parse_args()
    started_all = time.perf_counter()

    # ---- data: the video, a training split of every clip in it, train_hf's loader settings
    video = make_video(args.cache_dir, args.seconds, args.width, args.height, args.fps)
    data_root = os.path.dirname(os.path.dirname(os.path.dirname(video)))
    data_args = DataArguments(data_root=data_root, fps=args.sample_fps, frames_per_clip=args.frames,
                              validation_fraction=0.0, dataset_cache_dir=os.path.join(args.cache_dir, "arrow"),
                              cache_precision=args.precision, cache_shard_size=args.shard_size)
    split = load_dataset_splits(data_args)["train"]
    action_spec = get_action_spec()
    accelerator = Accelerator(cpu=args.device == "cpu")
    device = accelerator.device
    num_workers = min(args.num_workers, available_cores())
    loader_kwargs = {"batch_size": args.batch_size, "num_workers": num_workers, "persistent_workers": num_workers > 0,
                     "pin_memory": torch.cuda.is_available()}
    steps_per_epoch = len(split) // args.batch_size
    print(f"video: {args.width}x{args.height} at {args.fps} fps, {args.seconds:g}s; {len(split)} clips of {args.frames} "
          f"frames at {args.sample_fps:g} fps; {args.epochs} epochs of {steps_per_epoch} steps of {args.batch_size} "
          f"clips; {num_workers} DataLoader workers; device {device}, {torch.get_num_threads()} threads")

    # ---- model: the default config's encoder-to-predictor cost ratio, at a size this machine trains in minutes
    default = SurgicalWorldModelConfig.from_preset("vitl", action_dim=len(action_spec))
    config = scaled_config(args.hidden_size, args.encoder_layers, args.predictor_layers, action_spec)
    (default_encode, default_step), (encode_flops, step_flops) = (flops_per_clip(default, args.frames),
                                                                  flops_per_clip(config, args.frames))
    print(f"default (ViT-L 1024x24, predictor 1024x24): encode {default_encode / 1e12:.3f} TFLOP/clip, predictor step "
          f"{default_step / 1e12:.3f} TFLOP/clip, ratio {default_encode / default_step:.3f}")
    print(f"scaled (encoder {args.hidden_size}x{args.encoder_layers}, predictor {args.hidden_size}x"
          f"{args.predictor_layers}): encode {encode_flops / 1e9:.2f} GFLOP/clip, predictor step "
          f"{step_flops / 1e9:.2f} GFLOP/clip, ratio {encode_flops / step_flops:.3f} "
          f"({encode_flops / step_flops / (default_encode / default_step):.2f} of the default's)")
    torch.manual_seed(args.seed)
    model = SurgicalWorldModel(config).to(device)
    trainer = Trainer(model, device)
    transform = ClipTransform(crop_size=config.encoder_config.crop_size)

    # ---- each stage on its own
    sampler = EpochShuffleSampler(len(split), args.seed)
    costs = stage_costs(model, trainer, split, transform, list(sampler), args.cost_clips, args.batch_size, device)
    front = costs["decode"] + costs["preprocess"] + costs["encode"]
    ideal = args.epochs * (front + costs["predict"]) / (front + args.epochs * costs["predict"])
    print(f"per clip ({transform.backend}): decode {1000 * costs['decode']:.1f} ms (CPU {1000 * costs['decode_cpu']:.1f} "
          f"ms), preprocess {1000 * costs['preprocess']:.1f} ms (CPU {1000 * costs['preprocess_cpu']:.1f} ms), encode "
          f"{1000 * costs['encode']:.1f} ms, predictor step {1000 * costs['predict']:.1f} ms")
    print(f"ideal speed-up: {args.epochs} x ({1000 * front:.1f} + {1000 * costs['predict']:.1f}) / ({1000 * front:.1f} "
          f"+ {args.epochs} x {1000 * costs['predict']:.1f}) = {ideal:.2f}x")

    walls, losses = {}, {}
    clip_steps = args.epochs * steps_per_epoch * args.batch_size  # clips trained on (drop_last)

    # ---- uncached: decode, preprocess, encode and a predictor step for every clip at every epoch
    trainer.reset()
    started = time.perf_counter()
    loader = DataLoader(SurgVUClips(split, transform), sampler=sampler, drop_last=True, **loader_kwargs)
    losses["uncached"] = train_epochs(trainer, loader, sampler, args.epochs, "pixel_values_videos")
    del loader  # its workers go
    walls["uncached"] = time.perf_counter() - started
    print(f"uncached: {walls['uncached']:.1f}s ({1000 * walls['uncached'] / clip_steps:.1f} ms per clip and epoch)")

    # ---- cached: build the cache (a fresh directory), then every epoch from it
    trainer.reset()
    with tempfile.TemporaryDirectory(dir=args.cache_dir, prefix="latents-") as directory:
        started = time.perf_counter()
        key = latent_cache_key(model, split, transform, fps=data_args.fps, frames_per_clip=data_args.frames_per_clip,
                               precision=data_args.cache_precision, autocast=accelerator.mixed_precision)
        cache = build_latent_cache(accelerator, model, split, transform, directory, key, shard_size=args.shard_size,
                                   batch_size=args.batch_size, num_workers=num_workers)
        build = time.perf_counter() - started
        trainer.reset()  # build_latent_cache leaves the model in eval mode; same weights
        loader = DataLoader(LatentClips(split, cache), sampler=sampler, drop_last=True, **loader_kwargs)
        losses["cached"] = train_epochs(trainer, loader, sampler, args.epochs, "latents")
        del loader
        walls["cached"] = time.perf_counter() - started
        bytes_per_clip = cache.bytes_per_clip
    print(f"cached: {walls['cached']:.1f}s (build {build:.1f}s = {1000 * build / len(split):.1f} ms per clip; "
          f"{args.epochs} epochs {walls['cached'] - build:.1f}s = {1000 * (walls['cached'] - build) / clip_steps:.1f} "
          f"ms per clip and epoch); {bytes_per_clip:,} B per clip ({args.precision})")

    # ---- the limit: one pass of decode, preprocess and encode, then predictor-only epochs on latents in memory
    trainer.reset()
    started = time.perf_counter()
    encoded, actions = [], []
    with torch.no_grad():
        for batch in DataLoader(SurgVUClips(split, transform), shuffle=False, **loader_kwargs):
            encoded.append(model.encode(batch["pixel_values_videos"].to(device)))
            actions.append(batch["actions"])
    encoded, actions = torch.cat(encoded), torch.cat(actions)
    one_pass = time.perf_counter() - started
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        epoch_losses = [trainer.step({"latents": batch["latents"]}, batch["actions"])
                        for batch in in_memory_batches(encoded, actions, sampler, args.batch_size)]
    losses["limit"] = statistics.fmean(epoch_losses)
    walls["limit"] = time.perf_counter() - started
    print(f"limit: {walls['limit']:.1f}s (one pass {one_pass:.1f}s = {1000 * one_pass / len(split):.1f} ms per clip; "
          f"{args.epochs} epochs {walls['limit'] - one_pass:.1f}s = "
          f"{1000 * (walls['limit'] - one_pass) / clip_steps:.1f} ms per clip and epoch)")
    print("last epoch's mean loss: " + ", ".join(f"{side} {loss:.6f}" for side, loss in losses.items()))

    speed_up, vs_limit = walls["uncached"] / walls["cached"], walls["cached"] / walls["limit"]
    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "seconds", "unit", "clips", "epochs", "model", "video", "device"])
        common = [len(split), args.epochs, f"{args.hidden_size}x{args.encoder_layers}+{args.hidden_size}x"
                  f"{args.predictor_layers}", f"{args.width}x{args.height}@{args.fps}/{args.seconds:g}s", str(device)]
        for stage, value in costs.items():
            writer.writerow([stage, f"{value:.5f}", "per clip", *common])
        for side, value in walls.items():
            writer.writerow([side, f"{value:.2f}", "wall", *common])
    print(f"speed-up over ideal: {speed_up:.2f} / {ideal:.2f} = {speed_up / ideal:.2f} (target at least 0.8); "
          f"total {time.perf_counter() - started_all:.0f}s")
    print(f"speed-up: {speed_up:.1f}x")
    print(f"vs limit: {vs_limit:.2f}x")


if __name__ == "__main__":
    main()

"""What several benchmarks share: the SurgVU-shaped world model and its random inputs, the machine's load, the
synthetic benchmark video. A module of helpers: the benchmark scripts import it, never each other."""

import os
import time

import torch
import torch.nn.functional as F

from configuration_surgical_wm import SurgicalWorldModelConfig
from dataset_surgvu.labels import action_names
from dataset_surgvu.synthetic import make_synthetic_surgvu


def surgvu_config(depth: int, width: int, heads: int, mlp_ratio: float) -> SurgicalWorldModelConfig:
    """The ViT-L preset (latents 1024-dim, 256 tokens per step) with one encoder layer (the benchmark works on
    latents), the predictor at `width` x `depth`, SurgVU's action spec and its discrete groups (as training sets them)."""
    spec = action_names()
    groups = SurgicalWorldModelConfig.spec_groups(spec)
    return SurgicalWorldModelConfig.from_preset(
        "vitl", encoder_config={"num_hidden_layers": 1}, predictor_hidden_size=width, predictor_num_hidden_layers=depth,
        predictor_num_attention_heads=heads, predictor_mlp_ratio=mlp_ratio, action_dim=len(spec), action_spec=spec,
        discrete_action_groups=groups,
    )


def random_latents(config, generator: torch.Generator, rows: int, steps: int) -> torch.Tensor:
    """`(rows, steps, tokens, dim)` random latents, layer-normed per token as `encode` makes them."""
    latents = torch.randn(rows, steps, config.tokens_per_step, config.latent_dim, generator=generator)
    return F.layer_norm(latents, (config.latent_dim,))


def random_actions(config, generator: torch.Generator, rows: int, steps: int) -> torch.Tensor:
    """`(rows, steps, action_dim)` all-discrete actions: per group and step one of its options or none, uniformly."""
    actions = torch.zeros(rows, steps, config.action_dim)
    for _, dims in config.action_groups():
        choice = torch.randint(len(dims) + 1, (rows, steps), generator=generator)
        actions[..., dims] = F.one_hot(choice, len(dims) + 1)[..., : len(dims)].float()
    return actions


def load() -> str:
    return "load average " + " ".join(f"{value:.1f}" for value in os.getloadavg()) + f" on {os.cpu_count()} cores"


def make_video(cache_dir: str, seconds: float, width: int, height: int, fps: int) -> str:
    folder = os.path.join(cache_dir, f"surgvu_{width}x{height}_{fps}fps_{int(seconds)}s")
    marker = os.path.join(folder, "done")
    if not os.path.exists(marker):
        print(f"making the benchmark video once ({seconds:.0f}s at {width}x{height}, {fps} fps) in {folder} ...")
        started = time.perf_counter()
        make_synthetic_surgvu(
            folder, seed=0, num_cases=1, seconds=seconds, width=width, height=height, fps=fps, two_part_every=0,
            preset="superfast", corrupt_video=False, unlabeled_case=False, macosx_junk=False,
        )
        open(marker, "w").close()
        print(f"  done in {time.perf_counter() - started:.0f}s")
    return os.path.join(folder, "surgvu24", "case_000", "case_000_video_part_001.mp4")

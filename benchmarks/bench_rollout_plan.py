#!/usr/bin/env python
"""How much faster are the KV-cached rollout and the batched CEM planner than the fastest per-sample loop?

One process, one world model at the default predictor shape (1024 wide, 16 heads, MLP ratio 4, on ViT-L latents:
1024-dim, 256 tokens per step at 256 px / patch 16) scaled down in depth (`--depth` predictor layers; the default
config has 24), with SurgVU's 56-dim action spec and its discrete groups (USM1..USM4 over 12 tools, task over 8).
Random weights (seeded), eval mode, fp32, no gradients. Inputs are random latents layer-normed per token, as
`encode` makes them, and random all-discrete SurgVU actions (one option or none per group and step). The first line
names the device: the GPU (`--device cuda`, the default when one is there), else the CPU model and its threads.

1. Rollout: `rollout(context, actions, steps)` from a 1-step context with the KV cache (each step runs once)
   against `use_cache=False` (the whole history again at every step), on the same inputs: the largest absolute
   difference of the imagined latents (must stay below 1e-5 in fp32) and each side's median over `--repeats`
   alternating runs.
2. Planning, per preset of `--presets` (default: `vjepa2_ac_paper`, the V-JEPA 2 paper's setting, and this project's
   default; both top 10) and per context length of `--context_steps` (1: from one frame, as V-JEPA 2-AC plans, the
   headline; 4: `scripts/plan.py`'s default context): `plan(preset=...)` (batched chunks, the history once per plan,
   each distinct candidate rolled out once) against the per-sample loop that also uses the KV cache, the fastest
   loop a user would write (`chunk_size=1, deduplicate=False`: each sample alone through the cached rollout, the
   context's history cached once per iteration), on the same context, goal and generator seed. The goal is the
   layer-normed last latent of a rollout of the context under hidden actions. `--plan_repeats` alternating runs
   per side (default 3): min and median; seconds per planned action = a plan's seconds / its horizon (the actions it
   returns). Whether both sides agree: best energy and energy per iteration within 1e-5 relative, the same actions.
   `--num_samples` / `--iterations` scale a preset down where its loop would take hours (the CPU run of the README).

Rows go to benchmarks/results/rollout_plan.csv (appended, one per measurement, with the run's start time). The line
before the last names that preset and its seconds per planned action on both sides; the last line: `plan speed-up:
N.Nx`, loop over batched (medians), for the last preset planning from one frame.
"""

import argparse
import csv
import datetime
import os
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from bench_utils import load, random_actions, random_latents, surgvu_config
from modeling_surgical_wm import SurgicalWorldModel
from planning_surgical_wm import DEFAULT_PLANNING_PRESET, PLANNING_PRESETS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSV_FIELDS = ["run", "scenario", "fast_side", "fast_s", "fast_min_s", "fast_cpu_s", "slow_side", "slow_s", "slow_min_s",
              "slow_cpu_s", "speed_up", "agreement", "preset", "depth", "width", "heads", "rows", "context_steps",
              "steps", "num_samples", "iterations", "top_k", "seconds_per_action", "repeats", "device", "threads",
              "torch", "load"]


# ------------------------------------------------------------------------------------------------------ the model
# ------------------------------------------------------------------------------------------------------- timing
def alternate(functions: dict, repeats: int, device: torch.device) -> tuple[dict, dict, dict, dict]:
    """Runs the functions in turn, `repeats` rounds; returns each one's median wall seconds, min wall seconds, median
    CPU seconds (all of this process's threads: about threads x wall when nothing else competes for the cores) and
    last result."""
    walls, cpus, results = {name: [] for name in functions}, {name: [] for name in functions}, {}
    for _ in range(repeats):
        for name, function in functions.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            results[name] = function()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            walls[name].append(time.perf_counter() - started)
            cpus[name].append(time.process_time() - started_cpu)
    median = statistics.median
    return ({name: median(values) for name, values in walls.items()},
            {name: min(values) for name, values in walls.items()},
            {name: median(values) for name, values in cpus.items()}, results)


class WorkCounter:
    """Counts, per side, the predictor's step passes (one step's tokens through the predictor: rows x steps of each
    call) and the candidate sequences rolled out through the cache (the rows of each rollout's last step, the one call
    that keeps no keys: `update_cache=False`), with a forward pre-hook on the predictor of this model instance."""

    def __init__(self, model):
        self.side = None
        self.passes, self.rollouts = {}, {}
        model.predictor.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if self.side is not None:
            rows, steps = args[0].shape[:2]
            self.passes[self.side] = self.passes.get(self.side, 0) + rows * steps
            if kwargs.get("update_cache") is False:
                self.rollouts[self.side] = self.rollouts.get(self.side, 0) + rows

    def counting(self, side: str, function):
        def run():
            self.side = side
            try:
                return function()
            finally:
                self.side = None
        return run


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU's model (from /proc/cpuinfo where there is one) and torch's threads: the figures
    are this machine's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    return f"CPU {model}, {torch.get_num_threads()} threads"


def positive_integers(text: str, flag: str) -> list[int]:
    """A comma-separated list of integers >= 1, or one line naming the flag."""
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"error: {flag} takes integers >= 1, comma-separated; got {text!r}")
    return values


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--depth", type=int, default=1, help="predictor layers (the default config has 24)")
    parser.add_argument("--width", type=int, default=1024, help="predictor width (default config: 1024)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--mlp_ratio", type=float, default=4.0)
    parser.add_argument("--rollout_steps", type=int, default=8)
    parser.add_argument("--rollout_batch", type=int, default=1, help="contexts of the rollout comparison")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs per side, rollout (median)")
    parser.add_argument("--presets", default=f"vjepa2_ac_paper,{DEFAULT_PLANNING_PRESET}",
                        help="planning presets, comma-separated (planning_surgical_wm.PLANNING_PRESETS)")
    parser.add_argument("--num_samples", type=int, default=None, help="CEM samples per iteration (default: the "
                                                                      "preset's)")
    parser.add_argument("--iterations", type=int, default=None, help="CEM iterations (default: the preset's)")
    parser.add_argument("--context_steps", default="1,4",
                        help="observed steps before planning, comma-separated (1: from one frame, the headline; 4: "
                             "scripts/plan.py's default)")
    parser.add_argument("--plan_repeats", type=int, default=3, help="alternating runs per side, planning (min and "
                                                                    "median)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default=os.path.join(REPO_ROOT, "benchmarks", "results", "rollout_plan.csv"))
    args = parser.parse_args()
    presets = args.presets.split(",")
    unknown = [name for name in presets if name not in PLANNING_PRESETS]
    if unknown:
        raise SystemExit(f"error: --presets names no preset {unknown}; the presets are {', '.join(PLANNING_PRESETS)}")
    for flag, value in (("--num_samples", args.num_samples), ("--iterations", args.iterations),
                        ("--plan_repeats", args.plan_repeats), ("--repeats", args.repeats),
                        ("--rollout_steps", args.rollout_steps)):
        if value is not None and value < 1:
            raise SystemExit(f"error: {flag} must be at least 1, got {value}")
    small = [f"{preset} keeps the top {PLANNING_PRESETS[preset]['top_k']}" for preset in presets
             if (args.num_samples or PLANNING_PRESETS[preset]["num_samples"]) < PLANNING_PRESETS[preset]["top_k"]]
    if small:
        raise SystemExit(f"error: --num_samples {args.num_samples} is fewer than the elites: {'; '.join(small)}")
    # With all-discrete actions `plan` refits a Gaussian over no continuous dimension: torch warns about the empty std.
    warnings.filterwarnings("ignore", message="std\\(\\): degrees of freedom")
    context_lengths = positive_integers(args.context_steps, "--context_steps")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device_name = device_description(device)
    started_all = time.perf_counter()
    run = datetime.datetime.now().isoformat(timespec="seconds")

    torch.manual_seed(args.seed)
    config = surgvu_config(args.depth, args.width, args.heads, args.mlp_ratio)
    model = SurgicalWorldModel(config).eval().to(device)
    counter = WorkCounter(model)
    groups = config.action_groups()
    tokens = model.predictor.num_condition_tokens + config.tokens_per_step
    print(f"device: {device_name}; predictor {args.width} wide x {args.depth} deep, {args.heads} heads, MLP ratio "
          f"{args.mlp_ratio:g} (random weights, seed {args.seed}); ViT-L latents {config.latent_dim}-dim, "
          f"{config.tokens_per_step} tokens per step ({tokens} with the action token); SurgVU actions "
          f"{config.action_dim}-dim, groups " + ", ".join(f"{name} {len(dims)}" for name, dims in groups)
          + f"; fp32, torch {torch.__version__}, attention {config._attn_implementation}; {load()}")
    rows = []

    def record(scenario, sides, walls, minimums, cpus, agreement, **fields):
        fast, slow = sides
        rows.append({"run": run, "scenario": scenario, "fast_side": fast, "fast_s": f"{walls[fast]:.4f}",
                     "fast_min_s": f"{minimums[fast]:.4f}", "fast_cpu_s": f"{cpus[fast]:.4f}", "slow_side": slow,
                     "slow_s": f"{walls[slow]:.4f}", "slow_min_s": f"{minimums[slow]:.4f}",
                     "slow_cpu_s": f"{cpus[slow]:.4f}", "speed_up": f"{walls[slow] / walls[fast]:.3f}",
                     "agreement": agreement, "depth": args.depth, "width": args.width, "heads": args.heads,
                     "device": device_name, "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "load": " ".join(f"{value:.2f}" for value in os.getloadavg()), **fields})

    # ---- 1. rollout: KV-cached against uncached, same inputs
    generator = torch.Generator().manual_seed(args.seed)
    context = random_latents(config, generator, args.rollout_batch, 1).to(device)
    actions = random_actions(config, generator, args.rollout_batch, args.rollout_steps).to(device)
    with torch.no_grad():
        sides = {"cached": lambda: model.rollout(context, actions, args.rollout_steps),
                 "uncached": lambda: model.rollout(context, actions, args.rollout_steps, use_cache=False)}
        model.rollout(context, actions, 2)  # warm-up, both paths
        model.rollout(context, actions, 2, use_cache=False)
        rollout_times, rollout_min, rollout_cpu, results = alternate(sides, args.repeats, device)
    max_difference = float((results["cached"] - results["uncached"]).abs().max())
    rollout_speed_up = rollout_times["uncached"] / rollout_times["cached"]
    print(f"\nrollout: {args.rollout_steps} steps from a 1-step context, {args.rollout_batch} context(s), "
          f"{args.repeats} alternating runs per side (median)")
    print(f"  max abs difference cached vs uncached: {max_difference:.2e} "
          f"({'below' if max_difference < 1e-5 else 'NOT below'} 1e-5)")
    print(f"  cached {rollout_times['cached']:.3f} s, uncached {rollout_times['uncached']:.3f} s: "
          f"{rollout_speed_up:.2f}x")
    record("rollout", ("cached", "uncached"), rollout_times, rollout_min, rollout_cpu,
           f"max abs diff {max_difference:.2e}", rows=args.rollout_batch, context_steps=1, steps=args.rollout_steps,
           repeats=args.repeats)

    # ---- 2. planning: batched CEM against the cached per-sample loop, same context, goal and seed
    table, headline = [], None
    for preset in presets:
        settings = dict(PLANNING_PRESETS[preset])
        overrides = {name: getattr(args, name) for name in ("num_samples", "iterations") if getattr(args, name)}
        settings.update(overrides)
        horizon = settings["horizon"]
        print(f"\nplanning (CEM), preset {preset}: {settings['num_samples']} samples x {settings['iterations']} "
              f"iterations, top {settings['top_k']}, horizon {horizon}"
              + (f" (the preset's {PLANNING_PRESETS[preset]['num_samples']} x "
                 f"{PLANNING_PRESETS[preset]['iterations']} scaled down)" if overrides else "")
              + f"; {args.plan_repeats} alternating run(s) per side")
        for num_context in context_lengths:
            generator = torch.Generator().manual_seed(args.seed + num_context)
            context = random_latents(config, generator, 1, num_context).to(device)
            context_actions = (random_actions(config, generator, 1, num_context - 1).to(device)
                               if num_context > 1 else None)
            hidden = random_actions(config, generator, 1, horizon).to(device)  # the actions that lead to the goal
            with torch.no_grad():
                history = hidden if context_actions is None else torch.cat([context_actions, hidden], dim=1)
                goal = F.layer_norm(model.rollout(context, history, horizon)[:, -1:], (config.latent_dim,))

            def plan(**options):
                return model.plan(context, goal, preset=preset, context_actions=context_actions,
                                  generator=torch.Generator().manual_seed(args.seed), **overrides, **options)

            # warm-up: a few candidates through each side's path
            warm = random_actions(config, generator, 4, horizon)[None].to(device)  # (1, 4, horizon, actions)
            model.energy(context, goal, warm, context_actions)
            model.energy(context, goal, warm[:, :1], context_actions, chunk_size=1, deduplicate=False)
            counter.passes, counter.rollouts = {}, {}
            sides = {"batched": counter.counting("batched", plan),
                     "loop": counter.counting("loop", lambda: plan(chunk_size=1, deduplicate=False))}
            plan_times, plan_min, plan_cpu, results = alternate(sides, args.plan_repeats, device)
            passes = {side: value / args.plan_repeats for side, value in counter.passes.items()}
            batched, loop = results["batched"], results["loop"]
            energy_difference = relative_difference(batched.energy, loop.energy)
            iteration_difference = max(relative_difference(batched.energy_per_iteration, loop.energy_per_iteration),
                                       relative_difference(batched.elite_energy_per_iteration,
                                                           loop.elite_energy_per_iteration))
            same_actions = torch.equal(batched.actions, loop.actions)
            agree = energy_difference <= 1e-5 and iteration_difference <= 1e-5 and same_actions
            speed_up = plan_times["loop"] / plan_times["batched"]
            per_action = {side: plan_times[side] / horizon for side in sides}
            print(f"  from {num_context} step(s): batched median {plan_times['batched']:.2f} s (min "
                  f"{plan_min['batched']:.2f}), loop median {plan_times['loop']:.2f} s (min {plan_min['loop']:.2f}): "
                  f"{speed_up:.2f}x; per planned action: batched {per_action['batched']:.3f} s, loop "
                  f"{per_action['loop']:.3f} s; step passes loop {passes['loop']:.0f}, batched "
                  f"{passes['batched']:.0f}; {'agree' if agree else 'DO NOT agree'} (energy rel. diff "
                  f"{energy_difference:.1e}, actions {'identical' if same_actions else 'different'})")
            table.append((preset, num_context, settings, plan_times, plan_min, per_action, speed_up))
            if num_context == 1:
                headline = (preset, speed_up, per_action)
            record(f"plan-{preset}-context{num_context}", ("batched", "loop"), plan_times, plan_min, plan_cpu,
                   f"energy rel {energy_difference:.1e}, per iteration rel {iteration_difference:.1e}, actions "
                   f"{'identical' if same_actions else 'different'}", preset=preset, rows=1,
                   context_steps=num_context, steps=horizon, num_samples=settings["num_samples"],
                   iterations=settings["iterations"], top_k=settings["top_k"],
                   seconds_per_action=f"{per_action['batched']:.4f}", repeats=args.plan_repeats)

    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    new = not os.path.exists(args.csv)
    if not new:
        with open(args.csv, newline="") as handle:
            if next(csv.reader(handle), None) != CSV_FIELDS:
                raise SystemExit(f"error: {args.csv} has other columns (an older version of this benchmark wrote it): "
                                 "give --csv another file")
    with open(args.csv, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print("\n| preset | samples x iterations | context | batched s (min / median) | loop s (min / median) | "
          "s per planned action (batched / loop) | speed-up |")
    print("| --- | --- | --: | --: | --: | --: | --: |")
    for preset, num_context, settings, times, minimums, per_action, speed_up in table:
        print(f"| {preset} | {settings['num_samples']} x {settings['iterations']} | {num_context} | "
              f"{minimums['batched']:.2f} / {times['batched']:.2f} | {minimums['loop']:.2f} / {times['loop']:.2f} | "
              f"{per_action['batched']:.3f} / {per_action['loop']:.3f} | {speed_up:.1f}x |")
    print(f"\ntotal {time.perf_counter() - started_all:.0f} s on {device_name} ({load()}); rollout speed-up "
          f"{rollout_speed_up:.1f}x")
    if headline is not None:
        preset, speed_up, per_action = headline
        print(f"headline: {preset}, from one frame, loop / batched medians; per planned action "
              f"{per_action['batched']:.3f} s batched, {per_action['loop']:.3f} s looped, on {device_name}")
        print(f"plan speed-up: {speed_up:.1f}x")


if __name__ == "__main__":
    main()

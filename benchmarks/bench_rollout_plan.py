#!/usr/bin/env python
"""How much faster are the KV-cached rollout and the batched CEM planner than rerunning the history per sample?

One process, one world model at the default predictor shape (1024 wide, 16 heads, MLP ratio 4, on ViT-L latents:
1024-dim, 256 tokens per step at 256 px / patch 16) scaled down in depth (`--depth` predictor layers; the default
config has 24), with SurgVU's 56-dim action spec and its discrete groups (USM1..USM4 over 12 tools, task over 8).
Random weights (seeded), eval mode, fp32, no gradients. Inputs are random latents layer-normed per token, as
`encode` makes them, and random all-discrete SurgVU actions (one option or none per group and step).

1. Rollout: `rollout(context, actions, steps)` from a 1-step context with the KV cache (each step runs once)
   against `use_cache=False` (the whole history again at every step), on the same inputs: the largest absolute
   difference of the imagined latents (must stay below 1e-5 in fp32) and each side's median over `--repeats`
   alternating runs.
2. Planning: `plan` (CEM) with its defaults (chunking, cache, each distinct candidate rolled out once) against the
   per-sample loop (`chunk_size=1, use_cache=False, deduplicate=False`: each sample alone through the uncached
   rollout), on the same context, goal and generator seed, for every context length of `--context_steps` (a longer
   observed history is computed once per plan by the cached side and shared by every candidate). The goal is
   the layer-normed last latent of a rollout of the context under hidden actions (inferring the actions that explain
   a stretch of video). Whether both sides agree: best energy and energy per iteration within 1e-5 relative, and the
   same actions. Each side's predictor work is counted in step passes (one step's tokens through the predictor).
3. The planning time per planned step (batched side), and its extrapolation to V-JEPA 2-AC's settings (400 samples,
   10 iterations) at depth 24, assuming time linear in samples x iterations x depth.

Rows go to benchmarks/results/rollout_plan.csv (appended, one per measurement, with the run's start time). The last
two lines: `rollout speed-up: N.Nx` (uncached over cached) and `plan speed-up: N.Nx` (loop over batched, at the last
of `--context_steps`: the project's default use, planning from the current frame as V-JEPA 2-AC does).
Targets: rollout at least 3x at 8 steps, plan at least 10x.
"""

import argparse
import csv
import datetime
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from bench_utils import load, random_actions, random_latents, surgvu_config
from modeling_surgical_wm import SurgicalWorldModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = {"num_samples": 400, "iterations": 10, "depth": 24}  # V-JEPA 2-AC's CEM and the default predictor depth
CSV_FIELDS = ["run", "scenario", "fast_side", "fast_s", "fast_cpu_s", "slow_side", "slow_s", "slow_cpu_s", "speed_up",
              "agreement", "depth", "width", "heads", "rows", "context_steps", "steps", "num_samples", "iterations",
              "top_k", "chunk_size", "repeats", "threads", "torch", "load"]


# ------------------------------------------------------------------------------------------------------ the model
# ------------------------------------------------------------------------------------------------------- timing
def alternate(functions: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Runs the functions in turn, `repeats` rounds; returns each one's median wall seconds, median CPU seconds (all
    of this process's threads: about threads x wall when nothing else competes for the cores) and last result."""
    walls, cpus, results = {name: [] for name in functions}, {name: [] for name in functions}, {}
    for _ in range(repeats):
        for name, function in functions.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            results[name] = function()
            walls[name].append(time.perf_counter() - started)
            cpus[name].append(time.process_time() - started_cpu)
    median = statistics.median
    return ({name: median(values) for name, values in walls.items()},
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


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1, help="predictor layers (the default config has 24)")
    parser.add_argument("--width", type=int, default=1024, help="predictor width (default config: 1024)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--mlp_ratio", type=float, default=4.0)
    parser.add_argument("--rollout_steps", type=int, default=8)
    parser.add_argument("--rollout_batch", type=int, default=1, help="contexts of the rollout comparison")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs per side, rollout (median)")
    parser.add_argument("--num_samples", type=int, default=64, help="CEM samples per iteration (V-JEPA 2-AC: 400)")
    parser.add_argument("--iterations", type=int, default=10, help="CEM iterations (V-JEPA 2-AC: 10)")
    parser.add_argument("--top_k", type=int, default=4, help="CEM elites (V-JEPA 2-AC: 10)")
    parser.add_argument("--horizon", type=int, default=2, help="planned steps (V-JEPA 2-AC: 2)")
    parser.add_argument("--context_steps", default="1,4",
                        help="observed steps before planning, comma-separated; the last is the project's default use "
                             "and goes on the last line (V-JEPA 2-AC plans from the current frame: 1; scripts/plan.py's "
                             "default: 4)")
    parser.add_argument("--plan_repeats", type=int, default=1, help="alternating runs per side, planning (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default=os.path.join(REPO_ROOT, "benchmarks", "results", "rollout_plan.csv"))
    args = parser.parse_args()
    # With all-discrete actions `plan` refits a Gaussian over no continuous dimension: torch warns about the empty std.
    warnings.filterwarnings("ignore", message="std\\(\\): degrees of freedom")
    context_lengths = [int(value) for value in args.context_steps.split(",")]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started_all = time.perf_counter()
    run = datetime.datetime.now().isoformat(timespec="seconds")

    torch.manual_seed(args.seed)
    config = surgvu_config(args.depth, args.width, args.heads, args.mlp_ratio)
    model = SurgicalWorldModel(config).eval()
    counter = WorkCounter(model)
    groups = config.action_groups()
    tokens = model.predictor.num_condition_tokens + config.tokens_per_step
    print(f"predictor {args.width} wide x {args.depth} deep, {args.heads} heads, MLP ratio {args.mlp_ratio:g} (random "
          f"weights, seed {args.seed}); ViT-L latents {config.latent_dim}-dim, {config.tokens_per_step} tokens per "
          f"step ({tokens} with the action token); SurgVU actions {config.action_dim}-dim, groups "
          + ", ".join(f"{name} {len(dims)}" for name, dims in groups)
          + f"; fp32, torch {torch.__version__}, {torch.get_num_threads()} threads, attention "
          f"{config._attn_implementation}; {load()}")
    rows = []

    def record(scenario, sides, walls, cpus, agreement, **fields):
        fast, slow = sides
        rows.append({"run": run, "scenario": scenario, "fast_side": fast, "fast_s": f"{walls[fast]:.4f}",
                     "fast_cpu_s": f"{cpus[fast]:.4f}", "slow_side": slow, "slow_s": f"{walls[slow]:.4f}",
                     "slow_cpu_s": f"{cpus[slow]:.4f}", "speed_up": f"{walls[slow] / walls[fast]:.3f}",
                     "agreement": agreement, "depth": args.depth, "width": args.width, "heads": args.heads,
                     "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "load": " ".join(f"{value:.2f}" for value in os.getloadavg()), **fields})

    # ---- 1. rollout: KV-cached against uncached, same inputs
    generator = torch.Generator().manual_seed(args.seed)
    context = random_latents(config, generator, args.rollout_batch, 1)
    actions = random_actions(config, generator, args.rollout_batch, args.rollout_steps)
    with torch.no_grad():
        sides = {"cached": lambda: model.rollout(context, actions, args.rollout_steps),
                 "uncached": lambda: model.rollout(context, actions, args.rollout_steps, use_cache=False)}
        model.rollout(context, actions, 2)  # warm-up, both paths
        model.rollout(context, actions, 2, use_cache=False)
        rollout_times, rollout_cpu, results = alternate(sides, args.repeats)
    max_difference = float((results["cached"] - results["uncached"]).abs().max())
    rollout_speed_up = rollout_times["uncached"] / rollout_times["cached"]
    print(f"\nrollout: {args.rollout_steps} steps from a 1-step context, {args.rollout_batch} context(s), "
          f"{args.repeats} alternating runs per side (median)")
    print(f"  max abs difference cached vs uncached: {max_difference:.2e} "
          f"({'below' if max_difference < 1e-5 else 'NOT below'} 1e-5)")
    uncached_passes = args.rollout_steps * (args.rollout_steps + 1) // 2
    print(f"  predictor work: uncached {uncached_passes} step passes, cached {args.rollout_steps}: "
          f"{uncached_passes / args.rollout_steps:.2f}x (the speed-up if a step costs the same alone or in a longer "
          "sequence)")
    print(f"  cached {rollout_times['cached']:.3f} s (CPU {rollout_cpu['cached']:.2f} s), uncached "
          f"{rollout_times['uncached']:.3f} s (CPU {rollout_cpu['uncached']:.2f} s): "
          f"{rollout_speed_up:.2f}x (target at least 3x: {'met' if rollout_speed_up >= 3 else 'missed'})")
    record("rollout", ("cached", "uncached"), rollout_times, rollout_cpu, f"max abs diff {max_difference:.2e}",
           rows=args.rollout_batch, context_steps=1, steps=args.rollout_steps, repeats=args.repeats)

    # ---- 2. planning: batched CEM against the per-sample loop, same context, goal and seed
    print(f"\nplanning (CEM): {args.num_samples} samples x {args.iterations} iterations, top {args.top_k}, horizon "
          f"{args.horizon}, 1 context, SurgVU actions all discrete; {args.plan_repeats} run(s) per side; "
          f"V-JEPA 2-AC: {META['num_samples']} x {META['iterations']}, top 10")
    plan_speed_ups = {}
    with torch.device("meta"):  # the default chunking at the default depth (no weights, no time)
        full_depth = SurgicalWorldModel(surgvu_config(META["depth"], args.width, args.heads, args.mlp_ratio))
    for num_context in context_lengths:
        generator = torch.Generator().manual_seed(args.seed + num_context)
        context = random_latents(config, generator, 1, num_context)
        context_actions = random_actions(config, generator, 1, num_context - 1) if num_context > 1 else None
        hidden = random_actions(config, generator, 1, args.horizon)  # the actions that lead to the goal
        with torch.no_grad():
            history = hidden if context_actions is None else torch.cat([context_actions, hidden], dim=1)
            goal = F.layer_norm(model.rollout(context, history, args.horizon)[:, -1:], (config.latent_dim,))
        chunk_size = min(model.plan_chunk_size(num_context, args.horizon), args.num_samples)

        def plan(**options):
            return model.plan(context, goal, horizon=args.horizon, num_samples=args.num_samples,
                              iterations=args.iterations, top_k=args.top_k, context_actions=context_actions,
                              generator=torch.Generator().manual_seed(args.seed), **options)

        # warm-up: one batch of candidates through each side's path
        warm = random_actions(config, generator, chunk_size, args.horizon)[None]  # (1, chunk, horizon, actions)
        model.energy(context, goal, warm, context_actions)
        model.energy(context, goal, warm[:, :1], context_actions, chunk_size=1, use_cache=False, deduplicate=False)
        counter.passes, counter.rollouts = {}, {}
        sides = {"batched": counter.counting("batched", plan),
                 "loop": counter.counting("loop", lambda: plan(chunk_size=1, use_cache=False, deduplicate=False))}
        plan_times, plan_cpu, results = alternate(sides, args.plan_repeats)
        passes = {side: value / args.plan_repeats for side, value in counter.passes.items()}
        rolled_out = {side: value / args.plan_repeats for side, value in counter.rollouts.items()}  # cached side
        batched, loop = results["batched"], results["loop"]
        energy_difference = relative_difference(batched.energy, loop.energy)
        iteration_difference = max(relative_difference(batched.energy_per_iteration, loop.energy_per_iteration),
                                   relative_difference(batched.elite_energy_per_iteration,
                                                       loop.elite_energy_per_iteration))
        same_actions = torch.equal(batched.actions, loop.actions)
        agree = energy_difference <= 1e-5 and iteration_difference <= 1e-5 and same_actions
        speed_up = plan_times["loop"] / plan_times["batched"]
        plan_speed_ups[num_context] = speed_up
        per_step = plan_times["batched"] / args.horizon
        scale = (META["num_samples"] * META["iterations"] * META["depth"]) / (
            args.num_samples * args.iterations * args.depth)
        hidden_found = int((batched.actions == hidden).all(-1).sum())
        history_steps = "no history" if num_context == 1 else f"{num_context - 1} history steps shared by the samples"
        print(f"context {num_context} step(s) ({history_steps}), chunk_size {chunk_size} (the default for this shape):")
        print(f"  best energy: batched {float(batched.energy):.6f}, loop {float(loop.energy):.6f} (rel. diff "
              f"{energy_difference:.1e}); energy per iteration rel. diff {iteration_difference:.1e}; actions "
              f"{'identical' if same_actions else 'DIFFERENT'}; {'agree' if agree else 'DO NOT agree'} "
              f"(best sequence matches the hidden actions at {hidden_found} of {args.horizon} steps)")
        print(f"  predictor work per plan, in step passes: loop {passes['loop']:.0f} (every one of the "
              f"{args.num_samples * args.iterations} samples rolled out), batched {passes['batched']:.0f} "
              f"({rolled_out['batched']:.0f} distinct candidates rolled out, the shared history once per plan): {passes['loop'] / passes['batched']:.2f}x "
              "(the speed-up if batching candidates adds no throughput)")
        print(f"  batched {plan_times['batched']:.2f} s (CPU {plan_cpu['batched']:.2f} s), loop "
              f"{plan_times['loop']:.2f} s (CPU {plan_cpu['loop']:.2f} s): {speed_up:.2f}x (target at least 10x: "
              f"{'met' if speed_up >= 10 else 'missed'})")
        print(f"  planning time per planned step (batched): {per_step:.2f} s; extrapolation to {META['num_samples']} "
              f"samples x {META['iterations']} iterations at depth {META['depth']} (linear in samples x iterations x "
              f"depth, not measured): {plan_times['batched'] * scale:.0f} s per plan, {per_step * scale:.0f} s per "
              f"planned step (the default chunk_size at depth {META['depth']} is "
              f"{full_depth.plan_chunk_size(num_context, args.horizon)})")
        record(f"plan-context{num_context}", ("batched", "loop"), plan_times, plan_cpu,
               f"energy rel {energy_difference:.1e}, per iteration rel {iteration_difference:.1e}, actions "
               f"{'identical' if same_actions else 'different'}", rows=1, context_steps=num_context,
               steps=args.horizon, num_samples=args.num_samples, iterations=args.iterations, top_k=args.top_k,
               chunk_size=chunk_size, repeats=args.plan_repeats)

    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    new = not os.path.exists(args.csv)
    with open(args.csv, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"\ntotal {time.perf_counter() - started_all:.0f} s ({load()}); plan speed-up per context: "
          + ", ".join(f"{steps} step(s) {value:.1f}x" for steps, value in plan_speed_ups.items())
          + f" (last: the default use, context {context_lengths[-1]})")
    print(f"rollout speed-up: {rollout_speed_up:.1f}x")
    print(f"plan speed-up: {plan_speed_ups[context_lengths[-1]]:.1f}x")


if __name__ == "__main__":
    main()

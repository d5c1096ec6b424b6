#!/usr/bin/env python
"""Which way of not scoring a CEM candidate twice is fastest?

`plan` keeps one: a dict per context of the sequences scored so far in the plan (their bytes to their energy), so
each distinct sequence is rolled out once per plan. Before, the planner had three overlapping ways; this script
runs each alone, on the same context, goal and generator seed, in one process:

- dict over the plan: `plan(...)` as it is (the way kept);
- distinct per call: each iteration's samples reduced with `torch.unique` and scored by `energy(...,
  deduplicate=False)` (each sequence once per iteration, again in the next one);
- first-step prefix tree: each iteration's samples scored with the context's last step run once per distinct first
  action, each sample continuing from its first action's keys and values (`PredictorKVCache.share` and `select`);
- none: `plan(..., deduplicate=False)`, every sample rolled out.

The three other sides run the same CEM as `plan` (its `SurgicalWorldModelActionSampler`, the same elites), so all
four should find the same actions. The model: bench_rollout_plan.py's SurgVU world model (ViT-L latents, SurgVU's
56-dim all-discrete action spec) with a small predictor (`--width 256 --depth 1`), random weights, fp32, no
gradients. Work is counted in step passes (rows x steps of each predictor call, with a forward pre-hook).
Last lines: `kept vs fastest other (wall|CPU): N.NNx` (the fastest other side's median time over the kept side's;
above 1: the kept way is the fastest). CPU time is printed too: on shared cores it is less hurt by other jobs.
"""

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from bench_utils import load, random_actions, random_latents, surgvu_config
from modeling_surgical_wm import SurgicalWorldModel
from planning_surgical_wm import SurgicalWorldModelActionSampler


def cem(model, context, goal, context_actions, args, score):
    """`plan`'s CEM loop over one context with another scorer: `score(samples (K, H, A)) -> energies (K,)`."""
    generator = torch.Generator().manual_seed(args.seed)
    sampler = SurgicalWorldModelActionSampler(1, args.horizon, model.config.action_dim, model.config.action_groups(),
                                              (-0.05, 0.05), torch.device("cpu"))
    best_energy, best_actions = float("inf"), None
    rows = torch.arange(1)[:, None]
    for _ in range(args.iterations):
        samples, choices = sampler.sample(args.num_samples, generator)
        energies = score(samples[0])[None]
        order = torch.argsort(energies, dim=1, stable=True)[:, : args.top_k]
        elites = samples[rows, order]
        if float(energies[0, order[0, 0]]) < best_energy:
            best_energy, best_actions = float(energies[0, order[0, 0]]), elites[0, 0]
        sampler.refit(elites, [drawn[rows, order] for drawn in choices], 0.15)
    return best_energy, best_actions


def distinct_per_call(model, context, goal, context_actions):
    def score(samples):
        distinct, copies = torch.unique(samples.flatten(1), dim=0, return_inverse=True)
        energies = model.energy(context, goal, distinct.view(1, -1, *samples.shape[1:]), context_actions,
                                deduplicate=False)
        return energies[0, copies]
    return score


def first_step_tree(model, context, goal, context_actions):
    predictor = model.predictor
    num_context = context.shape[1]
    history_cache = None
    if num_context > 1:  # the observed history once per plan, as `plan` does
        history_cache = predictor.new_cache()
        with torch.no_grad():
            predictor(context[:, :-1], context_actions, cache=history_cache)

    @torch.no_grad()
    def score(samples):
        horizon = samples.shape[1]
        firsts, parent = torch.unique(samples[:, 0], dim=0, return_inverse=True)  # (U, A), (K,)
        step_cache = history_cache.share(len(firsts)) if history_cache is not None else predictor.new_cache()
        latents = predictor(context[:, -1:].expand(len(firsts), -1, -1, -1), firsts[:, None], cache=step_cache,
                            update_cache=horizon > 1)  # (U, 1, N, D): the latent after each first action
        cache, inputs = (step_cache.select(parent), latents[parent]) if horizon > 1 else (None, latents)
        for step in range(1, horizon):
            inputs = predictor(inputs, samples[:, step : step + 1], cache=cache, update_cache=step < horizon - 1)
        return (inputs[:, -1].float() - goal.float()).abs().mean(dim=(1, 2))
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context_steps", type=int, default=4, help="scripts/plan.py's default")
    parser.add_argument("--num_samples", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--top_k", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side (median)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="std\\(\\): degrees of freedom")  # no continuous dimension to refit
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = surgvu_config(args.depth, args.width, args.heads, 4.0)
    model = SurgicalWorldModel(config).eval()
    generator = torch.Generator().manual_seed(args.seed + args.context_steps)
    context = random_latents(config, generator, 1, args.context_steps)
    context_actions = random_actions(config, generator, 1, args.context_steps - 1)
    hidden = random_actions(config, generator, 1, args.horizon)
    with torch.no_grad():
        goal = F.layer_norm(model.rollout(context, torch.cat([context_actions, hidden], 1), args.horizon)[:, -1],
                            (config.latent_dim,))
    passes = {"side": None}
    model.predictor.register_forward_pre_hook(
        lambda module, inputs: passes.__setitem__(passes["side"], passes.get(passes["side"], 0)
                                                  + inputs[0].shape[0] * inputs[0].shape[1]))

    def plan(**options):
        output = model.plan(context, goal, horizon=args.horizon, num_samples=args.num_samples,
                            iterations=args.iterations, top_k=args.top_k, context_actions=context_actions,
                            generator=torch.Generator().manual_seed(args.seed), **options)
        return float(output.energy[0]), output.actions[0]

    sides = {
        "dict over the plan (kept)": plan,
        "distinct per call": lambda: cem(model, context, goal, context_actions, args,
                                         distinct_per_call(model, context, goal, context_actions)),
        "first-step prefix tree": lambda: cem(model, context, goal, context_actions, args,
                                              first_step_tree(model, context, goal, context_actions)),
        "none": lambda: plan(deduplicate=False),
    }
    print(f"predictor {args.width} wide x {args.depth} deep, {args.heads} heads; ViT-L latents; SurgVU actions "
          f"{config.action_dim}-dim; context {args.context_steps} steps; CEM {args.num_samples} samples x "
          f"{args.iterations} iterations, top {args.top_k}, horizon {args.horizon}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {load()}")
    with torch.no_grad():  # warm-up: one batch of candidates through the cached and the uncached rollout
        warm = random_actions(config, generator, args.num_samples, args.horizon)[None]
        model.energy(context, goal, warm, context_actions, deduplicate=False)
        model.energy(context, goal, warm[:, :2], context_actions, chunk_size=1, use_cache=False, deduplicate=False)
    times, cpu_times, results = {name: [] for name in sides}, {name: [] for name in sides}, {}
    for _ in range(args.repeats):
        for name, function in sides.items():
            passes["side"], passes[name] = name, 0
            started, started_cpu = time.perf_counter(), time.process_time()
            results[name] = function()
            times[name].append(time.perf_counter() - started)
            cpu_times[name].append(time.process_time() - started_cpu)
            passes["side"] = None
    kept = "dict over the plan (kept)"
    for name in sides:
        energy, actions = results[name]
        relative = abs(energy - results[kept][0]) / abs(results[kept][0])
        print(f"{name:27s} {statistics.median(times[name]):7.2f} s, CPU {statistics.median(cpu_times[name]):7.2f} s "
              f"(medians of {args.repeats}), {passes[name]:5d} step "
              f"passes, best energy {energy:.7f} (rel. diff {relative:.1e}), actions "
              f"{'the same' if torch.equal(actions, results[kept][1]) else 'DIFFERENT'}")
    print(f"{load()}")
    for label, measured in (("wall", times), ("CPU", cpu_times)):  # CPU time: less hurt by other jobs on the cores
        fastest_other = min(statistics.median(measured[name]) for name in sides if name != kept)
        print(f"kept vs fastest other ({label}): {fastest_other / statistics.median(measured[kept]):.2f}x")


if __name__ == "__main__":
    main()

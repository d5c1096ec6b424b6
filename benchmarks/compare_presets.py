#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""What each planning preset finds, with each readout, in a world where the actions decide what happens.

The motion world of `tests/test_planning.py`: a tiny world model trained for about 10 s on a 2 x 2 grid whose
actions move a square (4 moves or none) and recolour it (3 colours or none). Each preset of
`planning_surgical_wm.PLANNING_PRESETS` that plans without states (`vjepa2_ac_droid` needs DROID's poses) plans
toward 24 goals two random actions away (horizon 2, each plan played in the true world: goals reached), and infers
the move and the colour between 48 pairs of states one random action apart (horizon 1), once returning the best
sequence sampled (`readout="best"`) and once the final search distribution (`"mean"`, as Meta's planners act). Both
readouts read the same search (the same seed per case). The goals expected of random actions and chance (1/5 for the
move, 1/4 for the colour) are printed with them.

    python benchmarks/compare_presets.py [--presets vjepa2_ac_paper,surgical_wm --num_samples N --iterations N]

Prints a Markdown table (goals reached of 24, moves and colours of 48, seconds per readout) and, last, the goals
reached and actions inferred with the mean readout over those with the best, summed over the presets.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_planning import infer_actions, reach_goals, train_motion_world  # noqa: E402

from planning_surgical_wm import PLANNING_PRESETS, PLANNING_READOUTS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    stateless = [name for name, preset in PLANNING_PRESETS.items() if "state_rule" not in preset]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(stateless),
                        help=f"comma-separated presets (default: those without a state rule, {','.join(stateless)})")
    parser.add_argument("--num_samples", type=int, default=None, help="override every preset's samples per iteration")
    parser.add_argument("--iterations", type=int, default=None, help="override every preset's iterations")
    parser.add_argument("--goals", type=int, default=24, help="goals planned toward at horizon 2")
    parser.add_argument("--inferences", type=int, default=48, help="actions inferred at horizon 1")
    args = parser.parse_args(argv)
    args.presets = args.presets.split(",")
    unknown = [name for name in args.presets if name not in PLANNING_PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(unknown)}; the presets are {', '.join(PLANNING_PRESETS)}")
    needs_states = [name for name in args.presets if "state_rule" in PLANNING_PRESETS[name]]
    if needs_states:
        parser.error(f"{', '.join(needs_states)} move(s) a state token the motion world has none of")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # tensors this small only lose time to a second thread
    started = time.perf_counter()
    model, table = train_motion_world()
    print(f"motion world trained in {time.perf_counter() - started:.1f} s")
    overrides = {name: getattr(args, name) for name in ("num_samples", "iterations") if getattr(args, name)}
    rows, totals = [], {readout: [0, 0] for readout in PLANNING_READOUTS}
    for preset in args.presets:
        settings = {**PLANNING_PRESETS[preset], **overrides}
        for readout in PLANNING_READOUTS:
            options = {"preset": preset, "readout": readout, **overrides}
            started = time.perf_counter()
            goals = reach_goals(model, table, cases=args.goals, horizon=2, **options)
            inferred = infer_actions(model, table, cases=args.inferences, **options)
            seconds = time.perf_counter() - started
            totals[readout][0] += goals["reached"]
            totals[readout][1] += inferred["move"] + inferred["paint"]
            rows.append((preset, f"{settings['num_samples']} x {settings['iterations']}", readout, goals["reached"],
                         goals["reached_by_random"], inferred["move"], inferred["paint"], seconds))
            print(f"{preset} ({readout}): {goals['reached']}/{args.goals} goals, moves {inferred['move']}/"
                  f"{args.inferences}, colours {inferred['paint']}/{args.inferences} in {seconds:.1f} s", flush=True)
    print(f"\n| preset | samples x iterations | readout | goals reached (of {args.goals}) | expected at random | "
          f"moves / colours inferred (of {args.inferences}) | seconds |")
    print("| --- | --- | --- | --: | --: | --: | --: |")
    for preset, size, readout, reached, by_random, moves, colours, seconds in rows:
        print(f"| `{preset}` | {size} | {readout} | {reached} | {by_random:.1f} | {moves} / {colours} | "
              f"{seconds:.1f} |")
    print(f"\nchance: moves {args.inferences / 5:.1f}, colours {args.inferences / 4:.1f} of {args.inferences}")
    (best_goals, best_inferred), (mean_goals, mean_inferred) = totals["best"], totals["mean"]

    def ratio(mean: int, best: int) -> str:
        return f"{mean / best:.2f}x" if best else "n/a (none with the best readout)"

    print(f"mean over best readout, summed over {len(args.presets)} preset(s): goals {mean_goals}/{best_goals} = "
          f"{ratio(mean_goals, best_goals)}, actions inferred {mean_inferred}/{best_inferred} = "
          f"{ratio(mean_inferred, best_inferred)}")


if __name__ == "__main__":
    main()

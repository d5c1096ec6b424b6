#!/usr/bin/env python
"""The bundled demo, end to end on CPU in a few minutes (`make demo`):

1. writes the synthetic SurgVU-format sample (12 cases, H.264, noisy labels) and a tiny V-JEPA 2 checkpoint;
2. builds a world model on that encoder (`scripts/load_vjepa2_pretrained.py`);
3. trains it with `accelerate launch train_hf.py`, encoder frozen: each clip is decoded and encoded once, into the
   latent cache, and every epoch trains from there;
4. trains a task probe and a tool-presence probe on the frozen world model (`scripts/train_probe.py`), from the same
   latent cache;
5. evaluates in a fresh process (`scripts/evaluate_surgical_model.py`, which loads the exports with
   `from_pretrained(..., trust_remote_code=True)`): world-model error per horizon next to the copy-context baseline,
   with swapped actions, the surprise distribution, and the probes next to chance and majority; writes
   `report.json` and PNG figures and prints the table.
"""

import argparse
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args: list[str], cwd: str = REPO_ROOT, **env) -> None:
    print("\n$ " + " ".join(os.path.relpath(a, REPO_ROOT) if a.startswith(REPO_ROOT) else a for a in args),
          flush=True)
    subprocess.run(args, check=True, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--num_epochs", type=int, default=16)
    parser.add_argument("--probe_epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = os.path.abspath(args.output_dir)
    data, encoder, start = os.path.join(out, "surgvu"), os.path.join(out, "tiny-vjepa2"), os.path.join(out, "init")
    run_dir, cache = os.path.join(out, "run"), os.path.join(out, "arrow-cache")
    python = sys.executable

    if not os.path.exists(os.path.join(data, "synthetic_manifest.json")):
        run([python, "scripts/make_synthetic_surgvu.py", "--out", data, "--seed", str(args.seed), "--num_cases", "12"])
    run([python, "scripts/make_tiny_vjepa2.py", "--out", encoder, "--seed", str(args.seed)])
    run([python, "scripts/load_vjepa2_pretrained.py", "--encoder", encoder, "--save_path", start,
         "--action_dim", "56", "--predictor_hidden_size", "96", "--predictor_num_hidden_layers", "2",
         "--predictor_num_attention_heads", "4"])
    run([python, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "train_hf.py",
         "--data_root", data, "--dataset_cache_dir", cache, "--pretrained_checkpoint", start,
         "--output_dir", run_dir, "--num_epochs", str(args.num_epochs), "--batch_size", "8",
         "--learning_rate", "2e-3", "--warmup_epochs", "0.5", "--num_workers", "2", "--device", "cpu",
         "--checkpointing_steps", "50", "--checkpoints_total_limit", "2", "--report_to", "tensorboard",
         "--seed", str(args.seed)], TQDM_MININTERVAL="5")
    probes = {}
    for target in ("task", "tools"):
        probes[target] = os.path.join(out, f"probe_{target}")
        run([python, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "scripts/train_probe.py",
             "--world_model", os.path.join(run_dir, "best"), "--target", target, "--data_root", data,
             "--dataset_cache_dir", cache, "--cache_dir", os.path.join(run_dir, "latent_cache"),
             "--output_dir", probes[target], "--num_epochs", str(args.probe_epochs), "--batch_size", "8",
             "--learning_rate", "2e-3", "--probe_num_layers", "1", "--class_weights", "balanced",
             "--num_workers", "2", "--device", "cpu",
             "--report_to", "none", "--seed", str(args.seed)], TQDM_MININTERVAL="5")
    # A fresh process in another directory: the model code comes from the exported directories, not this clone.
    run([python, os.path.join(REPO_ROOT, "scripts", "evaluate_surgical_model.py"),
         "--checkpoint", os.path.join(run_dir, "best"), "--test_data", data, "--dataset_cache_dir", cache,
         "--cache_dir", os.path.join(run_dir, "latent_cache"),
         "--task_probe", os.path.join(probes["task"], "best"), "--tool_probe", os.path.join(probes["tools"], "best"),
         "--output", os.path.join(out, "report.json"), "--plots", os.path.join(out, "plots"), "--device", "cpu"],
        cwd=out)
    print(f"\nexports: {run_dir}/best and {run_dir}/final, probes in {probes['task']}/best and {probes['tools']}/best; "
          f"report: {out}/report.json, figures: {out}/plots; TensorBoard logs: {run_dir}/logs")


if __name__ == "__main__":
    main()

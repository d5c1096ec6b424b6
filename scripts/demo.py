#!/usr/bin/env python
"""The bundled demo: builds a world model on a tiny local V-JEPA 2, saves it, reloads it with
`AutoModel.from_pretrained(..., trust_remote_code=True)` and runs a forward pass and a rollout."""

import argparse
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args: list[str], **env) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=REPO_ROOT, env={**os.environ, **env})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="demo_output")
    args = parser.parse_args()
    out = os.path.abspath(args.output_dir)
    encoder_dir, model_dir = os.path.join(out, "tiny-vjepa2"), os.path.join(out, "world-model")
    python = sys.executable
    run([python, "scripts/make_tiny_vjepa2.py", "--out", encoder_dir])
    run([python, "scripts/load_vjepa2_pretrained.py", "--encoder", encoder_dir, "--save_path", model_dir,
         "--action_dim", "4", "--predictor_hidden_size", "96", "--predictor_num_hidden_layers", "2",
         "--predictor_num_attention_heads", "4"])
    check = (
        "import sys, torch\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "size = model.config.encoder_config.crop_size\n"
        "clip, actions = torch.randn(2, 8, 3, size, size), torch.randn(2, 8, model.config.action_dim)\n"
        "with torch.no_grad():\n"
        "    out = model(clip, actions)\n"
        "    latents = model.encode(clip)\n"
        "    future = model.rollout(latents[:, :2], actions, steps=4)\n"
        "print(f'{type(model).__name__}: loss {out.loss:.4f} (temporal {out.temporal_loss:.4f}, '\n"
        "      f'contrastive {out.contrastive_loss:.4f}); latents {tuple(latents.shape)}; rollout {tuple(future.shape)}')\n"
    )
    # A fresh process in another directory: the model code comes from the saved directory, not from this clone.
    print(f"$ python -c <AutoModel.from_pretrained({model_dir!r}, trust_remote_code=True) ...>", flush=True)
    subprocess.run([python, "-c", check, model_dir], check=True, cwd=out, env={**os.environ, "HF_HUB_OFFLINE": "1"})


if __name__ == "__main__":
    main()

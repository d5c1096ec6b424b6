# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""What the training scripts (train_hf.py, scripts/train_probe.py) and the tools around them (the evaluation, the
latent cache, planning) share: modules of helpers, imported by name, no trainer class.

- `arguments`: the model, data and training arguments and how they are read.
- `accelerator`: the Accelerator with logging and seed, trackers, the cosine schedule.
- `data`: `--dataset` read through dataset_surgvu.catalog, its splits, the clip datasets (latent cache or decoded).
- `world_model`: loading the world model to train, seeded validation per clip.
- `checkpoints`: atomic step-named checkpoints, resuming.
- `guard`: the non-finite guard, the bad-step limit, debugging hooks.
- `export`: transformers exports, the world model's card, the Hub push.
- `probes`: label counts of a probe target (the targets themselves are dataset_surgvu.catalog's), loading a probe.
- `loading`: reading a saved model's config (a directory or a Hub id) with clear errors, checking that a folder's
  weights are those its config describes, loading a world model or probe export.
- `evaluation`: the world model's error per step and horizon next to the copy baseline (surprise, rollout).
- `planning`: planning the actions between two moments of a SurgVU video, next to the labelled ones.
- `surprise`: the live surprise monitor (a video followed step by step with the predictor's KV cache) and the
  calibration of its alert threshold.
"""

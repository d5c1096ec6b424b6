# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Reading what a saved model is before loading it: its config.json from a directory or a Hub id, with errors that
name the file (shared by the evaluation and planning)."""

import json
from pathlib import Path


def fail(message: str) -> None:
    raise SystemExit(f"error: {message}")


def checkpoint_config(path: str) -> tuple[dict, str]:
    """The saved config of a checkpoint directory or Hub id, and where it was read from (for error messages)."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        try:
            return json.loads(config_file.read_text()), str(config_file)
        except ValueError as error:
            fail(f"{config_file}: not valid JSON ({error})")
    if Path(path).exists():
        fail(f"{config_file}: missing: {path} is not a transformers checkpoint directory")
    from huggingface_hub import hf_hub_download

    try:
        downloaded = hf_hub_download(path, "config.json")
    except Exception as error:  # offline, missing repo, no such file: all the same to the user
        fail(f"{path}/config.json: cannot be read ({type(error).__name__}: {str(error).splitlines()[0]})")
    return json.loads(Path(downloaded).read_text()), f"{path}/config.json"


def is_probe(config: dict) -> bool:
    return any(name.endswith("ForVideoClassification") for name in config.get("architectures") or [])

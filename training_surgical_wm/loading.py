# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Reading what a saved model is before loading it: its config.json from a directory or a Hub id, with errors that
name the file, and the time base of its steps (shared by the evaluation and planning)."""

import json
import logging
from pathlib import Path

from .arguments import DataArguments


logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # beside an export's weights: "training_arguments" holds the run's data options


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


def training_settings(path: str) -> tuple[dict, str | None]:
    """The data options of the run that exported `path` (a directory or a Hub id), saved beside the weights in
    `trainer_state.json`, and the file they came from; `({}, None)` when there is none."""
    state_file = Path(path) / TRAINER_STATE
    if not state_file.is_file():
        if Path(path).exists():
            return {}, None
        try:  # a Hub id: its export may carry the file too
            from huggingface_hub import hf_hub_download

            state_file = Path(hf_hub_download(path, TRAINER_STATE))
        except Exception:
            return {}, None
    try:
        return dict(json.loads(state_file.read_text()).get("training_arguments") or {}), str(state_file)
    except (ValueError, AttributeError) as error:
        logger.warning("%s: unreadable (%s); its data options are ignored", state_file, error)
        return {}, None


def time_base(fps_flag: float | None, config, where: str, settings: dict,
              settings_file: str | None) -> tuple[float, str]:
    """The frame rate of a model's steps and where it was read: `--fps`, else the model config's `fps` (read from
    `where`), else (an export from before the config held it) the run's data options in trainer_state.json
    (`training_settings`), else the data default. Planning and the evaluation sample clips at it."""
    if fps_flag is not None:
        return fps_flag, "--fps"
    if config.fps is not None:
        return float(config.fps), f"the model's config ({where})"
    if settings.get("fps"):
        logger.info("the model's config has no fps (an export from before it held one): the run's fps from %s",
                    settings_file)
        return float(settings["fps"]), settings_file
    logger.info("neither the model's config nor a %s beside the weights gives the fps: %g fps (--fps sets it)",
                TRAINER_STATE, DataArguments.fps)
    return DataArguments.fps, "default"

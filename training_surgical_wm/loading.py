# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Reading what a saved model is before loading it: its config.json from a directory or a Hub id, with errors that
name the file, whether a local folder's weights are those its config describes, and the time base of its steps
(shared by the training scripts, the evaluation and planning)."""

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import VJEPA2Config, VJEPA2Model

from configuration_surgical_wm import SurgicalWorldModelConfig
from modeling_surgical_wm import SurgicalWorldModel, SurgicalWorldModelForVideoClassification

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


def world_model_config(path: str) -> tuple[dict, str]:
    """The saved config of the world model at `path` (a directory or a Hub id) and where it was read; one line when
    `path` is neither, or holds something other than a world model (another model, or a probe of one)."""
    if not Path(path).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        fail(f"{path}: no such checkpoint directory")
    config, where = checkpoint_config(path)
    if config.get("model_type") != "surgical_wm":
        fail(f"{where}: model_type {config.get('model_type')!r}: not a surgical world model (expected model_type "
             "'surgical_wm', a train_hf.py export or a scripts/load_vjepa2_pretrained.py directory)")
    if is_probe(config):
        fail(f"{where}: a probe ({', '.join(config['architectures'])}), not a world model: give the world model it "
             "was trained on")
    return config, where


def load_checkpoint(path: str):
    """(world model, probe or None) from `path`: a world model, or a probe (which holds its world model). A local
    folder's weights are checked against its config first: transformers would fill missing ones at random."""
    config, where = checkpoint_config(path)
    if config.get("model_type") != "surgical_wm":
        fail(f"{where}: model_type {config.get('model_type')!r}: not a surgical world model nor a probe of one "
             "(expected model_type 'surgical_wm', from train_hf.py or scripts/train_probe.py)")
    if Path(path).is_dir():
        check_weights(path, config)
    from transformers import AutoModel, AutoModelForVideoClassification

    if is_probe(config):
        probe = AutoModelForVideoClassification.from_pretrained(path, trust_remote_code=True).eval()
        return probe.world_model, probe
    return AutoModel.from_pretrained(path, trust_remote_code=True).eval(), None


MODEL_KINDS = {"surgical_wm": "a surgical world model", "vjepa2": "a V-JEPA 2 checkpoint"}  # model_type -> wording
WEIGHTS_NAME, WEIGHTS_INDEX_NAME = "model.safetensors", "model.safetensors.index.json"


def check_checkpoint_folder(folder: str, model_types: tuple[str, ...] = ("surgical_wm", "vjepa2")) -> dict:
    """The config of a local checkpoint folder of one of `model_types` whose weights are those its config describes
    (`check_weights`); one line naming the folder and what it holds otherwise."""
    config, where = checkpoint_config(folder)
    if config.get("model_type") not in model_types:
        fail(f"{where}: model_type {config.get('model_type')!r}; expected "
             f"{' or '.join(MODEL_KINDS[model_type] for model_type in model_types)}")
    check_weights(folder, config)
    return config


def check_weights(folder: str, config: dict) -> None:
    """Stops with one line naming `folder` when its safetensors weights are missing, cut short, or do not match the
    model its `config` (a surgical world model, a probe of one, or V-JEPA 2) describes.

    transformers' `from_pretrained` only warns about missing or unexpected weights and initialises what is missing at
    random: a folder of another model, or one whose weights were lost, would train or evaluate a random encoder.
    Only the safetensors headers are read, and the model is built on the meta device: no weight is loaded here.
    """
    saved = saved_shapes(Path(folder))
    try:
        if config.get("model_type") == "vjepa2":
            model_class, model_config = VJEPA2Model, VJEPA2Config.from_dict(config)
        else:
            model_class = SurgicalWorldModelForVideoClassification if is_probe(config) else SurgicalWorldModel
            model_config = SurgicalWorldModelConfig.from_dict(config)
        with torch.device("meta"):
            expected = {name: tuple(tensor.shape) for name, tensor in model_class(model_config).state_dict().items()}
    except (ValueError, TypeError, KeyError) as error:
        fail(f"{folder}/config.json: not a valid {config.get('model_type')} config ({error})")
    if model_class is VJEPA2Model:
        # Only V-JEPA 2's encoder is used, saved by VJEPA2Model or under the `vjepa2.` prefix of its task models.
        prefix = f"{VJEPA2Model.base_model_prefix}."
        saved = {name.removeprefix(prefix): shape for name, shape in saved.items()}
        saved = {name: shape for name, shape in saved.items() if name.startswith("encoder.")}
        expected = {name: shape for name, shape in expected.items() if name.startswith("encoder.")}
    # The EMA target encoder is the one optional part: loading starts it from the encoder when the file has none,
    # and a frozen model has no use for one.
    missing, unexpected, reshaped = shape_differences(
        {name: shape for name, shape in saved.items() if "target_encoder." not in name},
        {name: shape for name, shape in expected.items() if "target_encoder." not in name})
    reshaped = [f"{name}: {list(saved[name])} saved, {list(expected[name])} in config.json" for name in reshaped]
    problems = [f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                for what, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
                if names]
    if problems:
        fail(f"{folder}: the weights do not match its config.json ({config.get('model_type')}): {'; '.join(problems)}")


def shape_differences(saved: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
                      ) -> tuple[list[str], list[str], list[str]]:
    """The tensor names `expected` has and `saved` lacks, those `saved` has and `expected` lacks, and those both have
    with other shapes (each in its dict's order)."""
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    reshaped = [name for name, shape in expected.items() if name in saved and tuple(saved[name]) != tuple(shape)]
    return missing, unexpected, reshaped


def saved_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of a folder's `model.safetensors` (or of the shards its index lists), read
    from the headers; one line naming the file when a file is missing or cut short. Never a pickle."""
    if (folder / WEIGHTS_NAME).is_file():
        files = [folder / WEIGHTS_NAME]
    elif (folder / WEIGHTS_INDEX_NAME).is_file():
        try:
            weight_map = json.loads((folder / WEIGHTS_INDEX_NAME).read_text())["weight_map"]
            files = sorted({folder / name for name in weight_map.values()})
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            fail(f"{folder / WEIGHTS_INDEX_NAME}: not a safetensors index ({error})")
    else:
        others = sorted(path.name for path in folder.glob("*") if path.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        fail(f"{folder}: no {WEIGHTS_NAME} (nor {WEIGHTS_INDEX_NAME}): the weights are missing"
             + (f"; {', '.join(others)} are not read (pickles): save the model as safetensors" if others else ""))
    shapes = {}
    for file in files:
        if not file.is_file():
            fail(f"{file}: missing, though {WEIGHTS_INDEX_NAME} lists it")
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError) as error:
            fail(f"{file}: not a complete safetensors file, cut short or damaged ({str(error).splitlines()[0]})")
    return shapes


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

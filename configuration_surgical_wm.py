# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the surgical world model: a V-JEPA 2 encoder and an action-conditioned predictor."""

import math

from transformers import PreTrainedConfig, VJEPA2Config


# Encoder presets: the `facebook/vjepa2-*` checkpoints and their dimensions (ViT-L/H/g of V-JEPA 2).
VJEPA2_PRESETS = {
    "vitl": {
        "checkpoint": "facebook/vjepa2-vitl-fpc64-256",
        "encoder": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4.0,
                    "crop_size": 256},
    },
    "vith": {
        "checkpoint": "facebook/vjepa2-vith-fpc64-256",
        "encoder": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "mlp_ratio": 4.0,
                    "crop_size": 256},
    },
    "vitg": {
        "checkpoint": "facebook/vjepa2-vitg-fpc64-256",
        "encoder": {"hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 22, "mlp_ratio": 48 / 11,
                    "crop_size": 256},
    },
    "vitg384": {
        "checkpoint": "facebook/vjepa2-vitg-fpc64-384",
        "encoder": {"hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 22, "mlp_ratio": 48 / 11,
                    "crop_size": 384},
    },
}

# How a transition t -> t + 1 takes its action from per-step labels (`SurgicalWorldModel.transition_actions`).
ACTION_PAIRINGS = ("current", "next")
# The pairing of exports whose config.json predates `action_pairing`: what they were trained with.
LEGACY_ACTION_PAIRING = "current"
# The values of fields whose default changed, for exports whose config.json predates the field: what they were
# built and trained with, so they keep their meaning.
LEGACY_DEFAULTS = {"action_pairing": LEGACY_ACTION_PAIRING, "action_conditioning": "token", "rollout_steps": 2}


# How actions enter the predictor: one token per step, or that token and an AdaLN modulation of every layer.
ACTION_CONDITIONINGS = ("token", "adaln")
# Where the contrastive loss finds each prediction's negatives: the same step of the batch's other clips, or every
# other step of the batch (its own clip's too, so that a batch of one clip has some).
CONTRASTIVE_NEGATIVES = ("batch", "clip_steps")


class SurgicalWorldModelConfig(PreTrainedConfig):
    r"""
    Configuration of [`SurgicalWorldModel`]: a V-JEPA 2 video encoder whose per-step latents feed an
    action-conditioned, block-causal predictor (V-JEPA 2-AC style). Defaults follow V-JEPA 2-AC on a ViT-L encoder,
    except how actions enter and the rollout loss's length, chosen by measurement (README "Action levers").

    Args:
        encoder_config (`VJEPA2Config` or `dict`, *optional*):
            The V-JEPA 2 encoder (only its encoder half is used). Defaults to `facebook/vjepa2-vitl-fpc64-256`.
        encoder_name_or_path (`str`, *optional*):
            Where the encoder weights came from (a `facebook/vjepa2-*` id or a local directory); provenance only.
        predictor_hidden_size (`int`, *optional*, defaults to 1024):
            Width of the predictor transformer.
        predictor_num_hidden_layers (`int`, *optional*, defaults to 24):
            Depth of the predictor transformer.
        predictor_num_attention_heads (`int`, *optional*, defaults to 16):
            Attention heads of the predictor.
        predictor_mlp_ratio (`float`, *optional*, defaults to 4.0):
            Hidden size of the predictor MLPs relative to `predictor_hidden_size`.
        predictor_drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth of the predictor layers.
        predictor_position_embedding (`bool`, *optional*, defaults to `False`):
            Add a learned embedding of each patch's place in the grid to the predictor's input tokens (shared by every
            step), on top of the RoPE of its attention, which sees only where tokens are relative to each other. An
            action that draws something at a fixed place (a task's anatomy, an arm's instrument) needs the place:
            with a small grid, whose tokens learn little of it from their neighbours, it lowers every error
            (README "Where each token is"). V-JEPA 2-AC's predictor has none, so a conversion leaves it off.
        predict_residual (`bool`, *optional*, defaults to `True`):
            The predictor outputs the change z_{t+1} - z_t (added back to z_t) rather than z_{t+1} itself; a new
            predictor's output projection starts at zero, so an untrained one predicts that nothing moves.
        action_dim (`int`, *optional*, defaults to 7):
            Size of the action vector given at every step (0: a pure video world model, no action token).
        state_dim (`int`, *optional*, defaults to 0):
            Size of the optional proprioceptive state vector per step (0: no state token).
        action_spec (`list[str]`, *optional*):
            One name per action dimension, saying what it means (e.g. `"USM1/needle driver"`).
        discrete_action_groups (`list[str]`, *optional*):
            Groups of action dimensions that together make one categorical choice, each named by the prefix of its
            `action_spec` names before the first `/` (`"USM1"` for `"USM1/needle driver"`, ...): a one-hot over the
            group's dimensions, or all zeros for none. Planning samples these from a categorical distribution and
            every other dimension from a Gaussian. SurgVU: `["USM1", "USM2", "USM3", "USM4", "task"]`.
        action_pairing (`str`, *optional*, defaults to `"next"`):
            Which per-step label is the action of the transition from step t to step t + 1: `"next"`, the labels at
            t + 1 (the tool installed or the task begun during the transition: what happens in it); `"current"`,
            the labels at t (the labels in force before it, one step late for a change; the pairing of exports
            whose config has no `action_pairing`). Data and latent caches keep the labels per step; the model pairs
            them (`transition_actions`), in training, evaluation and planning alike.
        action_prior (`dict`, *optional*):
            The training data's action statistics, written by train_hf.py (`empirical_action_prior` of
            planning_surgical_wm): per discrete group its options, their marginal frequencies and step-to-step
            transition counts, and the combinations of options seen in one step, which
            `plan(action_prior=..., seen_only=...)` samples from.
        frames_per_step (`int`, *optional*, defaults to 1):
            Frames that make one world-model step: 1 (the frame is repeated into a tubelet) or the encoder's
            `tubelet_size` (one real tubelet).
        fps (`float`, *optional*):
            Frames per second sampled from the video, the time base of a step (`None`: unknown, an older export).
        rollout_steps (`int`, *optional*, defaults to 4):
            Autoregressive steps of the rollout loss (V-JEPA 2-AC uses 2; 4 lowered the rollout error on the demo's
            held-out clips, README "Action levers"; 2 for exports whose config.json predates the field).
        rollout_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the rollout loss next to the teacher-forcing loss in the training objective (V-JEPA 2-AC: 1).
            `rollout_steps=2, rollout_loss_weight=1`, with `contrastive_weight=0` and `normalize_predictions=True`,
            is V-JEPA 2-AC's loss exactly (`app/vjepa_droid/train.py`, `auto_steps: 2`, `loss_exp: 1`): the mean L1
            of all teacher-forced predictions plus the mean L1 of a 2-step rollout from the first step.
        action_conditioning (`str`, *optional*, defaults to `"adaln"`):
            How actions reach the predictor: `"token"`, one action token per step (V-JEPA 2-AC), or `"adaln"`, that
            token and, in every layer, a shift, scale and gate of the step's tokens computed from the step's action
            embedding (AdaLN, as Meta's JEPA-WMs). The modulation starts at zero, gates as `1 + gate`, so an adaln
            model starts exactly where the token model with the same weights is. The default since it lowered the
            own-action error and raised the swapped-action error on the demo's held-out clips (README "Action
            levers"); `"token"` for exports whose config.json predates the field. A model without actions
            (`action_dim=0`) has nothing to modulate with: its predictor has no AdaLN.
        action_spatial_embedding (`bool`, *optional*, defaults to `False`):
            Add to each token of a step a learnt vector of the step's action and the token's place in the grid: a
            linear map from the action to `grid x grid x hidden` values, zero at initialisation (a model starts where
            the one without it is). A label that names something at a fixed place (a task's anatomy, an arm's
            instrument at its port) is drawn there directly, where the action token and AdaLN reach every token
            alike. It lets the energy tell the labelled tool from the others about twice as often on the demo's
            held-out clips, at some cost in own-action error on 7 training cases (README "Actions at their place")
            and none on 13 or more (`make demo` turns it on: README "The demo on 24 cases"). Off by default; V-JEPA
            2-AC has none.
        action_spatial_rank (`int`, *optional*):
            With `action_spatial_embedding`, the map goes through this many values (each action a mix of that many
            learnt maps over the grid): `action_dim * rank + rank * grid * grid * hidden` parameters instead of
            `action_dim * grid * grid * hidden`. `None`: the full map.
        action_dropout (`float`, *optional*, defaults to 0.0):
            Probability that training replaces a transition's action with a learned null action ("actions
            unknown"); a model trained with it takes NaN actions as unknown at inference.
        action_change_weight (`float`, *optional*, defaults to 1.0):
            Weight, in the training objective, of the transitions whose action differs from the transition before
            (the others weigh 1): where the labelled actions change, with the labels of t+1 paired with t -> t+1.
        action_contrastive_weight (`float`, *optional*, defaults to 0.0):
            Weight of the action-contrastive loss: InfoNCE over L1 distances to the true next latent, the
            prediction under the transition's own action against predictions under other actions of the batch.
        action_contrastive_negatives (`int`, *optional*, defaults to 4):
            Other actions per transition in the action-contrastive loss.
        action_contrastive_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the action-contrastive loss, in units of the L1 distance.
        contrastive_weight (`float`, *optional*, defaults to 0.1):
            Weight of the InfoNCE loss between predicted and true future latents.
        contrastive_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the InfoNCE loss.
        contrastive_negatives (`str`, *optional*, defaults to `"batch"`):
            The futures each prediction is told apart from: `"batch"`, the same step of the batch's other clips
            (none at batch 1, where the loss is 0), or `"clip_steps"`, every other step of the batch, its own
            clip's included (at batch 1 on the demo, no better than no contrastive term: see the README).
        use_mask_aux (`bool`, *optional*, defaults to `False`):
            Add the mask-denoising auxiliary loss.
        lambda_mask (`float`, *optional*, defaults to 0.1):
            Weight of the mask-denoising loss.
        mask_ratio (`float`, *optional*, defaults to 0.5):
            Fraction of the context patch tokens replaced by a mask token for the mask-denoising loss.
        freeze_encoder (`bool`, *optional*, defaults to `True`):
            Keep the encoder frozen (no gradients, eval mode). When `False`, targets come from an EMA copy.
        ema_momentum (`float`, *optional*, defaults to 0.999):
            Momentum of the EMA target encoder (only used when the encoder trains).
        normalize_latents (`bool`, *optional*, defaults to `True`):
            Layer-norm the encoder outputs (without affine) into the latent states, as V-JEPA 2-AC does.
        normalize_predictions (`bool`, *optional*, defaults to `False`):
            Layer-norm every prediction of the predictor (without affine, eps 1e-5), as V-JEPA 2-AC's
            `normalize_reps` does: what `predict` returns, what a rollout feeds back, what `energy` and `plan`
            compare and what the losses score. Needs `normalize_latents`, which normalises the targets alike.
            `True` for converted V-JEPA 2-AC models; `False` for the models trained here before it existed.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialiser of the predictor.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the predictor's layer norms.
        probe_num_layers (`int`, *optional*, defaults to 3):
            Self-attention blocks of the attentive probe of [`SurgicalWorldModelForVideoClassification`] before its
            cross-attention block with a learned query (V-JEPA 2's `num_pooler_layers`); 0 keeps only the latter.
        probe_use_predictor (`bool`, *optional*, defaults to `False`):
            The probe also reads the predictor's last hidden states (after its final norm) over the clip's patch
            tokens, computed with zero actions so that no action (in SurgVU, the labels themselves) reaches the probe.
            Needs `state_dim=0`.
        probe_target (`str`, *optional*):
            What the probe's labels are (e.g. `"task"` or `"tools"`); provenance only.
        probe_class_weights (`list[float]`, *optional*):
            One non-negative weight per label (`num_labels` of them): the cross-entropy `weight` for
            `problem_type="single_label_classification"`, the BCE `pos_weight` for `"multi_label_classification"`.
            Rare classes (e.g. sterility breaches) get a larger weight.
        probe_world_model_fingerprints (`dict[str, str]`, *optional*):
            SHA-256 of the weights of each world-model module the probe reads, taken from the world model it was
            trained on: `{"encoder": ...}`, and `"predictor"` with `probe_use_predictor`. The evaluation refuses a
            world model whose weights differ, since the probe's classes were learned on those exact features.
        num_frames (`int`, *optional*):
            Frames of the clips a probe was trained on, recorded by scripts/train_probe.py: the video-classification
            pipeline samples that many from a video (its first clip) at `fps` (`None`: every step of the video).
        data_split (`dict`, *optional*):
            How the training data was split, recorded by the training scripts: the dataset, the case-split options and
            the cases (takes) of each split, and `selection_split`, the split whose loss chose the export. Later
            scripts read the same split by default and refuse another (`None`: an older export, taken as chosen on
            validation).

    The classification head also reads PreTrainedConfig's own `num_labels`, `id2label`, `label2id` and
    `problem_type` (`"single_label_classification"` or `"multi_label_classification"`).

    Example:

    ```python
    >>> from configuration_surgical_wm import SurgicalWorldModelConfig
    >>> config = SurgicalWorldModelConfig.from_preset("vitl", action_dim=56)
    ```"""

    model_type = "surgical_wm"
    sub_configs_defaults = {"encoder_config": VJEPA2Config}

    # encoder
    encoder_config: dict | PreTrainedConfig | None = None
    encoder_name_or_path: str | None = None
    # predictor
    predictor_hidden_size: int = 1024
    predictor_num_hidden_layers: int = 24
    predictor_num_attention_heads: int = 16
    predictor_mlp_ratio: float | int = 4.0
    predictor_drop_path_rate: float | int = 0.0
    predictor_position_embedding: bool = False
    predict_residual: bool = True
    # actions and states
    action_dim: int = 7
    state_dim: int = 0
    action_spec: list[str] | None = None
    discrete_action_groups: list[str] | None = None
    action_pairing: str = "next"
    action_prior: dict | None = None
    # time
    frames_per_step: int = 1
    fps: float | int | None = None
    rollout_steps: int = 4
    rollout_loss_weight: float | int = 1.0
    # how actions enter, and the training terms that make the predictor use them
    action_conditioning: str = "adaln"
    action_spatial_embedding: bool = False
    action_spatial_rank: int | None = None
    action_dropout: float | int = 0.0
    action_change_weight: float | int = 1.0
    action_contrastive_weight: float | int = 0.0
    action_contrastive_negatives: int = 4
    action_contrastive_temperature: float | int = 0.1
    # losses
    contrastive_weight: float | int = 0.1
    contrastive_temperature: float | int = 0.1
    contrastive_negatives: str = "batch"
    use_mask_aux: bool = False
    lambda_mask: float | int = 0.1
    mask_ratio: float | int = 0.5
    # encoder training
    freeze_encoder: bool = True
    ema_momentum: float | int = 0.999
    normalize_latents: bool = True
    normalize_predictions: bool = False
    # initialisation
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    # attentive probe (SurgicalWorldModelForVideoClassification)
    probe_num_layers: int = 3
    probe_use_predictor: bool = False
    probe_target: str | None = None
    probe_class_weights: list[float] | None = None
    probe_world_model_fingerprints: dict[str, str] | None = None
    num_frames: int | None = None
    # the training data
    data_split: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_values()

    def _check_values(self):
        encoder = self.encoder_config
        for name in ("predictor_hidden_size", "predictor_num_hidden_layers", "predictor_num_attention_heads",
                     "action_dim", "state_dim", "frames_per_step", "rollout_steps", "action_contrastive_negatives"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"`{name}` must be an integer, got {value!r}.")
        for name in ("predictor_mlp_ratio", "predictor_drop_path_rate", "contrastive_weight",
                     "contrastive_temperature", "lambda_mask", "mask_ratio", "ema_momentum", "rollout_loss_weight",
                     "action_dropout", "action_change_weight", "action_contrastive_weight",
                     "action_contrastive_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"`{name}` must be a number, got {value!r}.")
        positive = {
            "predictor_hidden_size": self.predictor_hidden_size,
            "predictor_num_hidden_layers": self.predictor_num_hidden_layers,
            "predictor_num_attention_heads": self.predictor_num_attention_heads,
            "predictor_mlp_ratio": self.predictor_mlp_ratio,
            "rollout_steps": self.rollout_steps,
            "contrastive_temperature": self.contrastive_temperature,
            "frames_per_step": self.frames_per_step,
            "action_contrastive_negatives": self.action_contrastive_negatives,
            "action_contrastive_temperature": self.action_contrastive_temperature,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"`{name}` must be positive, got {value!r}.")
        if not isinstance(self.predictor_position_embedding, bool):
            raise ValueError(
                f"`predictor_position_embedding` must be a bool, got {self.predictor_position_embedding!r}.")
        if not isinstance(self.action_spatial_embedding, bool):
            raise ValueError(f"`action_spatial_embedding` must be a bool, got {self.action_spatial_embedding!r}.")
        if self.action_spatial_rank is not None and (
            isinstance(self.action_spatial_rank, bool) or not isinstance(self.action_spatial_rank, int)
            or self.action_spatial_rank < 1
        ):
            raise ValueError(
                f"`action_spatial_rank` must be a positive integer or None (the full map), got "
                f"{self.action_spatial_rank!r}.")
        if self.num_frames is not None and (isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int)
                                            or self.num_frames < 1):
            raise ValueError(f"`num_frames` must be a positive number of frames or None, got {self.num_frames!r}.")
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, (int, float))
                                     or not self.fps > 0):
            raise ValueError(f"`fps` must be a positive number of frames per second or None, got {self.fps!r}.")
        for name, value in {"action_dim": self.action_dim, "state_dim": self.state_dim,
                            "contrastive_weight": self.contrastive_weight, "lambda_mask": self.lambda_mask,
                            "predictor_drop_path_rate": self.predictor_drop_path_rate,
                            "rollout_loss_weight": self.rollout_loss_weight,
                            "action_change_weight": self.action_change_weight,
                            "action_contrastive_weight": self.action_contrastive_weight}.items():
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
        if self.predictor_hidden_size % self.predictor_num_attention_heads != 0:
            raise ValueError(
                f"`predictor_hidden_size` ({self.predictor_hidden_size}) must be divisible by "
                f"`predictor_num_attention_heads` ({self.predictor_num_attention_heads})."
            )
        if self.predictor_hidden_size // self.predictor_num_attention_heads < 6:
            raise ValueError(
                "The predictor's head size (`predictor_hidden_size / predictor_num_attention_heads` = "
                f"{self.predictor_hidden_size // self.predictor_num_attention_heads}) must be at least 6 for 3D RoPE."
            )
        if self.frames_per_step not in (1, encoder.tubelet_size):
            raise ValueError(
                f"`frames_per_step` must be 1 (a frame repeated into a tubelet) or the encoder's tubelet_size "
                f"({encoder.tubelet_size}), got {self.frames_per_step}."
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in (0, 1), got {self.mask_ratio!r}.")
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ValueError(f"`ema_momentum` must be in [0, 1], got {self.ema_momentum!r}.")
        if self.normalize_predictions and not self.normalize_latents:
            raise ValueError(
                "`normalize_predictions=True` compares layer-normed predictions with the latents: it needs "
                "`normalize_latents=True` too (V-JEPA 2-AC's `normalize_reps` normalises both)."
            )
        self._check_action_training()
        if self.action_spec is not None and len(self.action_spec) != self.action_dim:
            raise ValueError(
                f"`action_spec` names {len(self.action_spec)} dimensions but `action_dim` is {self.action_dim}."
            )
        self._check_action_groups(self.discrete_action_groups)
        if self.contrastive_negatives not in CONTRASTIVE_NEGATIVES:
            raise ValueError(f"`contrastive_negatives` must be one of {list(CONTRASTIVE_NEGATIVES)}, got "
                             f"{self.contrastive_negatives!r}.")
        if self.action_pairing not in ACTION_PAIRINGS:
            raise ValueError(f"`action_pairing` must be one of {list(ACTION_PAIRINGS)}, got {self.action_pairing!r}.")
        if encoder.crop_size % encoder.patch_size != 0:
            raise ValueError(
                f"The encoder's crop_size ({encoder.crop_size}) must be a multiple of its patch_size "
                f"({encoder.patch_size})."
            )
        self._check_probe_values()

    def _check_action_training(self) -> None:
        if self.action_conditioning not in ACTION_CONDITIONINGS:
            raise ValueError(
                f"`action_conditioning` must be one of {list(ACTION_CONDITIONINGS)}, got {self.action_conditioning!r}."
            )
        if not 0.0 <= self.action_dropout < 1.0:
            raise ValueError(f"`action_dropout` must be in [0, 1), got {self.action_dropout!r}.")
        if self.action_dim == 0:
            uses_actions = {"action_dropout": self.action_dropout > 0,
                            "action_change_weight": self.action_change_weight != 1,
                            "action_contrastive_weight": self.action_contrastive_weight > 0,
                            "action_spatial_embedding": self.action_spatial_embedding}
            named = [name for name, used in uses_actions.items() if used]
            if named:
                raise ValueError(f"{named} need actions, but `action_dim` is 0 (a pure video world model).")

    def _check_action_groups(self, groups: list[str] | None) -> None:
        if groups is None:
            return
        if not isinstance(groups, (list, tuple)) or not all(isinstance(group, str) and group for group in groups):
            raise ValueError(f"`discrete_action_groups` must be a list of group names, got {groups!r}.")
        if self.action_spec is None:
            raise ValueError("`discrete_action_groups` names groups of `action_spec`, which is not set.")
        if len(set(groups)) != len(groups):
            raise ValueError(f"`discrete_action_groups` repeats a group: {list(groups)}.")
        prefixes = {name.split("/", 1)[0] for name in self.action_spec if "/" in name}
        unknown = [group for group in groups if group not in prefixes]
        if unknown:
            raise ValueError(
                f"`discrete_action_groups` {unknown} name no dimension of `action_spec` (its names would start with "
                f"'<group>/'; the groups there are {sorted(prefixes)})."
            )

    @staticmethod
    def spec_groups(action_spec: list[str]) -> list[str]:
        """The groups an action spec names, in order: the prefixes before the first `/` (`USM1`, ..., `task`)."""
        return list(dict.fromkeys(name.split("/", 1)[0] for name in action_spec if "/" in name))

    def action_groups(self, names: list[str] | None = None) -> list[tuple[str, list[int]]]:
        """The categorical groups `(group, [action dimension, ...])`, in order, of `discrete_action_groups`, or of
        other group names of `action_spec` (checked as the config checks its own, with the same errors)."""
        if names is None:
            names = self.discrete_action_groups
        else:
            self._check_action_groups(names)
        spec = self.action_spec or []
        return [(group, [index for index, name in enumerate(spec) if name.split("/", 1)[0] == group and "/" in name])
                for group in names or []]

    def categorical_groups(self) -> tuple[list[tuple[str, list[int]]], list[str] | None]:
        """The categorical groups `(group, [action dimension, ...])` that planning and action inference choose options
        of: those of `discrete_action_groups`, else those of the `action_spec` prefixes (an older export, or one built
        without train_hf.py), whose names come second (for `plan(discrete_groups=...)`; None where the config names
        its groups). No groups where the config has neither."""
        if self.discrete_action_groups is not None:
            return self.action_groups(), None
        if not self.action_spec:
            return [], None
        names = self.spec_groups(self.action_spec)
        return self.action_groups(names), names

    def _check_probe_values(self):
        """Checks the attentive probe's fields (also called by the classification model, after `from_pretrained`
        has set fields given as keyword arguments)."""
        if isinstance(self.probe_num_layers, bool) or not isinstance(self.probe_num_layers, int):
            raise ValueError(f"`probe_num_layers` must be an integer, got {self.probe_num_layers!r}.")
        if self.probe_num_layers < 0:
            raise ValueError(f"`probe_num_layers` must be >= 0, got {self.probe_num_layers}.")
        if not isinstance(self.probe_use_predictor, bool):
            raise ValueError(f"`probe_use_predictor` must be a bool, got {self.probe_use_predictor!r}.")
        if self.probe_target is not None and not isinstance(self.probe_target, str):
            raise ValueError(f"`probe_target` must be a string or None, got {self.probe_target!r}.")
        fingerprints = self.probe_world_model_fingerprints
        if fingerprints is not None and not (
            isinstance(fingerprints, dict) and all(isinstance(value, str) for value in fingerprints.values())
            and set(fingerprints) <= {"encoder", "predictor"}
        ):
            raise ValueError(
                "`probe_world_model_fingerprints` must map 'encoder' (and 'predictor') to SHA-256 strings, got "
                f"{fingerprints!r}."
            )
        weights = self.probe_class_weights
        if weights is None:
            return
        if not isinstance(weights, (list, tuple)) or not all(
            not isinstance(w, bool) and isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights
        ):
            raise ValueError(
                f"`probe_class_weights` must be a list of finite non-negative numbers, one per label, got {weights!r}."
            )
        if len(weights) != self.num_labels:
            raise ValueError(
                f"`probe_class_weights` has {len(weights)} weights but there are {self.num_labels} labels "
                "(`num_labels` / `id2label`): give one weight per label."
            )

    @property
    def tokens_per_step(self) -> int:
        """Patch tokens of one step's latent: (crop_size / patch_size) ** 2."""
        return (self.encoder_config.crop_size // self.encoder_config.patch_size) ** 2

    @property
    def latent_dim(self) -> int:
        """Width of the latent states: the encoder's hidden size."""
        return self.encoder_config.hidden_size

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "SurgicalWorldModelConfig":
        """As `PreTrainedConfig.from_dict`; a saved config without a field of `LEGACY_DEFAULTS` (`action_pairing`,
        `action_conditioning`, `rollout_steps`) keeps the value it was built and trained with rather than taking the
        default of new models."""
        return super().from_dict({**LEGACY_DEFAULTS, **config_dict}, **kwargs)

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> "SurgicalWorldModelConfig":
        """A config for one of the V-JEPA 2 encoders (`vitl`, `vith`, `vitg`, `vitg384`), without downloading."""
        if preset not in VJEPA2_PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(VJEPA2_PRESETS)}.")
        spec = VJEPA2_PRESETS[preset]
        encoder_overrides = kwargs.pop("encoder_config", None) or {}
        encoder = VJEPA2Config(**{**spec["encoder"], **encoder_overrides})
        kwargs.setdefault("encoder_name_or_path", spec["checkpoint"])
        return cls(encoder_config=encoder, **kwargs)


SurgicalWorldModelConfig.register_for_auto_class()

__all__ = ["ACTION_CONDITIONINGS", "ACTION_PAIRINGS", "CONTRASTIVE_NEGATIVES", "LEGACY_ACTION_PAIRING",
           "LEGACY_DEFAULTS", "SurgicalWorldModelConfig", "VJEPA2_PRESETS"]

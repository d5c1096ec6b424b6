# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""An action-conditioned surgical world model on V-JEPA 2 (V-JEPA 2-AC style).

Each step of a clip (one frame repeated into a tubelet, or one real tubelet) is encoded on its own by the V-JEPA 2
encoder into latent patch tokens z_t. A block-causal transformer over steps, fed `[action, (state), patches]` tokens
per step, predicts z_{t+1}. `SurgicalWorldModelForVideoClassification` is V-JEPA 2's attentive probe on the frozen
world model's latents. This file travels to the Hub with `save_pretrained`: it imports only torch, transformers and,
relatively (so that they travel with it), its configuration, its losses and its planning.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from transformers import PreTrainedModel, VJEPA2Model, initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2AttentivePooler, VJEPA2Encoder
from transformers.utils import CONFIG_NAME, ModelOutput, logging


try:
    from .configuration_surgical_wm import VJEPA2_PRESETS, SurgicalWorldModelConfig
    from .losses_surgical_wm import (
        action_changes,
        action_contrastive_loss,
        contrastive_loss,
        frames_to_steps,
        l1_per_clip,
        masked_l1_per_clip,
        rollout_errors,
        weighted_l1_per_clip,
    )
    from .planning_surgical_wm import SurgicalWorldModelPlanningMixin, SurgicalWorldModelPlanOutput
except ImportError:  # imported as a top-level module from a clone of the repository
    from configuration_surgical_wm import VJEPA2_PRESETS, SurgicalWorldModelConfig
    from losses_surgical_wm import (
        action_changes,
        action_contrastive_loss,
        contrastive_loss,
        frames_to_steps,
        l1_per_clip,
        masked_l1_per_clip,
        rollout_errors,
        weighted_l1_per_clip,
    )
    from planning_surgical_wm import SurgicalWorldModelPlanningMixin, SurgicalWorldModelPlanOutput


logger = logging.get_logger(__name__)


@dataclass
class SurgicalWorldModelOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        The training objective: teacher-forcing L1 + `rollout_loss_weight` * rollout L1 (a transition whose action
        differs from the one before weighing `action_change_weight`), + `contrastive_weight * contrastive_loss +
        lambda_mask * mask_loss + action_contrastive_weight * action_contrastive_loss`. With the default weights,
        `temporal_loss + contrastive_weight * contrastive_loss + lambda_mask * mask_loss`.
    predicted_latents (`torch.FloatTensor` of shape `(batch_size, steps - 1, tokens, dim)`):
        Teacher-forced predictions of z_{t+1} from z_{<=t} and the actions.
    target_latents (`torch.FloatTensor` of shape `(batch_size, steps - 1, tokens, dim)`):
        The true z_{t+1} (from the EMA target encoder when the encoder trains).
    temporal_loss (`torch.FloatTensor` of shape `()`):
        `teacher_forcing_loss + rollout_loss`, the batch mean of `clip_temporal_loss` (unweighted, as validation
        compares it).
    teacher_forcing_loss (`torch.FloatTensor` of shape `()`):
        L1 between `predicted_latents` and `target_latents`.
    rollout_loss (`torch.FloatTensor` of shape `()`):
        L1 of an autoregressive rollout of `rollout_steps` steps from the first step.
    contrastive_loss (`torch.FloatTensor` of shape `()`):
        InfoNCE between pooled predicted and true future latents, other clips of the batch as negatives.
    mask_loss (`torch.FloatTensor` of shape `()`, *optional*):
        L1 on the masked tokens of the mask-denoising prediction, the batch mean of `clip_mask_loss`
        (when `use_mask_aux`).
    action_contrastive_loss (`torch.FloatTensor` of shape `()`, *optional*):
        InfoNCE over L1 distances to the true next latent: each transition's prediction under its own action against
        its predictions under `action_contrastive_negatives` other actions of the batch (in training, with
        `action_contrastive_weight` > 0).
    clip_temporal_loss (`torch.FloatTensor` of shape `(batch_size,)`):
        Teacher-forcing plus rollout L1 of each clip; a clip's value does not depend on the rest of the batch, so
        validation can average it over clips whatever the batch size or the number of processes.
    clip_mask_loss (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
        Mean L1 over the masked tokens of each clip (0 for a clip without masked tokens; when `use_mask_aux`).
    rollout_error (`torch.FloatTensor` of shape `(batch_size, steps - 1)`, *optional*):
        L1 per clip and per horizon of a rollout from the first step over all later steps (with
        `return_rollout_error=True`; no gradient).
    copy_context_error (`torch.FloatTensor` of shape `(batch_size, steps - 1)`, *optional*):
        The same error for the baseline that copies the first (context) latent to every later step: "nothing
        moves" (with `return_rollout_error=True`).
    encoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        With `output_hidden_states=True` and a clip given as pixels: the encoder's embeddings followed by the output
        of each encoder layer (`num_hidden_layers + 1` tensors, before the encoder's final layer norm, as V-JEPA 2
        returns them), each of shape `(batch_size, steps, tokens, dim)` (every step is encoded on its own). None
        when the clip came as `latents`.
    predictor_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        With `output_hidden_states=True`: the predictor's input (projected latents after the action / state tokens
        of each step) followed by the output of each predictor layer in the teacher-forced pass
        (`predictor_num_hidden_layers + 1` tensors, before the predictor's final norm), each of shape
        `(batch_size, steps - 1, condition_tokens + tokens, predictor_hidden_size)`, where `condition_tokens` is 1
        per action and 1 per state token (0, 1 or 2).
    """

    loss: torch.FloatTensor | None = None
    predicted_latents: torch.FloatTensor | None = None
    target_latents: torch.FloatTensor | None = None
    temporal_loss: torch.FloatTensor | None = None
    teacher_forcing_loss: torch.FloatTensor | None = None
    rollout_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    mask_loss: torch.FloatTensor | None = None
    action_contrastive_loss: torch.FloatTensor | None = None
    clip_temporal_loss: torch.FloatTensor | None = None
    clip_mask_loss: torch.FloatTensor | None = None
    rollout_error: torch.FloatTensor | None = None
    copy_context_error: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    predictor_hidden_states: tuple[torch.FloatTensor, ...] | None = None


def same_within_groups(values: torch.Tensor, group: int) -> bool:
    """Whether each group of `group` consecutive rows of `values` holds one value."""
    grouped = values.reshape(values.shape[0] // group, group, *values.shape[1:])
    return bool((grouped == grouped[:, :1]).all())


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    # Unlike V-JEPA 2's encoder attention, the predictor's attention must honour its block-causal mask.
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
        else:
            attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class SurgicalWorldModelPredictorAttention(nn.Module):
    """Multi-head self-attention with V-JEPA 2's 3D rotary positions (time, height, width) over step tokens."""

    def __init__(self, config: SurgicalWorldModelConfig):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.predictor_num_attention_heads
        self.head_dim = config.predictor_hidden_size // config.predictor_num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # the block-causal structure is in the mask
        self.qkv = nn.Linear(config.predictor_hidden_size, 3 * config.predictor_hidden_size, bias=True)
        self.proj = nn.Linear(config.predictor_hidden_size, config.predictor_hidden_size)
        # Same split of the head dimension as V-JEPA 2: equal even shares for time, height and width.
        self.rope_dim = 2 * ((self.head_dim // 3) // 2)

    def apply_rotary(self, states: torch.Tensor, rotary: torch.Tensor) -> torch.Tensor:
        """V-JEPA 2's 3D RoPE (`rotate_queries_or_keys` on each axis's share of the head dimension) with the tables
        `rotary` `(2, L, 3 * rope_dim)` (cos, sin) that the predictor computes once per call for all layers."""
        # states: (B, heads, L, head_dim)
        cos, sin = rotary.to(states.dtype).unbind(0)
        width = cos.shape[-1]
        rope, rest = states[..., :width], states[..., width:]
        pairs = rope.unflatten(-1, (-1, 2))
        swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return torch.cat([rope * cos + swapped * sin, rest], dim=-1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rotary: torch.Tensor,
        past_key: torch.Tensor | None = None,
        past_value: torch.Tensor | None = None,
        shared_key: torch.Tensor | None = None,
        shared_value: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Attention of `hidden_states` `(B, L, hidden)`, the tokens of some steps, to themselves and to the keys and
        values of earlier steps: `past_key` / `past_value` `(B, heads, P, head_dim)` of the same rows and
        `shared_key` / `shared_value` `(B / G, heads, S, head_dim)`, a prefix common to each group of G consecutive
        rows (one context, G candidate action sequences), stored once per group. `attention_mask`
        `(1, 1, L, P + L)` is the block-causal rule over `[past, new]` (None: all visible); earlier steps are always
        visible to the shared prefix. `rotary`: the RoPE tables of these steps (see `apply_rotary`). Returns the
        output `(B, L, hidden)` and the rotated keys and values of the rows' own steps, past and new, `(B, heads,
        P + L, head_dim)`, which the caller keeps for later steps: nothing is stored here, so a recomputation under
        gradient checkpointing sees the same inputs.
        """
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch_size, seq_len, 3, self.num_attention_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        query = self.apply_rotary(query, rotary)
        key = self.apply_rotary(key, rotary)
        all_keys = key if past_key is None else torch.cat([past_key, key], dim=2)  # (B, heads, P + L, head_dim)
        all_values = value if past_value is None else torch.cat([past_value, value], dim=2)

        attend_keys, attend_values = all_keys, all_values
        if shared_key is not None:
            # The prefix joins each row's keys for this layer's fused attention only (smaller than the score matrix
            # a separate softmax over it would need); the cache keeps one copy per context.
            group = batch_size // shared_key.shape[0]
            attend_keys = torch.cat([shared_key.repeat_interleave(group, dim=0), all_keys], dim=2)
            attend_values = torch.cat([shared_value.repeat_interleave(group, dim=0), all_values], dim=2)
            if attention_mask is not None:  # earlier steps are always visible
                attention_mask = F.pad(attention_mask, (shared_key.shape[2], 0), value=True)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self, query, attend_keys, attend_values, attention_mask, scaling=self.scaling, dropout=0.0, is_causal=False
        )
        attn_output = attn_output.reshape(batch_size, seq_len, -1)  # (B, L, hidden)
        return self.proj(attn_output), all_keys, all_values


class SurgicalWorldModelPredictorMLP(nn.Module):
    def __init__(self, config: SurgicalWorldModelConfig):
        super().__init__()
        hidden_features = int(config.predictor_hidden_size * config.predictor_mlp_ratio)
        self.fc1 = nn.Linear(config.predictor_hidden_size, hidden_features)
        self.activation = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, config.predictor_hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class SurgicalWorldModelPredictorAdaLN(nn.Linear):
    """
    Per-step modulation of a predictor layer by the step's action embedding (`action_conditioning="adaln"`, as the
    AdaLN predictor of Meta's JEPA-WMs): a shift and a scale of each normalised input, a gate of each residual
    branch, for the attention and for the MLP. Initialised to zero and applied as `1 + scale`, `1 + gate`, so the
    layer starts as the plain one (DiT's AdaLN-zero gates start at 0 instead, which would silence a pretrained
    predictor). A linear layer itself, so that its weights are its own to initialise.
    """

    def __init__(self, config: SurgicalWorldModelConfig):
        super().__init__(config.predictor_hidden_size, 6 * config.predictor_hidden_size)

    def forward(self, action_embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift, scale, gate) of the attention then of the MLP, each `(B, T, 1, hidden)`, from the action
        embedding `(B, T, hidden)` of T steps."""
        return super().forward(F.silu(action_embedding)).unsqueeze(2).chunk(6, dim=-1)


def per_step(hidden_states: torch.Tensor, factor: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """`hidden_states` `(B, T * tokens, hidden)` times a per-step `factor` `(B, T, 1, hidden)`, plus `shift`."""
    steps = hidden_states.unflatten(1, (factor.shape[1], -1)) * factor  # (B, T, tokens, hidden)
    return (steps if shift is None else steps + shift).flatten(1, 2)


class SurgicalWorldModelPredictorLayer(GradientCheckpointingLayer):
    """A pre-norm transformer block of the predictor, modulated by the actions with `action_conditioning="adaln"`."""

    def __init__(self, config: SurgicalWorldModelConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.predictor_hidden_size, eps=config.layer_norm_eps)
        self.attention = SurgicalWorldModelPredictorAttention(config)
        self.norm2 = nn.LayerNorm(config.predictor_hidden_size, eps=config.layer_norm_eps)
        self.mlp = SurgicalWorldModelPredictorMLP(config)
        self.drop_path_rate = drop_path_rate
        # A model without actions has nothing to modulate with.
        uses_adaln = config.action_conditioning == "adaln" and config.action_dim > 0
        self.adaln = SurgicalWorldModelPredictorAdaLN(config) if uses_adaln else None

    def drop_path(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_path_rate == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_path_rate
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rotary: torch.Tensor,
        past_key: torch.Tensor | None = None,
        past_value: torch.Tensor | None = None,
        shared_key: torch.Tensor | None = None,
        shared_value: torch.Tensor | None = None,
        action_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's output and its attention's keys and values (see `SurgicalWorldModelPredictorAttention`).
        Past keys and values are positional so that reentrant gradient checkpointing also sends them gradients.
        `action_embedding` `(B, T, hidden)`: the actions of the T steps given, for the AdaLN modulation (adaln only);
        each step is modulated by its own action alone, so cached keys of earlier steps stay valid."""
        if self.adaln is None:
            attention_output, key, value = self.attention(
                self.norm1(hidden_states), attention_mask, rotary, past_key, past_value, shared_key, shared_value
            )
            hidden_states = hidden_states + self.drop_path(attention_output)
            hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
            return hidden_states, key, value
        shift_attention, scale_attention, gate_attention, shift_mlp, scale_mlp, gate_mlp = self.adaln(action_embedding)
        attention_output, key, value = self.attention(
            per_step(self.norm1(hidden_states), 1 + scale_attention, shift_attention), attention_mask, rotary,
            past_key, past_value, shared_key, shared_value,
        )
        hidden_states = hidden_states + self.drop_path(per_step(attention_output, 1 + gate_attention))
        mlp_output = self.mlp(per_step(self.norm2(hidden_states), 1 + scale_mlp, shift_mlp))
        hidden_states = hidden_states + self.drop_path(per_step(mlp_output, 1 + gate_mlp))
        return hidden_states, key, value


class SurgicalWorldModelPredictor(nn.Module):
    """Block-causal transformer over steps: step t sees steps <= t and predicts the latent of step t + 1."""

    def __init__(self, config: SurgicalWorldModelConfig):
        super().__init__()
        self.config = config
        hidden = config.predictor_hidden_size
        self.grid_size = config.encoder_config.crop_size // config.encoder_config.patch_size
        self.latent_proj = nn.Linear(config.latent_dim, hidden)
        self.action_proj = nn.Linear(config.action_dim, hidden) if config.action_dim > 0 else None
        self.state_proj = nn.Linear(config.state_dim, hidden) if config.state_dim > 0 else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, hidden)) if config.use_mask_aux else None
        # Where each patch lies in the grid, the same at every step (`predictor_position_embedding`).
        self.position_embedding = (
            nn.Parameter(torch.zeros(self.grid_size**2, hidden)) if config.predictor_position_embedding else None
        )
        # Each step's action as a vector per place in the grid, added to the step's tokens (`action_spatial_embedding`).
        self.action_spatial = None
        if config.action_spatial_embedding:  # the config refuses it without actions
            tokens = self.grid_size**2 * hidden
            rank = config.action_spatial_rank
            if rank is None:
                self.action_spatial = nn.Linear(config.action_dim, tokens, bias=False)
                self.action_spatial.zero_init = True
            else:
                self.action_spatial = nn.Sequential(
                    nn.Linear(config.action_dim, rank, bias=False), nn.Linear(rank, tokens, bias=False)
                )
                self.action_spatial[1].zero_init = True
        # The embedding of an unknown action (NaN in `actions`), learnt by action dropout.
        self.null_action = nn.Parameter(torch.zeros(hidden)) if config.action_dropout > 0 else None
        rates = [config.predictor_drop_path_rate * i / max(config.predictor_num_hidden_layers - 1, 1)
                 for i in range(config.predictor_num_hidden_layers)]
        self.layers = nn.ModuleList(SurgicalWorldModelPredictorLayer(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(hidden, config.latent_dim)
        # Zero at initialisation with `predict_residual`, as DiT's adaLN-zero zeroes its residual branches: an
        # untrained predictor returns its input ("nothing moves") at any width and depth, where a random projection
        # of 24 layers' output starts far from it. Its weight gets gradients from the first step (the final norm's
        # output is not zero), the layers below from the second.
        self.output_proj.zero_init = config.predict_residual

    def new_cache(self) -> "PredictorKVCache":
        """An empty cache for `forward(..., cache=)`: the keys and values of the steps this predictor has seen."""
        return PredictorKVCache()

    @staticmethod
    def known_actions(actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`actions` `(B, T, action_dim)` with each row that holds NaN (an unknown action) set to 0, and which rows
        those are `(B, T, 1)`."""
        unknown = actions.isnan().any(-1, keepdim=True)
        return actions.masked_fill(unknown, 0.0), unknown

    def embed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """The action embedding `(B, T, hidden)` of per-step `actions` `(B, T, action_dim)`: a row holding NaN is an
        unknown action and gets the learned null action (with `action_dropout`; else NaN passes through, which
        `check_step_inputs` refuses first)."""
        if self.null_action is None:
            return self.action_proj(actions)
        known, unknown = self.known_actions(actions)
        embedded = self.action_proj(known)
        # `where` rather than indexing: the null action is in the graph at every step (DDP needs its gradient).
        return torch.where(unknown, self.null_action.to(embedded.dtype), embedded)

    @property
    def num_condition_tokens(self) -> int:
        return int(self.action_proj is not None) + int(self.state_proj is not None)

    def step_layout(
        self, num_steps: int, device: torch.device, past_steps: int = 0
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """
        The block-causal mask `(1, 1, L, P + L)` (True = may attend) of `num_steps` steps after `past_steps` earlier
        ones, over `[earlier steps, these steps]`, and the RoPE positions `(3, L)` of these steps, as (time, height,
        width). A single step sees all of its own tokens and all earlier ones: its mask is None.
        """
        num_cond = self.num_condition_tokens
        tokens_per_step = num_cond + self.grid_size**2
        step_index = torch.arange(past_steps, past_steps + num_steps, device=device).repeat_interleave(tokens_per_step)
        if num_steps == 1:
            attention_mask = None
        else:
            key_index = torch.arange(past_steps + num_steps, device=device).repeat_interleave(tokens_per_step)
            attention_mask = (key_index[None, :] <= step_index[:, None])[None, None]  # (1, 1, L, P + L)
        patch = torch.arange(self.grid_size**2, device=device)
        height = torch.cat([torch.zeros(num_cond, dtype=torch.long, device=device), patch // self.grid_size])
        width = torch.cat([torch.zeros(num_cond, dtype=torch.long, device=device), patch % self.grid_size])
        positions = torch.stack([step_index, height.repeat(num_steps), width.repeat(num_steps)])  # (3, L)
        return attention_mask, positions

    def rotary_tables(self, positions: torch.Tensor) -> torch.Tensor:
        """
        V-JEPA 2's RoPE tables `(2, L, 3 * rope_dim)` (cos, sin) of positions `(3, L)`: per axis, angles
        `position / 10000 ** (i / (rope_dim / 2))`, tiled twice over the axis's share of the head dimension, as
        `rotate_queries_or_keys` builds them, in float32, once for every layer and for queries and keys.
        """
        rope_dim = self.layers[0].attention.rope_dim
        omega = torch.arange(rope_dim // 2, dtype=torch.float32, device=positions.device)
        omega /= rope_dim / 2.0
        omega = 1.0 / 10000**omega  # (rope_dim / 2,)
        angles = positions.to(torch.float32).unsqueeze(-1) * omega  # (3, L, rope_dim / 2)
        angles = torch.cat([angles, angles], dim=-1)  # (3, L, rope_dim): repeated as V-JEPA 2 does
        angles = angles.permute(1, 0, 2).flatten(1)  # (L, 3 * rope_dim): time, height, width shares
        return torch.stack([angles.cos(), angles.sin()])

    def forward(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        cache: "PredictorKVCache | None" = None,
        update_cache: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """
        The predictions `(B, T, N, latent_dim)`, each token layer-normed with `config.normalize_predictions`; with
        `output_hidden_states=True`, `(predictions, hidden_states)` where `hidden_states` holds the input of the first
        layer and the output of every layer (before the final norm), each `(B, T, condition_tokens + N, hidden)`.

        With a `cache`, the T steps given follow the steps whose keys and values the cache holds: they attend to
        those instead of recomputing them, take the next time positions, and their own keys and values are added to
        the cache (unless `update_cache=False`: the last step of a rollout, which nothing attends to).
        """
        batch_size, num_steps, num_tokens, _ = latents.shape
        if num_tokens != self.grid_size**2:
            raise ValueError(f"Expected {self.grid_size**2} tokens per step, got {num_tokens}.")
        hidden_states = self.latent_proj(latents)  # (B, T, N, hidden)
        if token_mask is not None:
            if self.mask_token is None:
                raise ValueError("A token mask needs `use_mask_aux=True` in the config.")
            hidden_states = torch.where(token_mask[..., None], self.mask_token.to(hidden_states.dtype), hidden_states)
        if self.position_embedding is not None:  # after the mask token: a hidden token still knows its place
            hidden_states = hidden_states + self.position_embedding.to(hidden_states.dtype)
        if self.action_spatial is not None:  # an unknown action (a row holding NaN) adds nothing at any place
            known, _ = self.known_actions(actions.to(hidden_states.dtype))
            per_place = self.action_spatial(known)
            hidden_states = hidden_states + per_place.view(batch_size, num_steps, num_tokens, -1)
        condition = []
        action_embedding = None
        if self.action_proj is not None:
            action_embedding = self.embed_actions(actions.to(hidden_states.dtype))  # (B, T, hidden)
            condition.append(action_embedding.unsqueeze(2))  # (B, T, 1, hidden)
        if self.state_proj is not None:
            condition.append(self.state_proj(states.to(hidden_states.dtype)).unsqueeze(2))  # (B, T, 1, hidden)
        hidden_states = torch.cat(condition + [hidden_states], dim=2)  # (B, T, c + N, hidden)
        tokens_per_step = hidden_states.shape[2]
        hidden_states = hidden_states.reshape(batch_size, num_steps * tokens_per_step, -1)  # (B, L, hidden)

        if cache is None:
            attention_mask, positions = self.step_layout(num_steps, latents.device)
        else:
            cache.check_batch(batch_size)
            attention_mask, positions = self.step_layout(num_steps, latents.device, cache.num_steps)
            if attention_mask is not None:  # the shared prefix is outside the mask: drop its columns
                attention_mask = attention_mask[..., cache.num_shared_steps * tokens_per_step :]
        rotary = self.rotary_tables(positions)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        keys, values = [], []
        for index, layer in enumerate(self.layers):
            past = cache.layer_inputs(index) if cache is not None else (None, None, None, None)
            hidden_states, key, value = layer(hidden_states, attention_mask, rotary, *past, action_embedding)
            if cache is not None:
                keys.append(key)
                values.append(value)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
        if cache is not None and update_cache:
            cache.update(keys, values, num_steps)

        hidden_states = self.norm(hidden_states).view(batch_size, num_steps, tokens_per_step, -1)
        prediction = self.output_proj(hidden_states[:, :, self.num_condition_tokens :])  # (B, T, N, latent_dim)
        if self.config.predict_residual:
            # Predict the change from z_t: with the zero output projection of `_init_weights`, an untrained
            # predictor starts at "nothing moves" instead of at noise.
            # Masked tokens contribute no residual, or the denoising target would leak through it.
            base = latents if token_mask is None else latents.masked_fill(token_mask[..., None], 0.0)
            prediction = prediction + base.to(prediction.dtype)
        if self.config.normalize_predictions:
            # V-JEPA 2-AC's `normalize_reps`: here, so that every caller (losses, rollouts, planning) sees it.
            prediction = F.layer_norm(prediction, (prediction.shape[-1],))
        if output_hidden_states:
            shape = (batch_size, num_steps, tokens_per_step, -1)
            return prediction, tuple(states.view(shape) for states in all_hidden_states)
        return prediction


class PredictorKVCache:
    """
    The predictor's keys and values, per layer, of the steps it has seen, so that a rollout runs each new step once
    instead of the whole history again (the role of transformers' `DynamicCache`). Two parts:

    - a shared prefix `(B / G, heads, S, head_dim)` per layer: steps common to each group of G consecutive rows of the
      batch (one context, G candidate action sequences), stored once per group;
    - the rows' own steps `(B, heads, P, head_dim)` per layer, after the prefix.

    Make one with `predictor.new_cache()` and fill it by calling the predictor with `cache=`; `share(G)` turns what it
    holds into the shared prefix of G rows each, `select(rows)` keeps some rows' own steps and `crop(num_steps)` drops
    the latest. Positions continue from `num_steps`. Only the cache's methods change its tensors and counters; the
    attention reads them through `layer_inputs`.
    """

    def __init__(self):
        self.keys: list[torch.Tensor] | None = None
        self.values: list[torch.Tensor] | None = None
        self.shared_keys: list[torch.Tensor] | None = None
        self.shared_values: list[torch.Tensor] | None = None
        self.group = 1
        self.num_steps = 0
        self.num_shared_steps = 0

    def get_seq_length(self) -> int:
        """The number of steps the cache holds, shared prefix included (the time position of the next step)."""
        return self.num_steps

    def check_batch(self, batch_size: int) -> None:
        if self.keys is not None and self.keys[0].shape[0] != batch_size:
            raise ValueError(f"The cache holds {self.keys[0].shape[0]} rows, the input has {batch_size}.")
        if self.shared_keys is not None and batch_size != self.shared_keys[0].shape[0] * self.group:
            raise ValueError(
                f"The cache's shared prefix serves {self.shared_keys[0].shape[0]} groups of {self.group} rows, the "
                f"input has {batch_size} rows."
            )

    def layer_inputs(self, layer_idx: int) -> tuple[torch.Tensor | None, ...]:
        """(past key, past value, shared key, shared value) of layer `layer_idx`, None where there are none."""
        own = (None, None) if self.keys is None else (self.keys[layer_idx], self.values[layer_idx])
        shared = (None, None) if self.shared_keys is None else (self.shared_keys[layer_idx], self.shared_values[layer_idx])
        return own + shared

    def update(self, keys: list[torch.Tensor], values: list[torch.Tensor], num_steps: int) -> None:
        """Takes each layer's own keys and values, past and `num_steps` new steps, as the attention returned them
        (it concatenated them once already, so that gradient checkpointing recomputes from the same inputs)."""
        self.keys, self.values = list(keys), list(values)
        self.num_steps += num_steps

    def _derived(self, keys, values, shared_keys, shared_values, group, num_steps, num_shared_steps):
        cache = PredictorKVCache()
        cache.keys, cache.values = keys, values
        cache.shared_keys, cache.shared_values = shared_keys, shared_values
        cache.group, cache.num_steps, cache.num_shared_steps = group, num_steps, num_shared_steps
        return cache

    def share(self, group: int) -> "PredictorKVCache":
        """A new cache whose shared prefix is the steps this one holds (for B rows), serving B * `group` rows: row
        b's steps serve rows b * group ... (b + 1) * group - 1. Nothing is copied, and this cache is left as it is,
        so one history can serve several batches of candidates."""
        if self.shared_keys is not None or self.keys is None:
            raise ValueError("Only a cache holding steps of its own, and no shared prefix yet, can be shared.")
        return self._derived(None, None, self.keys, self.values, group, self.num_steps, self.num_steps)

    def select(self, rows: torch.Tensor) -> "PredictorKVCache":
        """A new cache holding the own steps of `rows` (indices, repeats allowed, as `DynamicCache`'s
        `batch_select_indices`), one row each; a shared prefix stays shared, so it must serve a single group."""
        if self.keys is None:
            raise ValueError("The cache holds no steps of its own to select from.")
        if self.shared_keys is not None and self.shared_keys[0].shape[0] != 1:
            raise ValueError(
                f"The cache's shared prefix serves {self.shared_keys[0].shape[0]} groups: rows of different groups "
                "cannot be selected into one."
            )
        return self._derived([key[rows] for key in self.keys], [value[rows] for value in self.values],
                             self.shared_keys, self.shared_values, len(rows), self.num_steps, self.num_shared_steps)

    def crop(self, num_steps: int) -> None:
        """Keeps the first `num_steps` steps (shared prefix included), as `DynamicCache.crop`."""
        if not self.num_shared_steps <= num_steps <= self.num_steps:
            raise ValueError(
                f"Can crop to {self.num_shared_steps} ... {self.num_steps} steps (the shared prefix stays), got "
                f"{num_steps}."
            )
        if self.keys is not None:
            tokens = self.keys[0].shape[2] // (self.num_steps - self.num_shared_steps)
            keep = (num_steps - self.num_shared_steps) * tokens
            self.keys = [key[:, :, :keep] for key in self.keys] if keep else None
            self.values = [value[:, :, :keep] for value in self.values] if keep else None
        self.num_steps = num_steps


class SurgicalWorldModelPreTrainedModel(PreTrainedModel):
    config_class = SurgicalWorldModelConfig
    config: SurgicalWorldModelConfig
    base_model_prefix = "world_model"
    main_input_name = "pixel_values_videos"
    input_modalities = "video"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VJEPA2Layer", "SurgicalWorldModelPredictorLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False  # the predictor needs an arbitrary (block-causal) mask

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, SurgicalWorldModelPredictorAdaLN) or getattr(module, "zero_init", False):
            # Zero: each AdaLN layer starts as the plain one; a residual predictor's output starts at "nothing moves";
            # the per-place action map starts adding nothing.
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv3d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SurgicalWorldModelPredictor):
            for token in (module.mask_token, module.null_action, module.position_embedding):
                if token is not None:
                    init.trunc_normal_(token, std=std)
        elif isinstance(module, VJEPA2AttentivePooler):
            # V-JEPA 2's scheme (VJEPA2PreTrainedModel._init_weights): its linear layers and norms are initialised
            # above, first (children come first); then the query and the depth-scaled residual projections.
            init.trunc_normal_(module.query_tokens, std=std)
            for depth, layer in enumerate(module.self_attention_layers, 1):
                init.trunc_normal_(layer.self_attn.out_proj.weight, std=std / depth**0.5)
                init.trunc_normal_(layer.mlp.fc2.weight, std=std / depth**0.5)
            init.trunc_normal_(
                module.cross_attention_layer.mlp.fc2.weight, std=std / (len(module.self_attention_layers) + 1) ** 0.5
            )


class SurgicalWorldModelEncodingMixin:
    """
    From a clip to what the predictor takes, for `SurgicalWorldModel`: the V-JEPA 2 encoder, frozen or trained with an
    EMA target copy (`reset_target_encoder`, `update_target_encoder`), loading it from V-JEPA 2 (`from_vjepa2`), the
    pixel checks, the per-step encoding (`encode`, `encode_targets`) and the per-step actions and states
    (`check_step_inputs`). A mixin rather than a submodule, so that the state dict keeps its `encoder.*` and
    `target_encoder.*` keys.
    """

    # ----------------------------------------------------------------------------------------------- setup
    def _set_encoder_trainable(self, trainable: bool) -> None:
        self.encoder.requires_grad_(trainable)
        if self.target_encoder is not None:
            self.target_encoder.requires_grad_(False)
            self.target_encoder.eval()
        if not trainable:
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        # A frozen encoder stays in eval mode (no dropout / drop-path), as does the EMA target.
        if self.config.freeze_encoder:
            self.encoder.eval()
        if self.target_encoder is not None:
            self.target_encoder.eval()
        return self

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        # Loading replaces the parameters, and with them the frozen encoder's requires_grad=False.
        model._set_encoder_trainable(not model.config.freeze_encoder)
        return (model, loading_info) if output_loading_info else model

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """A checkpoint with one encoder (frozen, or an export) opened for fine-tuning: the EMA target starts from the
        encoder, said in one line, rather than listed key by key in transformers' report as newly initialised."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        target_keys = {key for key in loading_info.missing_keys if key.startswith("target_encoder.")}
        if self.target_encoder is not None and target_keys:
            loading_info.missing_keys -= target_keys
            logger.info("No EMA target encoder in the checkpoint: starting it from the encoder.")
            self.reset_target_encoder()

    @classmethod
    def from_vjepa2(
        cls,
        name_or_path: str,
        *,
        cache_dir: str | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        **config_overrides,
    ) -> "SurgicalWorldModel":
        """
        Builds a world model on the encoder of a V-JEPA 2 checkpoint: a preset name (`vitl`, `vith`, `vitg`,
        `vitg384`), a `facebook/vjepa2-*` Hub id, or a local directory in the transformers format. The encoder's
        dimensions come from the checkpoint itself; `config_overrides` set the predictor, actions and losses.
        """
        checkpoint = VJEPA2_PRESETS[name_or_path]["checkpoint"] if name_or_path in VJEPA2_PRESETS else name_or_path
        load_kwargs = {"cache_dir": cache_dir, "revision": revision}
        if local_files_only is not None:
            load_kwargs["local_files_only"] = local_files_only
        try:
            vjepa2 = VJEPA2Model.from_pretrained(checkpoint, **load_kwargs)
        except (OSError, ValueError) as error:
            raise OSError(_vjepa2_load_failure_message(checkpoint, error)) from None
        if "encoder_config" in config_overrides:
            raise ValueError("The encoder config comes from the checkpoint; do not pass `encoder_config`.")
        config = SurgicalWorldModelConfig(
            encoder_config=vjepa2.config.to_dict(), encoder_name_or_path=str(checkpoint), **config_overrides
        )
        model = cls(config)
        model.encoder.load_state_dict(vjepa2.encoder.state_dict())
        model.reset_target_encoder()
        return model

    @torch.no_grad()
    def reset_target_encoder(self) -> None:
        """Copies the online encoder into the EMA target (no-op when the encoder is frozen)."""
        if self.target_encoder is not None:
            self.target_encoder.load_state_dict(self.encoder.state_dict())

    @torch.no_grad()
    def update_target_encoder(self, momentum: float | None = None) -> None:
        """EMA step of the target encoder: target <- m * target + (1 - m) * online. Call after each optimizer step."""
        if self.target_encoder is None:
            return
        momentum = self.config.ema_momentum if momentum is None else momentum
        target = list(self.target_encoder.parameters())
        online = [parameter.detach().to(target[0].dtype) for parameter in self.encoder.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - momentum)

    # ---------------------------------------------------------------------------------------------- encode
    def _check_pixels(self, pixel_values_videos: torch.Tensor) -> None:
        encoder = self.config.encoder_config
        if pixel_values_videos.ndim != 5:
            raise ValueError(
                "`pixel_values_videos` must have shape (batch, frames, channels, height, width), got "
                f"{tuple(pixel_values_videos.shape)}."
            )
        _, num_frames, channels, height, width = pixel_values_videos.shape
        if channels != encoder.in_chans:
            raise ValueError(f"Expected {encoder.in_chans} channels, got {channels} (is the layout (B, T, C, H, W)?).")
        if height != encoder.crop_size or width != encoder.crop_size:
            # V-JEPA 2 derives its RoPE grid from config.crop_size: another resolution would get wrong positions.
            raise ValueError(
                f"Frames are {height}x{width} but the encoder was built for {encoder.crop_size}x{encoder.crop_size}; "
                "resize and crop the video to the encoder's crop_size (the V-JEPA 2 video processor does)."
            )
        if num_frames % self.config.frames_per_step != 0:
            raise ValueError(
                f"{num_frames} frames do not split into steps of frames_per_step={self.config.frames_per_step}."
            )

    def _encode_with(
        self, encoder: VJEPA2Encoder, pixel_values_videos: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The latents `(B, S, N, D)` of a clip and, with `output_hidden_states`, the encoder's hidden states."""
        batch_size, num_frames, channels, height, width = pixel_values_videos.shape
        frames_per_step = self.config.frames_per_step
        num_steps = num_frames // frames_per_step
        steps = pixel_values_videos.reshape(batch_size * num_steps, frames_per_step, channels, height, width)
        tubelet = self.config.encoder_config.tubelet_size
        if frames_per_step < tubelet:
            # One frame repeated into a tubelet: the encoder never sees another step, so no future leaks backwards.
            steps = steps.expand(-1, tubelet, -1, -1, -1)  # (B * S, tubelet, C, H, W)
        recorded = []
        handles = []
        if output_hidden_states:
            # `VJEPA2Encoder.forward` returns no hidden states (in transformers 5.x `VJEPA2Model` records them with
            # `capture_outputs` hooks on its `VJEPA2Layer`s: the first layer's input, then each layer's output).
            # The same records, with hooks that live for this call only.
            def record(module, args, output):
                recorded.append(output[0] if isinstance(output, tuple) else output)

            handles = [encoder.embeddings.register_forward_hook(record)]
            handles += [layer.register_forward_hook(record) for layer in encoder.layer]
        try:
            hidden_states = encoder(pixel_values_videos=steps).last_hidden_state  # (B * S, N, D)
        finally:
            for handle in handles:
                handle.remove()
        if self.config.normalize_latents:
            hidden_states = F.layer_norm(hidden_states, (hidden_states.shape[-1],))
        latents = hidden_states.view(batch_size, num_steps, *hidden_states.shape[1:])  # (B, S, N, D)
        if not output_hidden_states:
            return latents, None
        return latents, tuple(states.view(batch_size, num_steps, *states.shape[1:]) for states in recorded)

    def _encode(
        self, pixel_values_videos: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """`encode`, and with `output_hidden_states` the encoder's hidden states `(B, S, N, D)` per layer."""
        self._check_pixels(pixel_values_videos)
        if self.config.freeze_encoder:
            with torch.no_grad():
                return self._encode_with(self.encoder, pixel_values_videos, output_hidden_states)
        return self._encode_with(self.encoder, pixel_values_videos, output_hidden_states)

    def encode(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """
        Encodes each step of a clip on its own.

        Args:
            pixel_values_videos: `(batch, frames, 3, crop_size, crop_size)`, V-JEPA 2 preprocessed.
        Returns:
            latents `(batch, steps, tokens, dim)` with `steps = frames / frames_per_step`.
        """
        return self._encode(pixel_values_videos)[0]

    @torch.no_grad()
    def encode_targets(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """Latents used as prediction targets: the EMA encoder's when the encoder trains, else `encode`'s."""
        self._check_pixels(pixel_values_videos)
        encoder = self.target_encoder if self.target_encoder is not None else self.encoder
        return self._encode_with(encoder, pixel_values_videos)[0]

    # ----------------------------------------------------------------------------------------------- steps
    def check_step_inputs(
        self, name: str, values: torch.Tensor | None, batch_size: int, num_steps: int, reference: torch.Tensor
    ) -> torch.Tensor | None:
        """Checks per-step `actions` or `states` `(batch_size, >= num_steps, dim)` and keeps their first `num_steps`
        steps; missing actions are zeros (a pure video world model, on the device and dtype of `reference`)."""
        dim = self.config.action_dim if name == "actions" else self.config.state_dim
        if dim == 0:
            if values is not None:
                raise ValueError(f"This model takes no {name} ({name[:-1]}_dim=0) but {name} were given.")
            return None
        if values is None:
            if name == "states":
                raise ValueError(f"This model expects states of size {dim} at every step (state_dim={dim}).")
            # A pure video world model: a zero action at every step.
            return reference.new_zeros(batch_size, num_steps, dim)
        if values.ndim != 3 or values.shape[0] != batch_size or values.shape[2] != dim:
            raise ValueError(f"`{name}` must have shape ({batch_size}, steps, {dim}), got {tuple(values.shape)}.")
        if values.shape[1] < num_steps:
            raise ValueError(
                f"`{name}` cover {values.shape[1]} steps but {num_steps} are needed (one per step; per-frame {name} "
                "go through `frames_to_steps` first)."
            )
        values = values[:, :num_steps]
        if name == "actions" and self.config.action_dropout == 0 and values.isnan().any():
            raise ValueError(
                "`actions` hold NaN: unknown actions need a model trained with `action_dropout` > 0, which has "
                "learnt a null action for them."
            )
        return values

    def _clip_step_inputs(self, name: str, values: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
        """The `actions` or `states` of a clip of `num_frames` frames, given per step or per frame, to per step."""
        frames_per_step = self.config.frames_per_step
        num_steps = num_frames // frames_per_step
        if values is None or values.ndim != 3 or values.shape[1] == num_steps:
            return values  # per step already, or malformed: `check_step_inputs` says what is wrong
        if values.shape[1] == num_frames:
            return frames_to_steps(values, frames_per_step)
        expected = f"{num_steps}" if frames_per_step == 1 else f"{num_steps} (per step) or {num_frames} (per frame)"
        raise ValueError(
            f"The clip has {num_frames} frames in {num_steps} steps of {frames_per_step} frames: `{name}` must cover "
            f"{expected}, got {values.shape[1]}."
        )

    def _check_latents(self, latents: torch.Tensor) -> None:
        if self.target_encoder is not None:
            raise ValueError(
                "Precomputed `latents` stand in for the encoder only when it is frozen: a trained encoder changes "
                "them at every step, and its targets come from the EMA encoder. Pass `pixel_values_videos`."
            )
        expected = (self.config.tokens_per_step, self.config.latent_dim)
        if latents.ndim != 4 or tuple(latents.shape[2:]) != expected:
            raise ValueError(
                f"`latents` must have shape (batch, steps, {expected[0]}, {expected[1]}) as `encode` returns them, "
                f"got {tuple(latents.shape)}."
            )

    def _encode_clip(
        self,
        pixel_values_videos: torch.Tensor | None,
        latents: torch.Tensor | None,
        actions: torch.Tensor | None,
        states: torch.Tensor | None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """
        The common start of `forward` and `rollout_error`: the clip's latents `(B, S, N, D)` (encoded here, or given
        as `encode` returned them, e.g. from a latent cache), its target latents, its actions and states brought
        to one per step, once, where the number of frames is known, and the encoder's hidden states (with
        `output_hidden_states` and pixels; else None).
        """
        if (pixel_values_videos is None) == (latents is None):
            raise ValueError("Give either `pixel_values_videos` or precomputed `latents`, not both or neither.")
        encoder_hidden_states = None
        if latents is not None:
            self._check_latents(latents)
            targets = latents  # a frozen encoder is its own target
            num_frames = latents.shape[1] * self.config.frames_per_step
        elif self.target_encoder is not None and not self.training and not output_hidden_states:
            # Validation scores a fine-tuned model as it is exported by default: its EMA target encoder (V-JEPA's
            # encoder downstream) gives the inputs and the targets, so `best/` is chosen on what the export computes.
            latents = targets = self.encode_targets(pixel_values_videos)
            num_frames = pixel_values_videos.shape[1]
        else:
            latents, encoder_hidden_states = self._encode(pixel_values_videos, output_hidden_states)  # (B, S, N, D)
            # A frozen encoder is its own target: no second encoding of the clip.
            targets = latents.detach() if self.target_encoder is None else self.encode_targets(pixel_values_videos)
            num_frames = pixel_values_videos.shape[1]
        batch_size, num_steps = latents.shape[:2]
        if num_steps < 2:
            raise ValueError(f"A clip needs at least 2 steps to predict the future, got {num_steps}.")
        actions = self._clip_step_inputs("actions", actions, num_frames)
        states = self._clip_step_inputs("states", states, num_frames)
        actions = self.check_step_inputs("actions", actions, batch_size, num_steps, latents)
        states = self.check_step_inputs("states", states, batch_size, num_steps, latents)
        return latents, targets, actions, states, encoder_hidden_states


class SurgicalWorldModel(
    SurgicalWorldModelPlanningMixin, SurgicalWorldModelEncodingMixin, SurgicalWorldModelPreTrainedModel
):
    """
    V-JEPA 2 encoder + action-conditioned block-causal predictor.

    Seams: `encode` (pixels -> latents), `predict` (teacher-forced next latents), `rollout` (autoregressive
    imagination under per-step actions), `rollout_error` (evaluation of clips), `forward` (the training losses and
    per-clip validation metrics); the encoder side comes from `SurgicalWorldModelEncodingMixin`, `energy` and `plan`
    from `SurgicalWorldModelPlanningMixin` (planning_surgical_wm.py), the losses from losses_surgical_wm.py.
    """

    def __init__(self, config: SurgicalWorldModelConfig):
        super().__init__(config)
        # The V-JEPA 2 layers read the attention backend from their own (sub-)config.
        config.encoder_config._attn_implementation_internal = config._attn_implementation
        self.encoder = VJEPA2Encoder(config.encoder_config)
        # A target copy exists only when the encoder trains: frozen training keeps a single encoder in memory.
        self.target_encoder = None if config.freeze_encoder else VJEPA2Encoder(config.encoder_config)
        self.predictor = SurgicalWorldModelPredictor(config)
        self.post_init()
        if self.target_encoder is not None and not self.encoder.layernorm.weight.is_meta:
            self.reset_target_encoder()
        self._set_encoder_trainable(not config.freeze_encoder)

    # --------------------------------------------------------------------------------------------- predict
    def transition_actions(self, actions: torch.Tensor | None) -> torch.Tensor | None:
        """
        The action of each transition t -> t + 1, `(..., steps - 1, action_dim)`, from the labels in force at each
        step `(..., steps, action_dim)` (per step, not per frame: see `frames_to_steps`), as `config.action_pairing`
        pairs them: the labels at t + 1 (`"next"`) or at t (`"current"`). Its output is what `predict`, `rollout`,
        `energy` and `plan` take as actions; every caller that holds per-step labels pairs them here. None stays None.
        """
        if actions is None:
            return None
        if actions.shape[-2] < 2:
            raise ValueError(f"Per-step actions of {actions.shape[-2]} step(s) hold no transition: give at least 2.")
        return actions[..., 1:, :] if self.config.action_pairing == "next" else actions[..., :-1, :]

    def predict(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Teacher-forced prediction: output `[:, t]` is the prediction of z_{t+1} from z_{<=t} and actions `<= t`.

        Args:
            latents: `(batch, steps, tokens, dim)` from `encode`.
            actions: `(batch, >= steps, action_dim)`, the action of the transition out of each step, from per-step
                labels through `transition_actions`; steps past `steps` are ignored; None gives zero actions.
            states: `(batch, >= steps, state_dim)` per step, when the model has a state token.
            token_mask: `(batch, steps, tokens)` bool, tokens replaced by the mask token (mask-denoising).
        """
        batch_size, num_steps = latents.shape[:2]
        actions = self.check_step_inputs("actions", actions, batch_size, num_steps, latents)
        states = self.check_step_inputs("states", states, batch_size, num_steps, latents)
        return self.predictor(latents, actions, states, token_mask)

    def rollout(
        self,
        context_latents: torch.Tensor,
        actions: torch.Tensor | None = None,
        steps: int = 1,
        states: torch.Tensor | None = None,
        use_cache: bool = True,
        *,
        history_cache: PredictorKVCache | None = None,
    ) -> torch.Tensor:
        """
        Autoregressive imagination: from `context_latents` `(contexts, context, tokens, dim)`, predicts `steps` future
        latents, each fed back as input. `actions` are those of the transitions out of each step
        (`transition_actions` of per-step labels), `states` per step, and both cover at least the horizon
        `context + steps - 1`; later steps are ignored.

        The rows of `actions` may be G times the contexts: G candidate action sequences per context, rows
        `b * G ... b * G + G - 1` starting from context `b` (planning). Returns `(rows, steps, tokens, dim)`.

        With `use_cache` (the default) each step runs through the predictor once and attends to the cached keys and
        values of the earlier steps. When the candidates of a context agree on the actions (and states) of its first
        `context - 1` steps, as when they continue one observed history, those steps are computed and cached once per
        context. `use_cache=False` runs the predictor over the whole history again at every step: the same numbers
        (within float rounding), about `steps / 2` times the work. `history_cache`, a cache that already holds the
        first `context - 1` steps of each context under the same actions (the predictor run on them with `cache=`),
        is shared by all candidates instead (planning computes an observed history once per plan).
        """
        if steps < 1:
            raise ValueError(f"`steps` must be >= 1, got {steps}.")
        num_contexts, num_context = context_latents.shape[:2]
        rows = next((values.shape[0] for values in (actions, states) if values is not None and values.ndim == 3),
                    num_contexts)
        if rows % num_contexts != 0:
            raise ValueError(
                f"{rows} rows of actions for {num_contexts} contexts: give the same number of candidate action "
                "sequences for every context (a multiple of the contexts)."
            )
        group = rows // num_contexts
        horizon = num_context + steps - 1
        actions = self.check_step_inputs("actions", actions, rows, horizon, context_latents)
        states = self.check_step_inputs("states", states, rows, horizon, context_latents)

        def take(values: torch.Tensor | None, start: int, stop: int, every: int = 1) -> torch.Tensor | None:
            return None if values is None else values[::every, start:stop]

        if not use_cache:
            if history_cache is not None:
                raise ValueError("A `history_cache` is for the cached rollout: it needs `use_cache=True`.")
            latents = context_latents.repeat_interleave(group, dim=0) if group > 1 else context_latents
            for _ in range(steps):
                length = latents.shape[1]
                next_latent = self.predictor(latents, take(actions, 0, length), take(states, 0, length))[:, -1:]
                latents = torch.cat([latents, next_latent.to(latents.dtype)], dim=1)
            return latents[:, num_context:]

        prefix = num_context - 1
        if history_cache is not None:
            if history_cache.get_seq_length() != prefix:
                raise ValueError(
                    f"The history cache holds {history_cache.get_seq_length()} steps; a context of {num_context} steps "
                    f"needs its first {prefix}."
                )
            cache = history_cache.share(group)
            inputs, start = context_latents[:, prefix:], prefix
        elif group > 1 and prefix > 0 and all(
            same_within_groups(values[:, :prefix], group) for values in (actions, states) if values is not None
        ):
            # One history, many candidates: its first steps once per context, then shared by its candidates.
            cache = self.predictor.new_cache()
            self.predictor(context_latents[:, :prefix], take(actions, 0, prefix, group), take(states, 0, prefix, group),
                           cache=cache)
            cache = cache.share(group)
            inputs, start = context_latents[:, prefix:], prefix
        else:
            inputs, start, cache = context_latents, 0, self.predictor.new_cache()
        if group > 1:
            inputs = inputs.repeat_interleave(group, dim=0)
        # `inputs`: the context's steps `start ...` that the cache does not hold yet, then each imagined one.
        imagined = []
        for step in range(steps):
            length = inputs.shape[1]
            prediction = self.predictor(
                inputs,
                None if actions is None else actions[:, start : start + length],
                None if states is None else states[:, start : start + length],
                cache=cache,
                update_cache=step < steps - 1,  # nothing attends to the last step: keep no keys for it
            )[:, -1:]
            inputs = prediction.to(inputs.dtype)
            imagined.append(inputs)
            start += length
        return torch.cat(imagined, dim=1)


    # ----------------------------------------------------------------------------------------------- clips
    def _rollout_from_first_step(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor | None,
        states: torch.Tensor | None,
        steps: int,
        graph_steps: int,
    ) -> torch.Tensor:
        """
        `steps` latents `(B, steps, N, D)` imagined from the first step of `latents`. Only the first `graph_steps`
        keep an autograd graph (the rollout loss); the rest continues from them without one. The predictor is
        block-causal, so this is exactly one long rollout, and its first steps are exactly a shorter one.
        """
        first = latents[:, :1]
        graph_steps = min(graph_steps, steps)
        imagined = self.rollout(first, actions, graph_steps, states) if graph_steps > 0 else first[:, :0]
        if steps > graph_steps:
            with torch.no_grad():
                context = torch.cat([first, imagined], dim=1).detach()  # (B, 1 + graph_steps, N, D)
                continued = self.rollout(context, actions, steps - graph_steps, states)
            imagined = torch.cat([imagined, continued], dim=1)  # outside no_grad: the first steps keep their graph
        return imagined

    @torch.no_grad()
    def rollout_error(
        self,
        pixel_values_videos: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        L1 error of a rollout from the first step of each clip over all its later steps, next to the baseline that
        copies the first (context) latent ("nothing moves"). Actions and states as in `forward` (per step or per
        frame). Returns `(model_error, copy_context_error)`, each `(batch, steps - 1)`: per clip and per horizon; the
        same values as `forward(..., return_rollout_error=True)`. `latents` may replace the pixels as in `forward`.
        """
        latents, targets, actions, states, _ = self._encode_clip(pixel_values_videos, latents, actions, states)
        imagined = self._rollout_from_first_step(latents, self.transition_actions(actions), states,
                                                 latents.shape[1] - 1, graph_steps=0)
        return rollout_errors(imagined, targets)

    def _action_contrastive_loss(
        self,
        context: torch.Tensor,
        future: torch.Tensor,
        predicted: torch.Tensor,
        transition_actions: torch.Tensor,
        fed_actions: torch.Tensor,
        states: torch.Tensor | None,
        cache: PredictorKVCache,
    ) -> torch.Tensor:
        """
        The action-contrastive loss of the transitions t -> t+1 of a teacher-forced pass: `context` `(B, T, N, D)`
        its inputs, `future` its targets, `predicted` its predictions under `fed_actions` `(B, T, action_dim)` (NaN
        where dropped), `cache` its keys and values. Each transition's other actions are drawn from the batch's
        transition actions (other clips' and the clip's other steps') that differ from its own; its prediction under
        each of them reuses the cached steps before it (one step per other action, not the clip again). Dropped
        transitions, predicted under the null action, are left out.
        """
        batch_size, num_transitions, action_dim = transition_actions.shape
        negatives = self.config.action_contrastive_negatives
        pool = transition_actions.reshape(-1, action_dim)  # (P, A), P = B * T
        differs = (pool[:, None] != pool[None]).any(-1)  # (P, P)
        # A transition without any other action draws anything, left out below.
        weights = differs.float() + (~differs.any(-1, keepdim=True)).float()
        choice = torch.multinomial(weights, negatives, replacement=True)  # (P, K)
        valid = differs.gather(1, choice) & ~fed_actions.isnan().any(-1).reshape(-1, 1)  # (P, K)
        others = pool[choice].view(batch_size, num_transitions, negatives, action_dim)
        other_errors = []
        for step in reversed(range(num_transitions)):  # cropping the cache from its end
            step_cache = None
            if step > 0:
                cache.crop(step)
                step_cache = cache.share(negatives)  # steps < t, once per clip for its K other actions
            prediction = self.predictor(
                context[:, step : step + 1].repeat_interleave(negatives, dim=0),
                others[:, step].reshape(batch_size * negatives, 1, action_dim),
                None if states is None else states[:, step : step + 1].repeat_interleave(negatives, dim=0),
                cache=step_cache,
                update_cache=False,
            ).view(batch_size, negatives, *future.shape[2:])  # (B, K, N, D)
            other_errors.append((prediction.float() - future[:, step, None].float()).abs().mean(dim=(2, 3)))
        other_errors = torch.stack(other_errors[::-1], dim=1)  # (B, T, K)
        own_error = (predicted.float() - future.float()).abs().mean(dim=(2, 3))  # (B, T)
        return action_contrastive_loss(
            own_error, other_errors, valid.view(batch_size, num_transitions, negatives),
            self.config.action_contrastive_temperature,
        )

    def forward(
        self,
        pixel_values_videos: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        token_mask: torch.BoolTensor | None = None,
        return_rollout_error: bool = False,
        latents: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SurgicalWorldModelOutput | tuple:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, frames, 3, crop_size, crop_size)`):
            A clip preprocessed as V-JEPA 2 expects; `steps = frames / frames_per_step`, at least 2.
        latents (`torch.FloatTensor` of shape `(batch_size, steps, tokens, dim)`, *optional*):
            The clip's latents exactly as `encode` returns them (normalization included), instead of its pixels: a
            latent cache for frozen-encoder training. Only with a frozen encoder, which is then its own target.
        actions (`torch.FloatTensor` of shape `(batch_size, steps or frames, action_dim)`, *optional*):
            The labels in force at every step (see `config.action_spec`), or at every frame (SurgVU's labels):
            per-frame actions become per-step ones by averaging the frames of each step (`frames_to_steps`), here,
            once; each transition then takes its action as `config.action_pairing` says (`transition_actions`).
            None trains a pure video world model.
        states (`torch.FloatTensor` of shape `(batch_size, steps or frames, state_dim)`, *optional*):
            Proprioceptive state per step (or per frame, averaged alike), when `config.state_dim > 0`.
        token_mask (`torch.BoolTensor` of shape `(batch_size, steps - 1, tokens)`, *optional*):
            The context tokens the mask-denoising loss hides (needs `use_mask_aux`); None draws a fresh random mask
            of `mask_ratio`. Give one seeded per clip for reproducible validation.
        return_rollout_error (`bool`, *optional*, defaults to `False`):
            Also return `rollout_error` and `copy_context_error` per clip and horizon, from one rollout over all
            later steps whose first `rollout_steps` steps also give the rollout loss.
        output_hidden_states (`bool`, *optional*, defaults to `config.output_hidden_states`):
            Also return `encoder_hidden_states` (pixels only) and `predictor_hidden_states` (teacher-forced pass).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        latents, targets, actions, states, encoder_hidden_states = self._encode_clip(
            pixel_values_videos, latents, actions, states, output_hidden_states=bool(output_hidden_states)
        )
        num_steps = latents.shape[1]
        context_shape = latents[:, :-1].shape[:3]  # (B, S - 1, N): the tokens a mask may hide
        if token_mask is not None:
            if not self.config.use_mask_aux:
                raise ValueError("A `token_mask` is for the mask-denoising loss: it needs `use_mask_aux=True`.")
            if token_mask.dtype != torch.bool or token_mask.shape != context_shape:
                raise ValueError(
                    f"`token_mask` must be a bool tensor of shape (batch, steps - 1, tokens) = {tuple(context_shape)}, "
                    f"got {token_mask.dtype} of shape {tuple(token_mask.shape)}."
                )
        transition_actions = self.transition_actions(actions)  # (B, S - 1, A): the action of each transition
        past_actions = transition_actions
        if self.training and self.config.action_dropout > 0:
            # Some transitions learn "actions unknown": a NaN action, which the predictor embeds as its null action.
            dropped = torch.rand(past_actions.shape[:2], device=past_actions.device) < self.config.action_dropout
            past_actions = past_actions.masked_fill(dropped[..., None], float("nan"))
        past_states = None if states is None else states[:, :-1]
        future = targets[:, 1:]

        # The action-contrastive loss runs the other actions of each transition on this pass's keys and values.
        contrast = self.training and self.config.action_contrastive_weight > 0
        cache = self.predictor.new_cache() if contrast else None
        # `predict` without its input checks: `_encode_clip` has checked the actions and states already.
        predicted = self.predictor(latents[:, :-1], past_actions, past_states,
                                   output_hidden_states=bool(output_hidden_states), cache=cache)
        predictor_hidden_states = None
        if output_hidden_states:
            predicted, predictor_hidden_states = predicted  # (B, S - 1, N, D), per layer
        clip_teacher_forcing_loss = l1_per_clip(predicted, future)
        rollout_steps = min(self.config.rollout_steps, num_steps - 1)
        imagined = self._rollout_from_first_step(
            latents, past_actions, states, num_steps - 1 if return_rollout_error else rollout_steps, rollout_steps
        )  # (B, S - 1 or rollout_steps, N, D)
        clip_rollout_loss = l1_per_clip(imagined[:, :rollout_steps], future[:, :rollout_steps])
        clip_temporal_loss = clip_teacher_forcing_loss + clip_rollout_loss
        temporal_loss = clip_temporal_loss.mean()
        if self.config.action_change_weight != 1:
            # `temporal_loss` stays the plain L1 that validation compares; the objective weighs the action changes.
            changed = action_changes(transition_actions).float()  # (B, S - 1)
            weights = 1 + (self.config.action_change_weight - 1) * changed
            objective_teacher_forcing = weighted_l1_per_clip(predicted, future, weights)
            objective_rollout = weighted_l1_per_clip(
                imagined[:, :rollout_steps], future[:, :rollout_steps], weights[:, :rollout_steps]
            )
        else:
            objective_teacher_forcing, objective_rollout = clip_teacher_forcing_loss, clip_rollout_loss
        objective = (objective_teacher_forcing + self.config.rollout_loss_weight * objective_rollout).mean()
        contrastive = contrastive_loss(
            predicted, future, self.config.contrastive_temperature, self.config.contrastive_negatives
        )
        loss = objective + self.config.contrastive_weight * contrastive

        action_contrastive = None
        if contrast:
            action_contrastive = self._action_contrastive_loss(
                latents[:, :-1], future, predicted, transition_actions, past_actions, past_states, cache
            )
            loss = loss + self.config.action_contrastive_weight * action_contrastive

        mask_loss = clip_mask_loss = None
        if self.config.use_mask_aux:
            if token_mask is None:
                token_mask = torch.rand(context_shape, device=latents.device) < self.config.mask_ratio
            token_mask = token_mask.to(latents.device)
            denoised = self.predict(latents[:, :-1], past_actions, past_states, token_mask=token_mask)
            clip_mask_loss = masked_l1_per_clip(denoised, future, token_mask)
            mask_loss = clip_mask_loss.mean()
            loss = loss + self.config.lambda_mask * mask_loss

        rollout_error = copy_context_error = None
        if return_rollout_error:
            rollout_error, copy_context_error = rollout_errors(imagined.detach(), targets)

        output = SurgicalWorldModelOutput(
            loss=loss,
            predicted_latents=predicted,
            target_latents=future,
            temporal_loss=temporal_loss,
            teacher_forcing_loss=clip_teacher_forcing_loss.mean(),
            rollout_loss=clip_rollout_loss.mean(),
            contrastive_loss=contrastive,
            mask_loss=mask_loss,
            action_contrastive_loss=action_contrastive,
            clip_temporal_loss=clip_temporal_loss,
            clip_mask_loss=clip_mask_loss,
            rollout_error=rollout_error,
            copy_context_error=copy_context_error,
            encoder_hidden_states=encoder_hidden_states,
            predictor_hidden_states=predictor_hidden_states,
        )
        return output if return_dict else output.to_tuple()


def _vjepa2_load_failure_message(checkpoint: str, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"Could not load the V-JEPA 2 checkpoint {checkpoint!r}. It is neither a local directory in the transformers "
        "format nor reachable on the Hugging Face Hub from here (offline, HF_HUB_OFFLINE=1, or not in the local "
        "cache). Download it where the Hub is reachable, e.g. `hf download "
        f"{checkpoint if '/' in checkpoint else 'facebook/vjepa2-vitl-fpc64-256'} --local-dir vjepa2`, copy that "
        f"directory here and pass its path instead. (Cause: {reason})"
    )


SURGICAL_WM_PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")

# Keyword arguments of `from_world_model` that go to `from_pretrained` rather than to the config.
_LOADING_KWARGS = (
    "cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder", "dtype", "device_map",
    "attn_implementation",
)


class SurgicalWorldModelForVideoClassification(SurgicalWorldModelPreTrainedModel):
    """
    V-JEPA 2's frozen-backbone attentive probe on the surgical world model: `probe_num_layers` self-attention
    blocks, one cross-attention block with a learned query token (transformers' `VJEPA2AttentivePooler`), then a
    linear classifier. The whole world model is frozen (no gradients, always in eval mode); only the pooler, the
    optional predictor projection and the classifier train.

    The pooler reads the clip's latents `(B, S, N, D)` flattened to `(B, S * N, D)`. With
    `config.probe_use_predictor`, it also reads the predictor's last hidden states (after its final norm) over the
    clip's patch tokens, projected to the latent width and appended along the token axis. The predictor then runs
    with ZERO actions, always: in SurgVU the actions are the labels (task one-hot, tool per arm), so feeding the
    clip's true actions would leak the label into the probe. A model with a state token (`state_dim > 0`) is
    refused with `probe_use_predictor` rather than fed made-up states.

    `config.problem_type` chooses the loss: `"single_label_classification"` (labels `(B,)` class indices,
    cross-entropy) or `"multi_label_classification"` (labels `(B, num_labels)` multi-hot, BCE with logits);
    `config.probe_class_weights` weights it per class (CE `weight`, BCE `pos_weight`).

    Build it from a trained world model with `from_world_model`, or
    `SurgicalWorldModelForVideoClassification.from_pretrained(world_model_dir, num_labels=..., problem_type=...)`.
    """

    def __init__(self, config: SurgicalWorldModelConfig):
        super().__init__(config)
        self._check_classification_config(config)
        inverse = {label: index for index, label in config.id2label.items()}
        if config.label2id != inverse:
            # `from_pretrained(..., id2label=...)` sets `id2label` alone: keep `label2id` its inverse.
            config.label2id = inverse
        if not config.freeze_encoder:
            # The probe freezes the whole world model: no EMA target encoder is needed (nor built).
            logger.info("The attentive probe freezes the world model: setting `freeze_encoder=True`.")
            config.freeze_encoder = True
        self.num_labels = config.num_labels
        self.world_model = SurgicalWorldModel(config)
        # The pooler's layers take their sizes from a copy of the encoder config, with the probe's depth.
        self.pooler_config = type(config.encoder_config).from_dict(config.encoder_config.to_dict())
        self.pooler_config.num_pooler_layers = config.probe_num_layers
        self.pooler_config._attn_implementation_internal = config._attn_implementation
        self.pooler = VJEPA2AttentivePooler(self.pooler_config)
        self.predictor_proj = (
            nn.Linear(config.predictor_hidden_size, config.latent_dim) if config.probe_use_predictor else None
        )
        self.classifier = nn.Linear(config.latent_dim, config.num_labels)
        self.post_init()
        self._freeze_world_model()

    @staticmethod
    def _check_classification_config(config: SurgicalWorldModelConfig) -> None:
        # `from_pretrained` sets the fields given as keyword arguments after the config's own checks: check again.
        config._check_probe_values()
        if config.problem_type not in SURGICAL_WM_PROBLEM_TYPES:
            raise ValueError(
                f"SurgicalWorldModelForVideoClassification needs `problem_type` set to one of "
                f"{list(SURGICAL_WM_PROBLEM_TYPES)} (class indices and cross-entropy, or multi-hot labels and "
                f"BCE), got {config.problem_type!r}."
            )
        if config.probe_use_predictor and config.state_dim > 0:
            raise ValueError(
                f"`probe_use_predictor` runs the predictor with zero actions and no states, but this world model has "
                f"a state token (state_dim={config.state_dim}); the probe will not invent states. Use "
                "`probe_use_predictor=False`."
            )

    def _freeze_world_model(self) -> None:
        self.world_model.requires_grad_(False)
        self.world_model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.world_model.eval()  # frozen: no dropout / drop-path, ever
        return self

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        self.pooler_config._attn_implementation_internal = self.config._attn_implementation

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        # Loading replaces the parameters, and with them requires_grad=False.
        model._freeze_world_model()
        return (model, loading_info) if output_loading_info else model

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """A probe started on a world model (none of the head's weights in the checkpoint): its head is new by
        design, said in one line, rather than listed key by key in transformers' report as newly initialised. Part
        of a head, or a world-model weight, missing is still reported."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        head_keys = {key for key in self.state_dict() if not key.startswith(f"{self.base_model_prefix}.")}
        if head_keys and head_keys <= loading_info.missing_keys:
            loading_info.missing_keys -= head_keys
            heads = sorted({key.split(".")[0] for key in head_keys})
            logger.info(f"A new probe head ({', '.join(heads)}) on the world model's weights: initialised to train.")

    @classmethod
    def from_world_model(
        cls,
        path: str,
        id2label: dict[int, str],
        problem_type: str,
        probe_target: str | None = None,
        **config_overrides,
    ) -> "SurgicalWorldModelForVideoClassification":
        """
        An attentive probe on the world model saved at `path` (a directory or a Hub repository id): its weights are
        loaded as they are and frozen, the pooler and classifier are initialised.

        Args:
            path: a world model checkpoint (its `config.json` must say `"model_type": "surgical_wm"`). Weights found
                under the head's names (a classifier checkpoint) would be loaded too: start from the world model's.
            id2label: the class names, `{index: name}`; `num_labels` and `label2id` follow from it.
            problem_type: `"single_label_classification"` or `"multi_label_classification"`.
            probe_target: what the labels are (e.g. `"task"`, `"tools"`), kept in the config.
            config_overrides: other config fields (`probe_num_layers`, `probe_use_predictor`,
                `probe_class_weights`, ...); `cache_dir`, `revision`, `token`, `local_files_only`,
                `force_download`, `subfolder`, `dtype`, `device_map` and `attn_implementation` go to
                `from_pretrained`.
        """
        loading = {name: config_overrides.pop(name) for name in _LOADING_KWARGS if name in config_overrides}
        hub = {name: loading[name] for name in ("cache_dir", "revision", "token", "local_files_only",
                                                 "force_download", "subfolder") if name in loading}
        config_file = f"{str(path).rstrip('/')}/{CONFIG_NAME}"
        try:
            config_dict, _ = SurgicalWorldModelConfig.get_config_dict(path, **hub)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{config_file} could not be read: {path!r} is not a surgical world model checkpoint "
                f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})."
            ) from None
        model_type = config_dict.get("model_type")
        if model_type != SurgicalWorldModelConfig.model_type:
            raise ValueError(
                f"{config_file} has model_type {model_type!r}, not {SurgicalWorldModelConfig.model_type!r}: "
                f"{path!r} is not a surgical world model checkpoint."
            )
        unknown = sorted(name for name in config_overrides if not hasattr(SurgicalWorldModelConfig, name))
        if unknown:
            raise TypeError(f"Unknown config fields {unknown} (loading options: {list(_LOADING_KWARGS)}).")
        id2label = {int(index): label for index, label in id2label.items()}
        config_dict.pop("num_labels", None)
        config = SurgicalWorldModelConfig.from_dict({
            **config_dict,
            **config_overrides,
            "id2label": id2label,
            "label2id": {label: index for index, label in id2label.items()},
            "problem_type": problem_type,
            "probe_target": probe_target,
        })
        return cls.from_pretrained(path, config=config, **loading)

    # ------------------------------------------------------------------------------------------------ probe
    def _predictor_tokens(self, latents: torch.Tensor, output_hidden_states: bool):
        """The predictor's last hidden states (after its final norm) over the clip's patch tokens, projected to
        `(B, S * N, D)`, and its hidden states when asked; always computed with zero actions."""
        predictor = self.world_model.predictor
        batch_size, num_steps = latents.shape[:2]
        # ZERO actions, never the clip's own: in SurgVU the actions ARE the labels (task one-hot, tool per arm), so
        # true actions would hand the label to the probe. No states either (refused in __init__).
        actions = latents.new_zeros(batch_size, num_steps, self.config.action_dim) if self.config.action_dim else None
        with torch.no_grad():  # the world model is frozen; gradients start at the projection
            _, hidden_states = predictor(latents, actions, None, output_hidden_states=True)
            last = predictor.norm(hidden_states[-1])[:, :, predictor.num_condition_tokens :]  # (B, S, N, hidden)
        tokens = self.predictor_proj(last.flatten(1, 2))  # (B, S * N, D)
        return tokens, (hidden_states if output_hidden_states else None)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Own loss rather than `self.loss_function`: transformers' classification loss takes no class weights.
        weights = self.config.probe_class_weights
        weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=logits.device)
        labels = labels.to(logits.device)
        if self.config.problem_type == "single_label_classification":
            if labels.shape != logits.shape[:1] or labels.is_floating_point() or labels.dtype == torch.bool:
                raise ValueError(
                    f"Single-label classification takes class indices: integer `labels` of shape "
                    f"({logits.shape[0]},), got {labels.dtype} of shape {tuple(labels.shape)}."
                )
            return F.cross_entropy(logits.float(), labels.long(), weight=weight)
        if labels.shape != logits.shape:
            raise ValueError(
                f"Multi-label classification takes multi-hot `labels` of shape {tuple(logits.shape)} "
                f"(batch, num_labels), got {tuple(labels.shape)}."
            )
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)

    def forward(
        self,
        pixel_values_videos: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, frames, 3, crop_size, crop_size)`):
            A clip preprocessed as V-JEPA 2 expects; `steps = frames / frames_per_step` (one or more).
        latents (`torch.FloatTensor` of shape `(batch_size, steps, tokens, dim)`, *optional*):
            The clip's latents exactly as `SurgicalWorldModel.encode` returns them (a latent cache), instead of its
            pixels; give exactly one of the two.
        labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape
            `(batch_size, num_labels)`, *optional*):
            Class indices (`problem_type="single_label_classification"`) or multi-hot targets
            (`"multi_label_classification"`).
        output_hidden_states (`bool`, *optional*, defaults to `config.output_hidden_states`):
            Return `hidden_states`: the encoder's embeddings and per-layer outputs `(batch, steps, tokens, dim)`
            when pixels are given, then, with `probe_use_predictor`, the predictor's input and per-layer outputs
            `(batch, steps, condition_tokens + tokens, predictor_hidden_size)` of its zero-action pass (None when
            there is none of either).

        No actions are taken: with `probe_use_predictor` the predictor runs with zero actions, since SurgVU's
        actions are its labels.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if (pixel_values_videos is None) == (latents is None):
            raise ValueError("Give either `pixel_values_videos` or precomputed `latents`, not both or neither.")
        encoder_hidden_states = None
        if latents is not None:
            self.world_model._check_latents(latents)
        else:
            latents, encoder_hidden_states = self.world_model._encode(pixel_values_videos, output_hidden_states)
        latents = latents.detach().to(self.classifier.weight.dtype)  # (B, S, N, D), frozen
        tokens = latents.flatten(1, 2)  # (B, S * N, D)
        predictor_hidden_states = None
        if self.predictor_proj is not None:
            predictor_tokens, predictor_hidden_states = self._predictor_tokens(latents, output_hidden_states)
            tokens = torch.cat([tokens, predictor_tokens.to(tokens.dtype)], dim=1)  # (B, 2 * S * N, D)

        logits = self.classifier(self.pooler(tokens))  # (B, num_labels)
        loss = None if labels is None else self._loss(logits, labels)

        hidden_states = None
        if output_hidden_states:
            hidden_states = (encoder_hidden_states or ()) + (predictor_hidden_states or ())
            hidden_states = hidden_states or None
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=None)
        return output if return_dict else output.to_tuple()

    def save_pretrained(self, save_directory, *args, **kwargs):
        # The checkpoint also opens as the bare world model (its weights under the `world_model.` prefix):
        # AutoModel -> SurgicalWorldModel, next to AutoConfig and AutoModelForVideoClassification.
        module = type(self).__module__.split(".")[-1]
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                "AutoModel": f"{module}.{SurgicalWorldModel.__name__}"}
        return super().save_pretrained(save_directory, *args, **kwargs)


SurgicalWorldModel.register_for_auto_class("AutoModel")
SurgicalWorldModelForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")

__all__ = [
    "SurgicalWorldModel",
    "SurgicalWorldModelForVideoClassification",
    "SurgicalWorldModelOutput",
    "SurgicalWorldModelPlanOutput",
    "SurgicalWorldModelPreTrainedModel",
]

# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Planning with the surgical world model: the energy of candidate action sequences and the cross-entropy method (CEM)
over them, as V-JEPA 2-AC plans. `SurgicalWorldModelPlanningMixin` gives the model `energy` and `plan`, as
transformers' `GenerationMixin` gives `generate`: search over the model's outputs, kept apart from its layers. It
calls the model only through `encode`, `check_step_inputs`, `rollout`, `predictor` (and the predictor's cache) and
`config`. Travels to the Hub with `modeling_surgical_wm.py`, which imports it relatively: only torch and transformers
here.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transformers.utils import ModelOutput


# CEM settings by source: `plan(preset=...)` takes the arguments its caller leaves None from one of these. `bounds`
# clip each continuous action dimension (numbers, or one value per dimension; `low == high` holds a dimension at that
# value); momenta weigh the old search distribution against the elites' statistics (`momentum` for the Gaussian means
# and the categorical probabilities, `std_momentum` for the Gaussian spreads); `state_rule` (a name of `STATE_RULES`)
# moves each candidate's states by its own actions, for models with a state token. `readout` is what the search
# returns: "mean", the final search distribution (its Gaussian means, and each categorical group's most probable
# option per step), as V-JEPA 2-AC acts; or "best", the lowest-energy sequence sampled over the iterations.
# `unbiased_std`: the elites' spread with Bessel's correction, as Meta's `cem` refits it (`torch.std`'s default);
# `initial_std` and `round_below` (per dimension) where a source starts a spread elsewhere than at half the bounds, or
# rounds small values of the action it returns to 0.
PLANNING_PRESETS: dict[str, dict] = {
    # The V-JEPA 2 paper (Assran et al., 2025, arXiv:2506.09985v1). Appendix 11.2 "Robot Task Definitions": "800
    # samples, 10 refinement steps based on the top 10 samples from the previous iteration, and a planning horizon of
    # 1" (Section 4.2, "Prehensile manipulation": 10x Cosmos's 80 samples, 16 s per action on one RTX 4090).
    # Section 4.1, "Robot deployment": each sampled action within the L1 ball of radius 0.075; clipped here to 0.075
    # per dimension, the smallest box holding that ball. Momentum: not stated (Figure 7 refits the Gaussians to the
    # top k's statistics); 0.15 / 0.15, the wrapper's. Figure 7 starts from zero mean and unit variance and returns
    # the mean (readout "mean"); every preset here starts at the middle of the bounds with half their width, as
    # `mpc_utils.cem` does (std = maxnorm; the DROID preset's gripper at 1, as `cem` starts it).
    "vjepa2_ac_paper": {"num_samples": 800, "iterations": 10, "top_k": 10, "horizon": 1, "momentum": 0.15,
                        "std_momentum": 0.15, "bounds": (-0.075, 0.075), "readout": "mean", "unbiased_std": True},
    # facebookresearch/vjepa2 (commit c2963a4), notebooks/utils/world_model_wrapper.py: `WorldModel.__init__`'s default
    # `mpc_args` (rollout 2, samples 400, topk 10, cem_steps 10, momentum_mean 0.15, momentum_std 0.15, maxnorm 0.05,
    # which `cem` clips each of x, y, z to; its gripper dimension, clipped to 0.75 with its own momenta, has no
    # counterpart here). `infer_next_action` acts with what `cem` returns, its final mean.
    "vjepa2_ac_wrapper": {"num_samples": 400, "iterations": 10, "top_k": 10, "horizon": 2, "momentum": 0.15,
                          "std_momentum": 0.15, "bounds": (-0.05, 0.05), "readout": "mean", "unbiased_std": True},
    # facebookresearch/vjepa2 (commit c2963a4), notebooks/utils/mpc_utils.py: `cem`'s keyword defaults (rollout 1,
    # cem_steps 100, momentum_mean 0.25, momentum_std 0.95, samples 100, topk 10, maxnorm 0.05); it returns the final
    # mean ("5. choose final action to be mean of distribution").
    "vjepa2_ac_mpc_utils": {"num_samples": 100, "iterations": 100, "top_k": 10, "horizon": 1, "momentum": 0.25,
                            "std_momentum": 0.95, "bounds": (-0.05, 0.05), "readout": "mean",
                            "unbiased_std": True},
    # This project's default: the wrapper's search with 200 samples x 5 iterations, which reached as many goals and
    # recovered about as many hidden actions as each of the three above, within the noise of a small measurement
    # over discrete actions, in less time than any of them (benchmarks/README.md, "Choosing the default preset"),
    # all of them measured returning the best sequence sampled, which it keeps.
    "surgical_wm": {"num_samples": 200, "iterations": 5, "top_k": 10, "horizon": 2, "momentum": 0.15,
                    "std_momentum": 0.15, "bounds": (-0.05, 0.05), "readout": "best"},
    # facebookresearch/vjepa2, notebooks/utils/world_model_wrapper.py: `WorldModel.infer_next_action` with the
    # wrapper's `mpc_args`, on DROID's 7-dimensional end-effector actions [xyz, Euler xyz, gripper]; the constraints
    # of notebooks/utils/mpc_utils.py `cem`: xyz clipped to +-maxnorm per dimension (a clip, not an L2 norm), the
    # rotation deltas held at 0, the gripper within +-0.75; each candidate's pose follows its own actions
    # (`compute_new_pose`: the `end_effector` rule); it acts with `cem`'s final mean. As `cem` does, the spreads start
    # at maxnorm for x, y, z and at 1 for the gripper, are refit with the unbiased std, and a final gripper mean under
    # 0.25 in size is set to 0 (`round_small_elements`). The gripper's momenta, `cem`'s defaults
    # (`momentum_mean_gripper`, `momentum_std_gripper`: 0.15, which the wrapper's `mpc_args` leave), equal the others.
    "vjepa2_ac_droid": {"num_samples": 400, "iterations": 10, "top_k": 10, "horizon": 2, "momentum": 0.15,
                        "std_momentum": 0.15, "state_rule": "end_effector", "readout": "mean",
                        "bounds": ((-0.05, -0.05, -0.05, 0.0, 0.0, 0.0, -0.75),
                                   (0.05, 0.05, 0.05, 0.0, 0.0, 0.0, 0.75)),
                        "initial_std": (0.05, 0.05, 0.05, 0.0, 0.0, 0.0, 1.0), "unbiased_std": True,
                        "round_below": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25)},
}
DEFAULT_PLANNING_PRESET = "surgical_wm"
# How `plan` starts its categorical distributions: uniform options, or the training data's `config.action_prior`
# (its marginals at every step, or its step-to-step transitions chained from the last context action).
ACTION_PRIORS = ("uniform", "marginal", "transition")
PLANNING_READOUTS = ("mean", "best")


def hold_state(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """The state stays where it is: every candidate gets the context's last state (the rule of a frozen state)."""
    return state


def add_action(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """The state integrates the actions: next state = state + action (actions as changes of the state)."""
    return state + action


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices `(..., 3, 3)` of extrinsic x, y, z Euler angles `(..., 3)` (scipy's `"xyz"`): Rz Ry Rx."""
    cos, sin = angles.cos().unbind(-1), angles.sin().unbind(-1)
    one, zero = torch.ones_like(angles[..., 0]), torch.zeros_like(angles[..., 0])

    def matrix(*rows):
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    rotate_x = matrix((one, zero, zero), (zero, cos[0], -sin[0]), (zero, sin[0], cos[0]))
    rotate_y = matrix((cos[1], zero, sin[1]), (zero, one, zero), (-sin[1], zero, cos[1]))
    rotate_z = matrix((cos[2], -sin[2], zero), (sin[2], cos[2], zero), (zero, zero, one))
    return rotate_z @ rotate_y @ rotate_x


def matrix_to_euler(matrix: torch.Tensor) -> torch.Tensor:
    """Extrinsic x, y, z Euler angles `(..., 3)` of rotation matrices `(..., 3, 3)`, as scipy's `as_euler("xyz")`
    away from gimbal lock (y = +-pi/2)."""
    x = torch.atan2(matrix[..., 2, 1], matrix[..., 2, 2])
    y = torch.asin((-matrix[..., 2, 0]).clamp(-1.0, 1.0))
    z = torch.atan2(matrix[..., 1, 0], matrix[..., 0, 0])
    return torch.stack([x, y, z], dim=-1)


def end_effector_pose(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """
    V-JEPA 2-AC's DROID pose update (facebookresearch/vjepa2, notebooks/utils/mpc_utils.py, `compute_new_pose`):
    states and actions `[x, y, z, Euler x, y, z, gripper]`, actions as changes. The position adds the change, the
    rotation composes it on the left (R_action @ R_state, extrinsic "xyz" Euler angles), the gripper adds it and
    stays within [0, 1] (open ... closed). In float64, as Meta's numpy code.
    """
    pose, change = state.double(), action.double()
    rotation = euler_to_matrix(change[..., 3:6]) @ euler_to_matrix(pose[..., 3:6])
    gripper = (pose[..., 6:] + change[..., 6:]).clamp(0.0, 1.0)
    return torch.cat([pose[..., :3] + change[..., :3], matrix_to_euler(rotation), gripper], dim=-1).to(state.dtype)


# How each candidate's state token follows its actions in `energy` and `plan` (`state_rule=`): a name here, or any
# callable `(state (N, state_dim), action (N, action_dim)) -> next state (N, state_dim)`.
STATE_RULES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hold": hold_state,
    "add": add_action,
    "end_effector": end_effector_pose,
}


def candidate_states(
    context_states: torch.Tensor, actions: torch.Tensor, rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """
    The states `(B, K, C + H - 1, S)` of each candidate `(B, K, H, A)` over a context's `C` observed states
    `(B, C, S)` and its horizon: from the last observed one, `rule(state, action)` after each of its actions but the
    last (the state after the last step is never an input).
    """
    batch_size, num_candidates, horizon = actions.shape[:3]
    observed = context_states[:, None].expand(-1, num_candidates, -1, -1)  # (B, K, C, S)
    state = observed[:, :, -1].flatten(0, 1)  # (B * K, S)
    steps = [observed]
    for step in range(horizon - 1):
        following = rule(state, actions[:, :, step].flatten(0, 1))
        if not isinstance(following, torch.Tensor) or following.shape != state.shape:
            raise ValueError(
                f"The state rule must return the next states with the shape of the states {tuple(state.shape)}, got "
                f"{tuple(following.shape) if isinstance(following, torch.Tensor) else type(following).__name__}."
            )
        state = following.to(state.dtype)
        steps.append(state.view(batch_size, num_candidates, 1, -1))
    return torch.cat(steps, dim=2)


def per_dimension(value, action_dim: int, name: str, device: torch.device | None = None) -> torch.Tensor:
    """`value` (one number, or one per action dimension) as `(action_dim,)` floats, each >= 0; else a ValueError."""
    values = torch.as_tensor(value, dtype=torch.float32, device=device).flatten()
    if values.numel() not in (1, action_dim) or not bool((values >= 0).all()):
        raise ValueError(f"`{name}` must be one number or {action_dim} (one per action dimension), each >= 0, got "
                         f"{value!r}.")
    return values.expand(action_dim)


def round_small_elements(actions: torch.Tensor, thresholds: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """`actions` `(..., A)` with each of the dimensions `dims` set to 0 where its size is under its threshold
    (`thresholds` `(A,)`): V-JEPA 2-AC's `round_small_elements`, which `mpc_utils.cem` applies to the gripper of the
    action it returns (threshold 0.25)."""
    rounded = actions.clone()
    part = rounded[..., dims]
    rounded[..., dims] = torch.where(part.abs() < thresholds[dims].to(part.device), torch.zeros_like(part), part)
    return rounded


def step_options(actions: torch.Tensor, groups: list[tuple[str, list[int]]]) -> torch.Tensor:
    """The option of each group `(..., groups)` in actions `(..., action_dim)`: its dimension with the largest value
    when above 0.5 (a step's mean over its frames holds a label for most of the step), else `len(dims)`: none."""
    options = []
    for _, dims in groups:
        values, best = actions[..., dims].max(-1)
        options.append(torch.where(values > 0.5, best, torch.full_like(best, len(dims))))
    return torch.stack(options, dim=-1)


def empirical_action_prior(actions: torch.Tensor, groups: list[tuple[str, list[int]]], action_spec: list[str]) -> dict:
    """
    The action statistics of training data, for `config.action_prior`: per group of `groups` its options (the names
    after the `/` of `action_spec`, then "none"), their marginal frequencies over all steps, and the counts of each
    option followed by each at the next step of a clip (`transitions[from][to]`); the combinations of options of all
    groups seen in one step, as option indices in group order. `actions` `(clips, steps, action_dim)` are per-step
    actions as the model is trained on (clips that overlap count each of their steps).
    """
    options = step_options(actions, groups)  # (C, S, G)
    prior = {"steps": int(options.shape[0] * options.shape[1]),
             "transitions_counted": int(options.shape[0] * max(options.shape[1] - 1, 0)), "groups": {}}
    for index, (name, dims) in enumerate(groups):
        count = len(dims) + 1
        chosen = options[..., index]
        frequencies = torch.bincount(chosen.flatten(), minlength=count).double()
        pairs = chosen[:, :-1] * count + chosen[:, 1:]  # (C, S - 1): from * options + to
        transitions = torch.bincount(pairs.flatten(), minlength=count * count).view(count, count)
        prior["groups"][name] = {
            "options": [action_spec[dim].split("/", 1)[1] for dim in dims] + ["none"],
            "marginal": (frequencies / frequencies.sum().clamp_min(1)).tolist(),
            "transitions": transitions.tolist(),
        }
    prior["combinations"] = torch.unique(options.flatten(0, 1), dim=0).tolist()
    return prior


@dataclass
class SurgicalWorldModelPlanOutput(ModelOutput):
    r"""
    actions (`torch.FloatTensor` of shape `(contexts, horizon, action_dim)`):
        The action sequence the search returns (`settings["readout"]`), one action per step, as `config.action_spec`
        lays them out: the final search distribution's (`"mean"`: its Gaussian means, and each categorical group's
        most probable option) or the best sequence sampled (`"best"`: the lowest energy).
    energy (`torch.FloatTensor` of shape `(contexts,)`):
        Its energy: the mean L1 between the last latent its rollout imagines and the goal latent.
    energy_per_iteration (`torch.FloatTensor` of shape `(contexts, iterations)`):
        The lowest energy sampled at each CEM iteration.
    elite_energy_per_iteration (`torch.FloatTensor` of shape `(contexts, iterations)`):
        The mean energy of each iteration's `top_k` elites.
    action_mean (`torch.FloatTensor` of shape `(contexts, horizon, action_dim)`):
        The final search distribution in action space: the Gaussian means of continuous dimensions, and the
        probability of each option of a categorical group in its dimension (`1 - sum` is the probability of none).
    settings (`dict`):
        What the search ran with: `preset`, `action_prior`, `seen_only` and the values of `horizon`, `num_samples`,
        `iterations`, `top_k`, `momentum`, `std_momentum`, `bounds` and `readout` (the preset's unless given), and
        `state_rule` (its name; None where the states are given for every step).
    """

    actions: torch.FloatTensor | None = None
    energy: torch.FloatTensor | None = None
    energy_per_iteration: torch.FloatTensor | None = None
    elite_energy_per_iteration: torch.FloatTensor | None = None
    action_mean: torch.FloatTensor | None = None
    settings: dict | None = None


class SurgicalWorldModelActionSampler:
    """
    CEM's search distribution over `(contexts, horizon, action_dim)` actions: a Gaussian per step and continuous
    dimension, clipped to `bounds` (a dimension with `low == high` is held at that value), and a categorical
    distribution per step for each group of `groups` (the options are the group's dimensions and none, which leaves
    them all 0). Starts wide (the middle of the bounds, half their width or `initial_std`;
    uniform options, or `probabilities` per group `(B, H, options)` from an action prior) and is refit to elites with
    `momentum * old + (1 - momentum) * new` (`std_momentum` for the spreads; the elites' spread with Bessel's
    correction where `unbiased_std`, as `torch.std` computes it by default). With `combinations` `(K, groups)`, the
    option indices of the combinations allowed, a step draws one of them with probability proportional to the
    product of its options' probabilities: no other combination is ever proposed.
    """

    def __init__(
        self,
        batch_size: int,
        horizon: int,
        action_dim: int,
        groups: list[tuple[str, list[int]]],
        bounds: tuple[float, float] | torch.Tensor,
        device: torch.device,
        probabilities: list[torch.Tensor] | None = None,
        combinations: torch.Tensor | None = None,
        initial_std: float | tuple[float, ...] | torch.Tensor | None = None,
        unbiased_std: bool = False,
    ):
        self.batch_size, self.horizon, self.action_dim, self.groups, self.device = (
            batch_size, horizon, action_dim, groups, device)
        self.unbiased_std = unbiased_std
        self.combinations = None if combinations is None else combinations.to(device)
        in_group = torch.zeros(action_dim, dtype=torch.bool)
        for _, dims in groups:
            in_group[dims] = True
        self.continuous = (~in_group).nonzero().flatten().tolist()
        low, high = (torch.as_tensor(bound, dtype=torch.float32, device=device) for bound in bounds)
        if any(bound.numel() not in (1, action_dim) for bound in (low, high)):
            raise ValueError(
                f"`bounds` must give one number or {action_dim} (one per action dimension) for each side, got "
                f"{bounds!r}."
            )
        low, high = low.flatten().expand(action_dim), high.flatten().expand(action_dim)
        if not bool((low <= high).all()):
            raise ValueError(f"`bounds` must have low <= high in every dimension, got {bounds!r}.")
        self.low, self.high = low[self.continuous], high[self.continuous]
        self.mean = ((self.low + self.high) / 2).expand(batch_size, horizon, -1).clone()  # (B, H, Dc)
        self.std = ((self.high - self.low) / 2).expand(batch_size, horizon, -1).clone()
        if initial_std is not None:
            self.std = per_dimension(initial_std, action_dim, "initial_std", device)[self.continuous].expand(
                batch_size, horizon, -1).clone()
        if probabilities is None:
            probabilities = [torch.full((batch_size, horizon, len(dims) + 1), 1.0 / (len(dims) + 1), device=device)
                             for _, dims in groups]  # the last option of each group: none
        self.probabilities = [probs.to(device, torch.float32) for probs in probabilities]

    def sample(self, num_samples: int, generator: torch.Generator | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`num_samples` sequences `(B, S, H, A)` and, per group, the option drawn at each step `(B, S, H)`."""
        batch_size, horizon = self.batch_size, self.horizon
        samples = torch.zeros(batch_size, num_samples, horizon, self.action_dim, device=self.device)
        noise = torch.randn(batch_size, num_samples, horizon, len(self.continuous), generator=generator,
                            device=self.device)
        samples[..., self.continuous] = torch.maximum(
            torch.minimum(self.mean[:, None] + self.std[:, None] * noise, self.high), self.low)
        if self.combinations is None:
            choices = []
            for (_, dims), probs in zip(self.groups, self.probabilities):
                drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), num_samples, replacement=True,
                                          generator=generator)  # (B * H, S)
                choices.append(drawn.view(batch_size, horizon, num_samples).transpose(1, 2))  # (B, S, H)
        else:
            weights = self._combination_weights()  # (B, H, K)
            drawn = torch.multinomial(weights.reshape(-1, weights.shape[-1]), num_samples, replacement=True,
                                      generator=generator)  # (B * H, S)
            drawn = drawn.view(batch_size, horizon, num_samples).transpose(1, 2)  # (B, S, H)
            choices = [self.combinations[drawn, index] for index in range(len(self.groups))]
        for (_, dims), drawn in zip(self.groups, choices):
            samples[..., dims] = F.one_hot(drawn, len(dims) + 1)[..., : len(dims)].to(samples.dtype)
        return samples, choices

    def _combination_weights(self) -> torch.Tensor:
        """How likely each allowed combination is at each step `(B, H, K)`: the product of its options'
        probabilities (equal weights where every combination has probability 0)."""
        weights = torch.ones(self.batch_size, self.horizon, len(self.combinations), device=self.device)
        for index, probs in enumerate(self.probabilities):
            weights = weights * probs[..., self.combinations[:, index]]
        return torch.where(weights.sum(-1, keepdim=True) > 0, weights, torch.ones_like(weights))

    def mode(self) -> torch.Tensor:
        """The distribution's own action sequence `(B, H, A)`, the `"mean"` readout: the Gaussian means of continuous
        dimensions and, per step, each group's most probable option (the first of equals; with `combinations`, the
        most probable allowed combination), one-hot as sampled. A mean of one-hot options is no action."""
        actions = torch.zeros(self.batch_size, self.horizon, self.action_dim, device=self.device)
        actions[..., self.continuous] = self.mean
        if self.combinations is None:
            chosen = [probs.argmax(-1) for probs in self.probabilities]  # (B, H) each
        else:
            best = self._combination_weights().argmax(-1)  # (B, H)
            chosen = [self.combinations[best, index] for index in range(len(self.groups))]
        for (_, dims), option in zip(self.groups, chosen):
            actions[..., dims] = F.one_hot(option, len(dims) + 1)[..., : len(dims)].to(actions.dtype)
        return actions

    def refit(self, elites: torch.Tensor, elite_choices: list[torch.Tensor], momentum: float,
              std_momentum: float) -> None:
        """Moves the distribution toward the elites `(B, k, H, A)` and their options per group `(B, k, H)`."""
        if self.continuous:
            elite_continuous = elites[..., self.continuous]
            self.mean = momentum * self.mean + (1 - momentum) * elite_continuous.mean(1)
            spread = elite_continuous.std(1, unbiased=self.unbiased_std)
            self.std = std_momentum * self.std + (1 - std_momentum) * spread
        for index, ((_, dims), drawn) in enumerate(zip(self.groups, elite_choices)):
            counts = F.one_hot(drawn, len(dims) + 1).float().mean(1)  # (B, H, options)
            self.probabilities[index] = momentum * self.probabilities[index] + (1 - momentum) * counts

    def action_mean(self) -> torch.Tensor:
        """The distribution as actions `(B, H, A)`: Gaussian means, and each option's probability in its dimension."""
        action_mean = torch.zeros(self.batch_size, self.horizon, self.action_dim, device=self.device)
        action_mean[..., self.continuous] = self.mean
        for (_, dims), probs in zip(self.groups, self.probabilities):
            action_mean[..., dims] = probs[..., : len(dims)]
        return action_mean


class SurgicalWorldModelPlanningMixin:
    """`energy` and `plan` for `SurgicalWorldModel` (mixed in as `GenerationMixin` is into transformers' models)."""

    def _planning_latents(self, name: str, value: torch.Tensor | None) -> torch.Tensor:
        """`context` / `goal` of `plan` as latents `(batch, steps, tokens, dim)`: a clip is encoded, latents checked."""
        if value is None:
            raise ValueError(
                f"Planning needs a `{name}` observation: a clip `(batch, frames, 3, {self.config.encoder_config.crop_size}"
                f", {self.config.encoder_config.crop_size})` or its latents from `encode`."
                + (" The world model plans toward a goal; without one there is nothing to reach." if name == "goal" else "")
            )
        if value.ndim == 5:
            try:
                return self.encode(value)
            except ValueError as error:
                raise ValueError(f"`{name}`: {error}") from None
        if value.ndim == 3 and name == "goal":
            value = value[:, None]
        expected = (self.config.tokens_per_step, self.config.latent_dim)
        if value.ndim != 4 or tuple(value.shape[2:]) != expected:
            raise ValueError(
                f"`{name}` latents have shape {tuple(value.shape)}; this model's encoder makes (batch, steps, "
                f"{expected[0]}, {expected[1]}) at {self.config.encoder_config.crop_size} px: they come from another "
                "encoder or another resolution. Encode the frames with this model (`encode`)."
            )
        if self.config.normalize_latents:
            # `encode` layer-norms every token: other latents of the same shape come from elsewhere.
            tokens = value.detach().float()
            if (tokens.mean(-1).abs().amax() > 0.05) or ((tokens.std(-1, unbiased=False) - 1).abs().amax() > 0.05):
                raise ValueError(
                    f"`{name}` latents are not layer-normed per token as this model's `encode` makes them: they come "
                    "from another encoder or were not normalised. Encode the frames with this model."
                )
        return value.to(self.dtype)

    def _context_and_goal(self, context: torch.Tensor, goal: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The context latents `(B, C, N, D)` and the goal latent `(B, N, D)` (the goal's last step), one per context."""
        context = self._planning_latents("context", context)
        goal = self._planning_latents("goal", goal)[:, -1]
        if goal.shape[0] != context.shape[0]:
            raise ValueError(f"{context.shape[0]} contexts but {goal.shape[0]} goals: give one goal per context.")
        return context, goal

    def plan_chunk_size(self, num_context: int, horizon: int) -> int:
        """Candidates per predictor call so that one call's keys, values, attention scores and activations fit in
        half the free memory of a CUDA device, or in 1 GiB elsewhere (on a CPU larger batches are no faster)."""
        budget_bytes = 2**30
        if self.device.type == "cuda":
            budget_bytes = torch.cuda.mem_get_info(self.device)[0] // 2
        config = self.config
        tokens = self.predictor.num_condition_tokens + config.tokens_per_step
        element = torch.finfo(self.dtype).bits // 8
        # A candidate's own keys and values: its steps after the shared history (the last context step and the
        # imagined ones); attention reads the history besides, one layer at a time.
        kv_bytes = 2 * config.predictor_num_hidden_layers * (horizon + 1) * tokens * config.predictor_hidden_size
        kv_bytes += 2 * (num_context - 1) * tokens * config.predictor_hidden_size
        score_bytes = 2 * config.predictor_num_attention_heads * tokens * (num_context + horizon) * tokens
        activation_bytes = 6 * tokens * int(config.predictor_hidden_size * config.predictor_mlp_ratio)
        return max(1, budget_bytes // ((kv_bytes + score_bytes + activation_bytes) * element))

    @torch.no_grad()
    def energy(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        actions: torch.Tensor,
        context_actions: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        chunk_size: int | None = None,
        use_cache: bool = True,
        deduplicate: bool = True,
        state_rule: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """
        How far candidate action sequences lead from `context` to `goal`: the mean L1, over tokens and channels,
        between the last latent of the rollout under each sequence and the goal latent (V-JEPA 2-AC's energy).

        Args:
            context: a clip `(batch, frames, 3, H, W)` or its latents `(batch, steps, tokens, dim)`; the rollout
                starts after its last step.
            goal: a clip or latents as `context` (its last step is the goal), or goal latents `(batch, tokens, dim)`.
            actions: `(batch, candidates, horizon, action_dim)`, or `(batch, horizon, action_dim)` for one each: the
                action of each step from the context's last step on.
            context_actions: `(batch, context_steps - 1, action_dim)`, the actions taken between the context's steps
                (zeros when None).
            states: `(batch, context_steps + horizon - 1, state_dim)` when the model has a state token, the same for
                every candidate; with `state_rule`, the observed `(batch, context_steps, state_dim)` only.
            chunk_size: candidates per predictor call (None: what fits in half the free CUDA memory, or 1 GiB).
            use_cache: the KV-cached rollout (`rollout`'s `use_cache`).
            deduplicate: roll out each distinct candidate of a context once (its copies share its energy).
            state_rule: how each candidate's states follow its own actions over the horizon (`candidate_states`): a
                name of `STATE_RULES` (`"end_effector"`: V-JEPA 2-AC's DROID poses; `"add"`; `"hold"`) or a callable
                `(state, action) -> next_state` on `(N, state_dim)` and `(N, action_dim)`.
        Returns:
            `(batch, candidates)` energies in float32 (`(batch,)` for 3-D `actions`).
        """
        context, goal = self._context_and_goal(context, goal)
        single = actions.ndim == 3
        if single:
            actions = actions[:, None]
        batch_size = context.shape[0]
        if actions.ndim != 4 or actions.shape[0] != batch_size or actions.shape[3] != self.config.action_dim:
            raise ValueError(
                f"Candidate actions must have shape ({batch_size}, candidates, horizon, {self.config.action_dim}), got "
                f"{tuple(actions.shape)}."
            )
        rule = self._state_rule(state_rule)
        history, states = self._history_and_states(context, context_actions, states, actions.shape[2], rule)
        energies = self._candidate_energies(context, goal, actions, history, states, chunk_size, use_cache,
                                            scored=[{} for _ in range(batch_size)] if deduplicate else None,
                                            state_rule=rule)
        energies = energies.to(context.device)
        return energies[:, 0] if single else energies

    def _state_rule(
        self, state_rule: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The callable of `state_rule` (a name of `STATE_RULES` or a callable), checked against the model."""
        if state_rule is None:
            return None
        state_dim, action_dim = self.config.state_dim, self.config.action_dim
        if state_dim == 0:
            raise ValueError("A `state_rule` moves the state token, but this model has none (state_dim=0).")
        if callable(state_rule):
            return state_rule
        if state_rule not in STATE_RULES:
            raise ValueError(
                f"Unknown state rule {state_rule!r}; the rules are {', '.join(STATE_RULES)}, or a callable."
            )
        if state_rule == "add" and state_dim != action_dim:
            raise ValueError(f"The state rule 'add' adds actions to states: it needs state_dim ({state_dim}) == "
                             f"action_dim ({action_dim}).")
        if state_rule == "end_effector" and not state_dim == action_dim == 7:
            raise ValueError(f"The state rule 'end_effector' moves 7-dimensional poses [xyz, Euler xyz, gripper] by "
                             f"7-dimensional actions; this model has state_dim={state_dim}, action_dim={action_dim}.")
        return STATE_RULES[state_rule]

    def _history_and_states(
        self,
        context: torch.Tensor,
        context_actions: torch.Tensor | None,
        states: torch.Tensor | None,
        horizon: int,
        state_rule: Callable | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The actions between the context's steps `(B, C - 1, A)` (zeros when None) and the states over context and
        horizon `(B, C + horizon - 1, S)`, or over the context `(B, C, S)` with a `state_rule` (None without a state
        token), checked and on the context's device."""
        batch_size, num_context = context.shape[:2]
        action_dim = self.config.action_dim
        if context_actions is None:
            history = context.new_zeros(batch_size, num_context - 1, action_dim)
        elif context_actions.shape != (batch_size, num_context - 1, action_dim):
            raise ValueError(
                f"`context_actions` must have shape ({batch_size}, {num_context - 1}, {action_dim}): the actions "
                f"between the context's {num_context} steps; got {tuple(context_actions.shape)}."
            )
        else:
            history = context_actions.to(context.device, context.dtype)
        num_states = num_context if state_rule is not None else num_context + horizon - 1
        states = self.check_step_inputs("states", states, batch_size, num_states, context)
        return history, None if states is None else states.to(context.device)

    def _history_cache(self, context: torch.Tensor, history: torch.Tensor, states: torch.Tensor | None):
        """The predictor's cache of the context's first `C - 1` steps and their actions (None for a one-step
        context): what every candidate continuing this history shares."""
        num_history = context.shape[1] - 1
        if num_history == 0:
            return None
        cache = self.predictor.new_cache()
        self.predictor(context[:, :num_history], history if self.config.action_dim else None,
                       None if states is None else states[:, :num_history], cache=cache)
        return cache

    def _rollout_energies(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        candidates: torch.Tensor,
        history: torch.Tensor,
        states: torch.Tensor | None,
        chunk_size: int | None,
        use_cache: bool,
        history_cache=None,
        state_rule: Callable | None = None,
    ) -> torch.Tensor:
        """
        Energies `(B, K)` of every candidate `(B, K, H, A)` from latents `context` `(B, C, N, D)` to `goal`
        `(B, N, D)`, `chunk_size` candidates per rollout. With the cache, the context's history is computed once (or
        taken from `history_cache`, made by `_history_cache` for these contexts) and shared by every chunk. With a
        `state_rule`, `states` are the context's and each candidate's follow its actions (`candidate_states`).
        """
        batch_size, num_context = context.shape[:2]
        num_candidates, horizon = candidates.shape[1:3]
        chunk_size = chunk_size or self.plan_chunk_size(num_context, horizon)
        if use_cache and history_cache is None:
            history_cache = self._history_cache(context, history, states)
        energies = []
        for start in range(0, num_candidates, chunk_size):
            chunk = candidates[:, start : start + chunk_size].to(context.device, context.dtype)  # (B, c, H, A)
            size = chunk.shape[1]
            sequences = torch.cat([history[:, None].expand(-1, size, -1, -1), chunk], dim=2).flatten(0, 1)
            if states is None:
                chunk_states = None
            elif state_rule is not None:
                chunk_states = candidate_states(states, chunk, state_rule).flatten(0, 1)  # (B * c, C + H - 1, S)
            else:
                chunk_states = states.repeat_interleave(size, dim=0)
            final = self.rollout(context, sequences, horizon, chunk_states, use_cache=use_cache,
                                 history_cache=history_cache if use_cache else None)[:, -1]
            final = final.view(batch_size, size, *final.shape[1:])  # (B, c, N, D)
            energies.append((final.float() - goal[:, None].float()).abs().mean(dim=(2, 3)))
        return torch.cat(energies, dim=1)

    def _candidate_energies(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        candidates: torch.Tensor,
        history: torch.Tensor,
        states: torch.Tensor | None,
        chunk_size: int | None,
        use_cache: bool,
        scored: list[dict[bytes, float]] | None,
        history_caches: list | None = None,
        state_rule: Callable | None = None,
    ) -> torch.Tensor:
        """
        The energies `(B, K)` of `candidates`. Without `scored`, `_rollout_energies` of them all. With it (on the CPU),
        each distinct candidate of a context is rolled out once: `scored[b]` maps the bytes of the sequences of
        context b already scored to their energy, and learns the new ones. One dict for a call deduplicates within
        it; one kept over a plan's iterations scores each sequence once per plan (a narrowing search over discrete
        actions draws the same sequences again and again).
        """
        if scored is None:
            return self._rollout_energies(context, goal, candidates, history, states, chunk_size, use_cache,
                                          state_rule=state_rule)
        batch_size, num_candidates = candidates.shape[:2]
        energies = torch.empty(batch_size, num_candidates)
        for row in range(batch_size):
            flat = candidates[row].detach().cpu().flatten(1).contiguous()  # (K, H * A)
            keys = [sample.view(torch.uint8).numpy().tobytes() for sample in flat]
            new = sorted({key: index for index, key in reversed(list(enumerate(keys))) if key not in scored[row]}
                         .values())  # the first copy of each sequence not scored yet
            if new:
                found = self._rollout_energies(
                    context[row : row + 1], goal[row : row + 1], candidates[row : row + 1, new],
                    history[row : row + 1], None if states is None else states[row : row + 1], chunk_size, use_cache,
                    history_cache=None if history_caches is None else history_caches[row], state_rule=state_rule,
                )
                scored[row].update(zip((keys[index] for index in new), found[0].tolist()))
            energies[row] = torch.tensor([scored[row][key] for key in keys])
        return energies

    @torch.no_grad()
    def plan(
        self,
        context: torch.Tensor,
        goal: torch.Tensor | None = None,
        horizon: int | None = None,
        num_samples: int | None = None,
        iterations: int | None = None,
        top_k: int | None = None,
        momentum: float | None = None,
        bounds: tuple[float, float] | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        context_actions: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        discrete_groups: list[str] | None = None,
        chunk_size: int | None = None,
        use_cache: bool = True,
        deduplicate: bool = True,
        preset: str = DEFAULT_PLANNING_PRESET,
        std_momentum: float | None = None,
        action_prior: str = "uniform",
        seen_only: bool = False,
        state_rule: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        readout: str | None = None,
        initial_std: float | tuple[float, ...] | None = None,
        unbiased_std: bool | None = None,
        round_below: float | tuple[float, ...] | None = None,
    ) -> SurgicalWorldModelPlanOutput:
        """
        Searches for the `horizon` actions that lead from `context` to `goal` with the cross-entropy method (CEM), as
        V-JEPA 2-AC plans. Each iteration samples `num_samples` action sequences, scores them all with `energy`
        (batched, the KV-cached rollout, `chunk_size` candidates per call), and refits the search distribution to the
        `top_k` lowest: a Gaussian per step for continuous dimensions (clipped to `bounds`), a categorical
        distribution per step for each group of `discrete_groups` (default `config.discrete_action_groups`; the
        options are the group's dimensions and none). New statistics are mixed with the old as `momentum * old +
        (1 - momentum) * new` (`std_momentum` for the Gaussian spreads). Also infers the actions that explain a
        stretch of video: the context is its start, the goal its end.

        `preset` (a name of `PLANNING_PRESETS`: `vjepa2_ac_paper`, `vjepa2_ac_wrapper`, `vjepa2_ac_mpc_utils`,
        `vjepa2_ac_droid` or this project's `surgical_wm`) gives every search setting left None; an explicit argument
        overrides it. A preset's `state_rule` applies to models with a state token.
        `action_prior` starts the categorical distributions from the training data's statistics in
        `config.action_prior` instead of uniform options: `"marginal"` (each option's frequency, at every step) or
        `"transition"` (the step-to-step transitions chained from the option of the last context action, or from the
        marginals without context actions); CEM then refits them as it refits uniform ones. `seen_only` draws only the
        combinations of options seen in one training step. `readout` is what it returns (`PLANNING_READOUTS`):
        `"mean"`, the final search distribution as V-JEPA 2-AC acts (the Gaussian means; for each categorical group
        its most probable option per step), the readout of the presets named for Meta's planners; or `"best"`, the
        lowest-energy sequence sampled over the iterations, `surgical_wm`'s. The energy returned is that sequence's.
        Where the source does, a preset also sets `initial_std` (the Gaussians' starting spreads, one number or one
        per action dimension; default half the bounds' width), `unbiased_std` (the elites' spread with Bessel's
        correction, as Meta's `cem` takes `torch.std`; default False) and `round_below` (continuous dimensions of the
        returned sequence set to 0 where smaller in size: `cem`'s final gripper rounding; default none).

        Each distinct sequence is rolled out once per plan (`deduplicate`): once the categorical distributions narrow,
        most samples repeat sequences already scored. The observed history (a context of several steps) is computed
        once per plan and shared by all candidates. `chunk_size=1, use_cache=False, deduplicate=False` is the naive
        per-sample loop, with the same result.

        Args:
            context, goal, context_actions, states, state_rule: as in `energy`; clips or latents. Without a goal, a
                ValueError.
            bounds: `(low, high)` of continuous dimensions, numbers or `action_dim` values each; `low == high` holds
                a dimension at that value.
            generator: makes the search deterministic (sampling runs on the generator's device).
        Returns:
            [`SurgicalWorldModelPlanOutput`]: the sequence found (`readout`), its energy and the energy per iteration,
            and the settings the search ran with (preset, prior and each value).
        """
        if preset not in PLANNING_PRESETS:
            raise ValueError(f"Unknown planning preset {preset!r}; the presets are {', '.join(PLANNING_PRESETS)}.")
        given = {"horizon": horizon, "num_samples": num_samples, "iterations": iterations, "top_k": top_k,
                 "momentum": momentum, "std_momentum": std_momentum, "bounds": bounds, "readout": readout,
                 "initial_std": initial_std, "unbiased_std": unbiased_std, "round_below": round_below}
        defaults = {"initial_std": None, "unbiased_std": False, "round_below": None}
        settings = {name: PLANNING_PRESETS[preset].get(name, defaults.get(name)) if value is None else value
                    for name, value in given.items()}
        (horizon, num_samples, iterations, top_k, momentum, std_momentum, bounds, readout, initial_std, unbiased_std,
         round_below) = settings.values()
        for name, value, low in (("horizon", horizon, 1), ("num_samples", num_samples, 1), ("iterations", iterations, 1),
                                 ("top_k", top_k, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
        if top_k > num_samples:
            raise ValueError(f"`top_k` ({top_k}) cannot exceed `num_samples` ({num_samples}).")
        if unbiased_std and top_k < 2:
            raise ValueError("`unbiased_std` needs `top_k` >= 2: the corrected spread of one elite is undefined.")
        for name, value in (("momentum", momentum), ("std_momentum", std_momentum)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
        if action_prior not in ACTION_PRIORS:
            raise ValueError(f"`action_prior` must be one of {', '.join(ACTION_PRIORS)}, got {action_prior!r}.")
        if readout not in PLANNING_READOUTS:
            raise ValueError(f"`readout` must be one of {', '.join(PLANNING_READOUTS)}, got {readout!r}.")
        if self.config.action_dim == 0:
            raise ValueError("This model takes no actions (action_dim=0): there is nothing to plan.")
        if state_rule is None and self.config.state_dim > 0:
            state_rule = PLANNING_PRESETS[preset].get("state_rule")
        rule = self._state_rule(state_rule)
        context, goal = self._context_and_goal(context, goal)
        batch_size = context.shape[0]
        sample_device = generator.device if generator is not None else torch.device("cpu")
        groups = self.config.action_groups(discrete_groups)
        probabilities, combinations = self._prior_start(groups, action_prior, seen_only, context_actions, batch_size,
                                                        horizon)
        sampler = SurgicalWorldModelActionSampler(batch_size, horizon, self.config.action_dim, groups, bounds,
                                                  sample_device, probabilities, combinations, initial_std,
                                                  bool(unbiased_std))
        thresholds = None if round_below is None else per_dimension(round_below, self.config.action_dim,
                                                                     "round_below")
        history, states = self._history_and_states(context, context_actions, states, horizon, rule)
        # The observed history is computed once per plan, and each distinct sequence rolled out once per plan.
        scored = [{} for _ in range(batch_size)] if deduplicate else None
        history_caches = [self._history_cache(context[row : row + 1], history[row : row + 1],
                                              None if states is None else states[row : row + 1])
                          if use_cache and deduplicate else None for row in range(batch_size)]

        best_actions = torch.zeros(batch_size, horizon, self.config.action_dim, device=sample_device)
        best_energy = torch.full((batch_size,), float("inf"), device=sample_device)
        lowest, elite_mean = [], []
        rows = torch.arange(batch_size, device=sample_device)[:, None]
        for _ in range(iterations):
            samples, choices = sampler.sample(num_samples, generator)
            energies = self._candidate_energies(context, goal, samples, history, states, chunk_size, use_cache, scored,
                                                history_caches, state_rule=rule).to(sample_device)
            order = torch.argsort(energies, dim=1, stable=True)[:, :top_k]  # (B, k)
            elites = samples[rows, order]  # (B, k, H, A)
            elite_energies = energies[rows, order]
            lowest.append(elite_energies[:, 0])
            elite_mean.append(elite_energies.mean(1))
            improved = elite_energies[:, 0] < best_energy
            best_energy = torch.where(improved, elite_energies[:, 0], best_energy)
            best_actions[improved] = elites[improved, 0]
            sampler.refit(elites, [drawn[rows, order] for drawn in choices], momentum, std_momentum)
        final = sampler.mode() if readout == "mean" else best_actions
        if thresholds is not None:
            final = round_small_elements(final, thresholds, sampler.continuous)
        if readout == "mean" or not torch.equal(final, best_actions):
            # scored like a sample: a sequence already rolled out is not rolled out again
            best_energy = self._candidate_energies(context, goal, final[:, None], history, states, chunk_size,
                                                   use_cache, scored, history_caches,
                                                   state_rule=rule).to(sample_device)[:, 0]
        best_actions = final

        return SurgicalWorldModelPlanOutput(
            actions=best_actions, energy=best_energy, energy_per_iteration=torch.stack(lowest, dim=1),
            elite_energy_per_iteration=torch.stack(elite_mean, dim=1), action_mean=sampler.action_mean(),
            settings={"preset": preset, "action_prior": action_prior, "seen_only": seen_only, **settings,
                      "bounds": bounds.tolist() if isinstance(bounds, torch.Tensor) else [
                          list(bound) if isinstance(bound, (tuple, list)) else bound for bound in bounds],
                      **{name: value.tolist() if isinstance(value, torch.Tensor) else
                         list(value) if isinstance(value, (tuple, list)) else value
                         for name, value in (("initial_std", initial_std), ("round_below", round_below))},
                      "unbiased_std": bool(unbiased_std),
                      "state_rule": state_rule if state_rule is None or isinstance(state_rule, str)
                      else getattr(state_rule, "__name__", "callable")},
        )

    def _prior_start(
        self,
        groups: list[tuple[str, list[int]]],
        action_prior: str,
        seen_only: bool,
        context_actions: torch.Tensor | None,
        batch_size: int,
        horizon: int,
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        """The starting probabilities per group `(B, H, options)` that `action_prior` gives (None: uniform) and, with
        `seen_only`, the combinations seen in training `(K, groups)`, both from `config.action_prior`, checked against
        the planning groups."""
        if action_prior == "uniform" and not seen_only:
            return None, None
        prior = getattr(self.config, "action_prior", None)
        if not prior:
            raise ValueError(
                f"`action_prior={action_prior!r}`{' and `seen_only`' if seen_only else ''} need the training data's "
                "action statistics in `config.action_prior`, which this model has none of: train it with train_hf.py, "
                "or plan with `action_prior='uniform'` and `seen_only=False`."
            )
        for name, dims in groups:
            stats = prior["groups"].get(name)
            if stats is None or len(stats["marginal"]) != len(dims) + 1:
                raise ValueError(
                    f"`config.action_prior` has no statistics of {len(dims) + 1} options for the action group {name!r} "
                    f"(it has {sorted(prior['groups'])}): it was computed for other actions."
                )
        names, prior_names = [name for name, _ in groups], list(prior["groups"])
        if sorted(prior_names) != sorted(names):
            raise ValueError(f"`config.action_prior` covers the groups {prior_names}, planning uses {names}: plan "
                             "with the groups it was computed for.")
        combinations = None
        if seen_only:  # the prior's columns follow its own group order; the planner's may differ (MM-OR's evaluation)
            combinations = torch.tensor(prior["combinations"], dtype=torch.long).reshape(-1, len(prior_names))
            combinations = combinations[:, [prior_names.index(name) for name in names]]
        if action_prior == "uniform":
            return None, combinations
        last = None
        if action_prior == "transition" and context_actions is not None and context_actions.shape[1] > 0:
            last = step_options(context_actions[:, -1].float().cpu(), groups)  # (B, groups)
        probabilities = []
        for index, (name, _) in enumerate(groups):
            marginal = torch.tensor(prior["groups"][name]["marginal"], dtype=torch.float32)
            if action_prior == "marginal":
                probabilities.append(marginal.expand(batch_size, horizon, -1).clone())
                continue
            counts = torch.tensor(prior["groups"][name]["transitions"], dtype=torch.float32)
            totals = counts.sum(1, keepdim=True)
            # An option never followed by another in training: the marginals.
            transitions = torch.where(totals > 0, counts / totals.clamp_min(1), marginal)  # (from, to)
            step = marginal.expand(batch_size, -1) if last is None else transitions[last[:, index]]  # (B, options)
            per_step = []
            for _ in range(horizon):
                per_step.append(step)
                step = step @ transitions
            probabilities.append(torch.stack(per_step, dim=1))  # (B, H, options)
        return probabilities, combinations

"""The training loop's step logic in process: the non-finite guard with a real GradScaler, inf gradients, gradient
accumulation, the learning-rate schedule, seeded validation masks."""

import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from training_surgical_wm.arguments import parse_training_arguments as parse_args
from training_surgical_wm.guard import NonFiniteGuard
from training_surgical_wm.world_model import seeded_token_masks


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps its state in process-wide singletons: each test starts from none."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def linear_setup(accumulation=1, scaler=None, lr=0.1):
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation,
                              mixed_precision="fp16" if scaler is not None else "no")
    model = accelerator.prepare(torch.nn.Linear(4, 2))
    if scaler is not None:
        # What Accelerate sets up for fp16 on a GPU; on CPU it makes no scaler, so the test installs a real one.
        accelerator.native_amp, accelerator.scaler = True, scaler
    optimizer = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=lr))
    return accelerator, model, optimizer


def micro_batch(index):
    generator = torch.Generator().manual_seed(100 + index)
    return torch.randn(3, 4, generator=generator), torch.randn(3, 2, generator=generator)


def train_step(accelerator, model, optimizer, guard, index, nan_loss=False, inf_grad=False):
    inputs, targets = micro_batch(index)
    handle = model.weight.register_hook(lambda grad: grad * math.inf) if inf_grad else None
    with accelerator.accumulate(model):
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        if nan_loss:
            loss = loss * math.nan
        loss_is_bad = guard.backward(loss)
        updated = guard.step(model, optimizer) if accelerator.sync_gradients else None
    if handle is not None:
        handle.remove()
    return loss_is_bad, updated


def weights(model):
    return [parameter.detach().clone() for parameter in model.parameters()]


def test_fp16_overflow_skips_the_step_lowers_the_scale_and_training_goes_on():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    accelerator, model, optimizer = linear_setup(scaler=scaler)
    guard = NonFiniteGuard(accelerator, max_grad_norm=1.0)
    before = weights(model)

    loss_is_bad, updated = train_step(accelerator, model, optimizer, guard, 0, inf_grad=True)
    assert (loss_is_bad, updated) == (False, False)  # a finite loss, an overflowing gradient
    assert scaler.get_scale() == 2.0**9  # the scaler saw the overflow and backed off
    for old, new in zip(before, weights(model)):
        assert torch.equal(old, new)
    assert all(parameter.grad is None for parameter in model.parameters())

    for index in (1, 2):  # before the fix, the next step raised "unscale_() has already been called"
        loss_is_bad, updated = train_step(accelerator, model, optimizer, guard, index)
        assert (loss_is_bad, updated) == (False, True)
    assert scaler.get_scale() == 2.0**9
    assert all(not torch.equal(old, new) for old, new in zip(before, weights(model)))
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_fp16_non_finite_loss_skips_backward_and_leaves_the_scaler_alone():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    accelerator, model, optimizer = linear_setup(scaler=scaler)
    guard = NonFiniteGuard(accelerator, max_grad_norm=1.0)
    before = weights(model)
    assert train_step(accelerator, model, optimizer, guard, 0, nan_loss=True) == (True, False)
    assert scaler.get_scale() == 2.0**10
    assert all(torch.equal(old, new) for old, new in zip(before, weights(model)))
    assert train_step(accelerator, model, optimizer, guard, 1) == (False, True)


def test_inf_gradient_with_a_finite_loss_is_skipped_and_leaves_nothing_behind():
    accelerator, model, optimizer = linear_setup()
    guard = NonFiniteGuard(accelerator, max_grad_norm=1.0)
    start = weights(model)
    assert train_step(accelerator, model, optimizer, guard, 0, inf_grad=True) == (False, False)
    assert all(torch.equal(old, new) for old, new in zip(start, weights(model)))
    assert train_step(accelerator, model, optimizer, guard, 1) == (False, True)
    after_skip = weights(model)

    # The step after the skip is exactly a clean step from the start weights on the same batch.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator, reference, optimizer = linear_setup()
    guard = NonFiniteGuard(accelerator, max_grad_norm=1.0)
    assert train_step(accelerator, reference, optimizer, guard, 1) == (False, True)
    for got, expected in zip(after_skip, weights(reference)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_accumulation_drops_the_whole_window_with_a_bad_micro_batch():
    accelerator, model, optimizer = linear_setup(accumulation=2)
    guard = NonFiniteGuard(accelerator, max_grad_norm=100.0)
    start = weights(model)
    outcomes = [train_step(accelerator, model, optimizer, guard, 0),  # good, but in the bad window
                train_step(accelerator, model, optimizer, guard, 1, nan_loss=True)]
    assert outcomes == [(False, None), (True, False)]
    assert all(torch.equal(old, new) for old, new in zip(start, weights(model)))
    outcomes = [train_step(accelerator, model, optimizer, guard, index) for index in (2, 3)]
    assert outcomes == [(False, None), (False, True)]
    got = weights(model)

    # Only the clean window counts: no gradient of micro-batch 0 leaked into the step.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator, reference, optimizer = linear_setup(accumulation=2)
    guard = NonFiniteGuard(accelerator, max_grad_norm=100.0)
    train_step(accelerator, reference, optimizer, guard, 2)
    train_step(accelerator, reference, optimizer, guard, 3)
    for value, expected in zip(got, weights(reference)):
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)


def test_a_bad_micro_batch_late_in_the_window_also_drops_the_window():
    accelerator, model, optimizer = linear_setup(accumulation=2)
    guard = NonFiniteGuard(accelerator, max_grad_norm=100.0)
    start = weights(model)
    train_step(accelerator, model, optimizer, guard, 0, nan_loss=True)
    assert train_step(accelerator, model, optimizer, guard, 1) == (False, False)
    assert all(torch.equal(old, new) for old, new in zip(start, weights(model)))


def test_seeded_token_masks_depend_on_the_sample_only():
    class Config:
        tokens_per_step, mask_ratio = 16, 0.5

    ids = torch.tensor([3, 7, 11])
    masks = seeded_token_masks(Config, ids, 3, seed=5)
    assert masks.shape == (3, 3, 16) and masks.dtype == torch.bool
    assert torch.equal(seeded_token_masks(Config, ids[1:], 3, seed=5), masks[1:])  # another batch, same clips
    assert not torch.equal(seeded_token_masks(Config, ids, 3, seed=6), masks)
    assert 0.2 < masks.float().mean() < 0.8


def test_split_seed_is_its_own_option(tmp_path):
    _, data_args, train_args = parse_args(["--seed", "7"])
    assert (data_args.split_seed, train_args.seed) == (0, 7)
    _, data_args, _ = parse_args(["--split_seed", "3"])
    assert data_args.split_seed == 3


@pytest.mark.parametrize("saved_spec", [["a/x", "a/y", "b/z"], None])
def test_a_changed_action_spec_reinitialises_the_action_embedding(make_tiny_config, tmp_path, saved_spec, caplog):
    from modeling_surgical_wm import SurgicalWorldModel
    from training_surgical_wm.arguments import ModelArguments
    from training_surgical_wm.world_model import load_world_model

    Accelerator(cpu=True)  # the library logs through accelerate's logger
    torch.manual_seed(0)
    source = SurgicalWorldModel(make_tiny_config(action_dim=3, action_spec=saved_spec))
    with torch.no_grad():
        source.predictor.action_proj.weight.fill_(1.0)  # far from any fresh initialisation
    source.save_pretrained(tmp_path)
    new_spec = ["phase/x", "phase/y", "next_action/z"]  # the same size, other meanings
    with caplog.at_level("WARNING"):
        model = load_world_model(ModelArguments(pretrained_checkpoint=str(tmp_path)), new_spec)
    reinitialised = not torch.equal(model.predictor.action_proj.weight, source.predictor.action_proj.weight)
    # A spec that says what the actions mean and differs: re-initialised, and the log says so. No spec saved (a
    # world model built from V-JEPA 2 alone): nothing to compare, the embedding is kept.
    assert reinitialised == (saved_spec is not None)
    assert ("action embedding is re-initialised" in caplog.text) == (saved_spec is not None)
    assert model.config.action_spec == new_spec
    # Planning samples each one-hot group from a categorical distribution: the groups come with the spec.
    assert model.config.discrete_action_groups == ["phase", "next_action"]
    assert model.config.action_groups() == [("phase", [0, 1]), ("next_action", [2])]
    for name, tensor in source.state_dict().items():
        if not name.startswith("predictor.action_proj."):
            assert torch.equal(model.state_dict()[name], tensor), name


def test_a_batch_of_one_clip_is_warned_to_have_no_contrastive_loss(make_tiny_config):
    from modeling_surgical_wm import SurgicalWorldModel
    from training_surgical_wm.world_model import contrastive_off_reason

    torch.manual_seed(0)
    model = SurgicalWorldModel(make_tiny_config(contrastive_weight=0.1)).eval()
    latents = torch.randn(2, 3, model.config.tokens_per_step, model.config.latent_dim)
    with torch.no_grad():
        assert model(latents=latents[:1]).contrastive_loss == 0  # what the warning says
        assert model(latents=latents).contrastive_loss > 0
    reason = contrastive_off_reason(model.config, batch_size=1)
    assert "--batch_size 1" in reason and "contrastive loss is off" in reason
    assert contrastive_off_reason(model.config, batch_size=2) is None
    assert contrastive_off_reason(make_tiny_config(contrastive_weight=0.0), batch_size=1) is None


def test_clip_step_negatives_give_a_batch_of_one_clip_a_contrastive_loss(make_tiny_config):
    """With `contrastive_negatives="clip_steps"` each pooled prediction picks its own future among every future of
    the batch: the other steps of its own clip too, so a batch of one clip trains the term, and no warning says
    otherwise."""
    import torch.nn.functional as F

    from losses_surgical_wm import contrastive_loss
    from modeling_surgical_wm import SurgicalWorldModel
    from training_surgical_wm.world_model import contrastive_off_reason

    torch.manual_seed(0)
    predicted, target = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    pooled_predicted, pooled_target = F.normalize(predicted.mean(2), dim=-1), F.normalize(target.mean(2), dim=-1)
    per_prediction = []  # -log softmax of its own future among the batch's 6, one prediction at a time
    for clip in range(2):
        for step in range(3):
            similarities = torch.stack([pooled_predicted[clip, step] @ pooled_target[other_clip, other_step] / 0.1
                                        for other_clip in range(2) for other_step in range(3)])
            per_prediction.append(torch.logsumexp(similarities, 0) - similarities[clip * 3 + step])
    torch.testing.assert_close(contrastive_loss(predicted, target, 0.1, "clip_steps"),
                               torch.stack(per_prediction).mean())
    # One clip: the batch term has nothing to compare, the clip-step term tells a clip's own steps apart.
    assert contrastive_loss(predicted[:1], target[:1], 0.1, "batch") == 0
    own_futures = contrastive_loss(target[:1], target[:1], 0.1, "clip_steps")
    assert 0 < own_futures < contrastive_loss(target[:1].roll(1, dims=1), target[:1], 0.1, "clip_steps")
    assert contrastive_loss(predicted[:1, :1], target[:1, :1], 0.1, "clip_steps") == 0  # a single future

    config = make_tiny_config(contrastive_weight=0.1, contrastive_negatives="clip_steps")
    model = SurgicalWorldModel(config)
    output = model(latents=torch.randn(1, 3, config.tokens_per_step, config.latent_dim))
    assert output.contrastive_loss > 0
    output.contrastive_loss.backward()
    assert model.predictor.output_proj.weight.grad.abs().sum() > 0  # the term trains the predictor
    assert contrastive_off_reason(config, batch_size=1) is None
    with pytest.raises(ValueError, match="contrastive_negatives"):
        make_tiny_config(contrastive_negatives="queue")

#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Trains a frozen attentive probe on a world model's latents: SurgVU task or tools, MM-OR phase, next action, breach.

    accelerate launch scripts/train_probe.py --world_model outputs/surgical_wm/best --data_root /data/surgvu \
        --target task --output_dir outputs/probe_task
    accelerate launch scripts/train_probe.py --world_model outputs/surgical_wm/best --data_root /data/surgvu \
        --target tools --output_dir outputs/probe_tools

The head is `SurgicalWorldModelForVideoClassification`: V-JEPA 2's attentive probe (self-attention blocks, a
cross-attention block with a learned query, a linear layer) over the world model's latents, the world model frozen
and out of the optimizer. Targets, per clip, the label of its last step: on SurgVU `task` (8 classes) and `tools` (the 12
tools installed, multi-label); on MM-OR (`--dataset mmor`, with `--clip_stride 1` a clip ends at every timepoint)
`phase` (9 robot phases), `next_action` (12; null timepoints are skipped) and `breach` (sterility breach, 2 classes;
use `--class_weights balanced`, breaches are rare). Clips without the label are left out.

The Accelerate skeleton, the data options, the latent cache (the world model's own cache is reused when `--cache_dir`
points at it), checkpoints, resuming, the non-finite guard (`--max_bad_steps`), trackers (`--report_to`), the
debugging hooks (`--sample_log`, `--nan_at_steps`), the exports and the Hub push (`--push_to_hub`: `best/` with its
card) are train_hf.py's, from training_surgical_wm. `output_dir/best` (lowest validation loss) is what
`scripts/evaluate_surgical_model.py` loads; it reloads alone with
`AutoModelForVideoClassification.from_pretrained(dir, trust_remote_code=True)`. The case split is the world model's
(`data_split` in its config) unless `--split_seed`, `--validation_fraction`, `--test_fraction` or `--test_cases` say
otherwise, and a split other than the one the world model was trained on is refused: cases it was fitted or chosen on
would land in the probe's validation or test split. `best/` is chosen on validation; the probe's config records its
split in turn.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from accelerate.logging import get_logger

from dataset_surgvu import EpochShuffleSampler, collate_clips
from dataset_surgvu.catalog import PROBE_TARGETS, ProbeTarget, get_dataset, get_probe_target
from dataset_surgvu.latent_cache import latent_cache_off_reason
from modeling_surgical_wm import SurgicalWorldModelForVideoClassification
from training_surgical_wm.accelerator import available_cores, cosine_schedule, init_trackers, make_accelerator
from training_surgical_wm.arguments import (
    DataArguments,
    TrainArguments,
    check_common_arguments,
    parse_dataclasses,
    public_arguments,
)
from training_surgical_wm.checkpoints import resume_progress
from training_surgical_wm.data import (
    SkippedClips,
    clip_datasets,
    clip_inputs,
    data_fps,
    dataset_entry,
    gather_clip_values,
    load_dataset_splits,
    requested_split,
    resolve_split_options,
    split_definition,
    split_groups,
    split_mismatch,
)
from training_surgical_wm.export import create_hub_repo, export_model, push_export, recorded_crop, video_processor
from training_surgical_wm.guard import BadStepLimit, DebugHooks, NonFiniteGuard
from training_surgical_wm.loading import check_checkpoint_folder
from training_surgical_wm.preemption import Preemption, ignore_stop_signals
from training_surgical_wm.probes import read_modules, split_label_counts, world_model_fingerprints


logger = get_logger(__name__, log_level="INFO")

PROBE_DEFAULTS = {"output_dir": "outputs/probe", "num_epochs": 20, "learning_rate": 1e-3, "warmup_epochs": 1,
                  "weight_decay": 0.01, "checkpointing_steps": 200,
                  # unset: the world model's recorded split (resolve_split_options)
                  "split_seed": None, "validation_fraction": None, "test_fraction": None}


@dataclass
class ProbeArguments:
    world_model: str = field(
        default="outputs/surgical_wm/best",
        metadata={"help": "The world model to probe: a train_hf.py export (best/ or final/) or a Hub id."},
    )
    target: str = field(
        default="task",
        metadata={"help": "task (8 classes, the clip's last step) or tools (12 classes present at the clip's last "
                          "step, multi-label)."},
    )
    probe_num_layers: int = field(default=3, metadata={"help": "Self-attention blocks before the cross-attention."})
    probe_use_predictor: bool = field(
        default=False, metadata={"help": "Also read the predictor's hidden states (run with zero actions)."}
    )
    class_weights: str = field(
        default="none",
        metadata={"help": "none, or balanced: inverse class frequency on the training clips (CE weight, or BCE "
                          "pos_weight for tools)."},
    )


def balanced_weights(counts: torch.Tensor, num_clips: int, target: ProbeTarget) -> list[float]:
    """`balanced` class weights: N / (K * n_c) for single-label classes; n_negative / n_positive per class of a
    multi-label target such as the tools (pos_weight). A class absent from the training clips gets 1."""
    if target.problem_type != "multi_label_classification":
        present = counts > 0
        weights = torch.where(present, num_clips / (len(counts) * counts.clamp(min=1)), torch.ones_like(counts))
    else:
        weights = torch.where(counts > 0, (num_clips - counts) / counts.clamp(min=1), torch.ones_like(counts))
    return [round(float(weight), 6) for weight in weights]


def load_probe_model(probe_args: ProbeArguments, class_weights: list[float] | None):
    """The probe on the frozen world model, with the fingerprints of the world-model weights it reads recorded in its
    config: the evaluation refuses it with a world model whose weights differ."""
    target = get_probe_target(probe_args.target)
    try:
        model = SurgicalWorldModelForVideoClassification.from_world_model(
            probe_args.world_model, id2label=target.id2label, problem_type=target.problem_type,
            probe_target=probe_args.target,
            probe_num_layers=probe_args.probe_num_layers, probe_use_predictor=probe_args.probe_use_predictor,
            probe_class_weights=class_weights,
        )
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: --world_model {probe_args.world_model}: {error}") from None
    model.config.probe_world_model_fingerprints = world_model_fingerprints(model.world_model,
                                                                           read_modules(model.config))
    return model


def refuse_other_split(probe_args: ProbeArguments, mismatch: str | None) -> None:
    """Stops with one line when the data is split otherwise than the world model's training data was (`mismatch`):
    cases it was fitted or chosen on would land in the probe's held-out splits, or the other way round."""
    if mismatch:
        raise SystemExit(f"error: --world_model {probe_args.world_model} was {mismatch}; leave --split_seed, "
                         "--validation_fraction, --test_fraction and --test_cases unset to use its split")


def probe_card(config, probe_args: ProbeArguments, train_args: TrainArguments, state: dict,
               repo_id: str | None = None) -> str:
    labels = [config.id2label[index] for index in range(config.num_labels)]
    metrics = state.get("best_metrics") or {}
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items())
                     if isinstance(value, (int, float)))
    kind = "single-label" if config.problem_type == "single_label_classification" else "multi-label"
    dataset_name = get_dataset(get_probe_target(probe_args.target).dataset).display_name
    return f"""---
library_name: transformers
pipeline_tag: video-classification
datasets:
- {dataset_name}
tags:
- v-jepa-2
- surgical-video
- attentive-probe
---

# {dataset_name} {probe_args.target} probe on a surgical world model

A frozen attentive probe (V-JEPA 2's design: {config.probe_num_layers} self-attention blocks, a cross-attention block
with a learned query, a linear layer) over the latents of the world model `{probe_args.world_model}`
{"and its predictor's hidden states (computed with zero actions) " if config.probe_use_predictor else ""}trained with
`scripts/train_probe.py`. {kind.capitalize()}, {config.num_labels} classes: {", ".join(labels)}.

```python
from transformers import pipeline
classify = pipeline("video-classification", model="{repo_id or '<this directory or repo>'}", trust_remote_code=True)
classify("case.mp4")  # the labels of the video's first clip: {config.num_frames} steps sampled as in training
```

The pipeline decodes the file with the video processor saved here (PyAV; the frames sampled and cropped as in
training). On clips of your own: `AutoModelForVideoClassification.from_pretrained(...)(pixel_values_videos=clips)`,
clips `(B, T, 3, {config.encoder_config.crop_size}, {config.encoder_config.crop_size})`.

Epochs: {state.get("epoch")}; optimizer steps: {state.get("global_step")}; learning rate {train_args.learning_rate};
class weights: {probe_args.class_weights}.

| metric | value |
| --- | --- |
{rows or "| validation_loss | n/a |"}

Check the licence of the data it was trained on (SurgVU's is reported as CC BY-NC-SA 4.0; MM-OR is granted by a
form) before any use beyond non-commercial research.
"""


@torch.no_grad()
def validate(accelerator, model, dataloader, target: ProbeTarget, skipped: SkippedClips) -> dict:
    """Mean unweighted loss (cross-entropy, or binary cross-entropy averaged over the classes) and accuracy (per
    class for tools) over the validation clips, gathered from every process. Clips that fail to decode are left out
    and counted in `skipped`, and each clip is counted once (`gather_clip_values`)."""
    model.eval()
    loss_sum, hits, count, seen = 0.0, 0.0, 0, set()
    for batch in dataloader:
        checked = skipped.check(batch)
        batch = checked.batch
        values = {"sample_id": batch["sample_id"], "logits": model(**clip_inputs(batch)).logits.float(),
                  "labels": target.clip_labels(batch)}
        gathered = gather_clip_values(accelerator, checked, values, seen)
        if gathered is None:  # no process had a decoded clip
            continue
        logits, labels = gathered["logits"], gathered["labels"]
        if target.problem_type != "multi_label_classification":
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            hits += (logits.argmax(-1) == labels).sum().item()
        else:
            loss_sum += F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1).sum().item()
            hits += ((logits > 0).float() == labels).float().mean(-1).sum().item()
        count += len(labels)
    model.train()
    return {"loss": loss_sum / max(count, 1), "accuracy": hits / max(count, 1), "num_clips": count}


def main(argv=None) -> None:
    probe_args, data_args, train_args = parse_dataclasses((ProbeArguments, DataArguments, TrainArguments), argv,
                                                          __doc__.splitlines()[0], PROBE_DEFAULTS)
    if probe_args.target not in PROBE_TARGETS:
        raise SystemExit(f"error: --target must be one of {', '.join(PROBE_TARGETS)}, got {probe_args.target}")
    if probe_args.class_weights not in ("none", "balanced"):
        raise SystemExit(f"error: --class_weights must be none or balanced, got {probe_args.class_weights}")
    check_common_arguments(data_args, train_args)
    target = get_probe_target(probe_args.target)
    if target.dataset != data_args.dataset:
        raise SystemExit(f"error: --target {probe_args.target} is a {target.dataset} label; the data is "
                         f"--dataset {data_args.dataset}")
    saved = {}
    if Path(probe_args.world_model).exists():  # before the data is built: transformers would fill gaps at random
        saved = check_checkpoint_folder(probe_args.world_model, ("surgical_wm",))
    resolve_split_options(data_args, saved.get("data_split"))
    entry = dataset_entry(data_args)
    if saved.get("data_split"):  # the options now; the cases once the data is built
        refuse_other_split(probe_args, split_mismatch(saved["data_split"], requested_split(entry.name, data_args)))
    output_dir = Path(train_args.output_dir)
    checkpoints_dir = output_dir / "checkpoints"

    # ---- accelerator, logging, seed; the Hub repository
    accelerator = make_accelerator(train_args, output_dir)
    repo_id = create_hub_repo(accelerator, train_args, output_dir)

    # ---- data: labelled clips only
    with accelerator.main_process_first():
        dataset = load_dataset_splits(data_args)
    metadata = entry.build_metadata(dataset)
    indices = {name: target.labelled_indices(split) for name, split in dataset.items()}
    if not indices["train"]:
        raise SystemExit(f"error: no training clip with a {probe_args.target} label in {data_args.data_root} (SurgVU "
                         "cases need labels/case_NNN/tasks.csv and tools.csv; check with scripts/check_setup.py)")
    counts = split_label_counts(dataset["train"], indices["train"], target)
    class_weights = (balanced_weights(counts, len(indices["train"]), target)
                     if probe_args.class_weights == "balanced" else None)

    # ---- model: the frozen world model and a new head, on the split the world model was trained on
    model = load_probe_model(probe_args, class_weights)
    world_model = model.world_model
    split = split_definition(entry.name, dataset, metadata, "validation" if indices["validation"] else "train")
    if model.config.data_split:
        refuse_other_split(probe_args, split_mismatch(model.config.data_split, split))
    model.config.data_split = split
    # The pipeline's clip: as many frames as the training clips, at their fps, cropped as they were.
    model.config.num_frames = data_args.frames_per_clip
    processor = video_processor(model.config, recorded_crop(metadata), num_frames=data_args.frames_per_clip,
                                fps=data_fps(metadata))
    transform = entry.transform(crop_size=world_model.config.encoder_config.crop_size)
    num_workers = min(data_args.num_workers, available_cores())
    clips = clip_datasets(accelerator, world_model, dataset, transform, data_args, output_dir,
                          latent_cache_off_reason(no_cache=data_args.no_cache, encoder_frozen=True,
                                                  transform=transform),
                          train_args.batch_size, num_workers)
    train_set, val_set = Subset(clips["train"], indices["train"]), Subset(clips["validation"], indices["validation"])
    train_sampler = EpochShuffleSampler(len(train_set), train_args.seed)
    loader_kwargs = {"batch_size": train_args.batch_size, "num_workers": num_workers,
                     "persistent_workers": num_workers > 0, "pin_memory": torch.cuda.is_available(),
                     "collate_fn": collate_clips, "worker_init_fn": ignore_stop_signals}
    train_dataloader = DataLoader(train_set, sampler=train_sampler, drop_last=len(train_set) >= train_args.batch_size,
                                  generator=torch.Generator().manual_seed(train_args.seed), **loader_kwargs)
    val_dataloader = DataLoader(val_set, shuffle=False, generator=torch.Generator().manual_seed(train_args.seed),
                                **loader_kwargs)

    # ---- optimizer over the head; prepare, scheduler, trackers
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train_args.learning_rate, weight_decay=train_args.weight_decay)
    model, optimizer, train_dataloader, val_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, val_dataloader
    )
    lr_scheduler, _, total_steps = cosine_schedule(accelerator, optimizer, train_dataloader, train_args)
    init_trackers(accelerator, "surgical_wm_probe", train_args, probe_args, data_args, train_args)
    label_names = target.class_names
    logger.info(f"probe: {probe_args.target} ({len(label_names)} classes), world model {probe_args.world_model} "
                f"frozen; trainable parameters {sum(p.numel() for p in trainable) / 1e6:.3f} M")
    groups = split_groups(dataset, metadata)
    logger.info(f"  clips: {len(train_set)} train / {len(val_set)} validation (labelled; {groups}); "
                f"training labels per class: " + ", ".join(f"{name} {int(n)}" for name, n in zip(label_names, counts)))
    logger.info(f"  epochs: {train_args.num_epochs}, optimizer steps: {total_steps}; class weights: "
                f"{class_weights or 'none'}")

    # ---- resume
    progress = resume_progress(accelerator, train_args, checkpoints_dir)
    global_step, start_epoch, resume_batches = progress["global_step"], progress["epoch"], progress["batches_in_epoch"]
    history, best_val, best_metrics = progress["history"], progress["best_val_loss"], progress["best_metrics"]

    def trainer_state(epoch: int, batches_in_epoch: int) -> dict:
        return {"global_step": global_step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                "skipped_steps": bad_steps.skipped_steps, "best_val_loss": best_val, "best_metrics": best_metrics,
                "history": history, "probe_target": probe_args.target,
                "training_arguments": public_arguments(probe_args, data_args, train_args)}

    guard = NonFiniteGuard(accelerator, train_args.max_grad_norm)
    bad_steps = BadStepLimit(accelerator, train_args.max_bad_steps, checkpoints_dir, progress["skipped_steps"])
    hooks = DebugHooks(train_args, accelerator.process_index)
    skipped = {"train": SkippedClips(accelerator, "train", train_set, train_args.max_bad_clips),
               "validation": SkippedClips(accelerator, "validation", val_set, train_args.max_bad_clips)}
    preemption = Preemption(accelerator)  # SIGTERM / SIGUSR1: a checkpoint at the step reached, then exit 0
    probe = accelerator.unwrap_model(model)

    # ---- loop
    done = global_step >= total_steps
    model.train()
    for epoch in range(start_epoch, train_args.num_epochs):
        if done:
            break
        train_dataloader.set_epoch(epoch)
        batches_in_epoch = resume_batches if epoch == start_epoch else 0
        active = (accelerator.skip_first_batches(train_dataloader, batches_in_epoch) if batches_in_epoch
                  else train_dataloader)
        loss_sum, batches = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
        for split_skipped in skipped.values():
            split_skipped.new_epoch()
        window_lost_a_batch = False
        for batch in active:
            batches_in_epoch += 1
            checked = skipped["train"].check(batch)
            batch, window_lost_a_batch = checked.batch, window_lost_a_batch or checked.skip_step
            hooks.on_batch(global_step, epoch, batch)
            with accelerator.accumulate(model):
                output = model(**clip_inputs(batch), labels=target.clip_labels(batch))
                loss = hooks.on_loss(global_step + 1, output.loss)
                if checked.stand_in:  # the step is skipped; under DeepSpeed, whose engine steps anyway, it adds nothing
                    loss = loss * 0.0
                loss_is_bad = guard.backward(loss, skip=checked.skip_step)
                updated = guard.step(model, optimizer) if accelerator.sync_gradients else None
            if not loss_is_bad:
                loss_sum += loss.detach().float()
                batches += 1
            if updated is None:
                continue
            if window_lost_a_batch:
                logger.warning(f"step {global_step + 1}: skipped, a process had no decodable clip in its batch")
            else:
                bad_steps.update(updated, global_step + 1)
            window_lost_a_batch = False
            global_step += 1
            lr_scheduler.step()
            accelerator.log({"train/loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            if preemption.save_after_step(checkpoints_dir, lambda: trainer_state(epoch, batches_in_epoch), global_step,
                                          total_steps, train_args):
                accelerator.end_training()
                return
            if global_step >= total_steps:
                done = True
                break

        # ---- end of epoch: validation, the epoch's log line, best export
        totals = accelerator.reduce(torch.stack([loss_sum, batches]), reduction="sum")
        train_loss = (totals[0] / totals[1].clamp(min=1)).item()
        val = validate(accelerator, model, val_dataloader, target, skipped["validation"]) if len(val_set) else {}
        history.append({"epoch": epoch + 1, "step": global_step, "train_loss": train_loss,
                        **{f"val_{name}": value for name, value in val.items()}})
        accelerator.log({f"epoch/{k}": v for k, v in history[-1].items()}, step=global_step)
        logger.info(f"Epoch {epoch + 1}/{train_args.num_epochs} | train loss {train_loss:.4f}"
                    + (f" | val loss {val['loss']:.4f}, accuracy {val['accuracy']:.3f} ({val['num_clips']} clips)"
                       if val else " | no validation clips")
                    + (f" | skipped undecodable clips: {skipped['train'].in_epoch} train, "
                       f"{skipped['validation'].in_epoch} validation" if any(s.in_epoch for s in skipped.values())
                       else ""))
        score = val.get("loss", train_loss)
        if score < best_val:
            best_val = score
            best_metrics = {f"validation_{k}": v for k, v in val.items()} or {"train_loss": train_loss}
            state = trainer_state(epoch + 1, 0)
            export_model(accelerator, model, output_dir / "best", state,
                         probe_card(probe.config, probe_args, train_args, state, repo_id), processor=processor)

    # ---- final export, model card, upload
    accelerator.wait_for_everyone()
    hooks.on_end(probe)
    state = trainer_state(history[-1]["epoch"] if history else start_epoch, 0)
    export_model(accelerator, model, output_dir / "final", state,
                 probe_card(probe.config, probe_args, train_args, state, repo_id), processor=processor)
    push_export(accelerator, repo_id, output_dir / "best", f"Upload {probe_args.target} probe")
    logger.info(f"done: {global_step} steps, {bad_steps.skipped_steps} skipped; best validation loss {best_val:.4f}; "
                f"exports in {output_dir / 'best'} and {output_dir / 'final'}")
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(main())

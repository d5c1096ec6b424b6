#!/usr/bin/env python
# Copyright 2026 The surgical-wm authors. Licensed under the Apache License, Version 2.0.
"""Fine-tunes a surgical world model on SurgVU with Accelerate, from V-JEPA 2 to a Hub-ready model.

    accelerate launch train_hf.py --data_root /data/surgvu --pretrained_checkpoint checkpoints/vjepa2_vitl_surgical
    accelerate launch --config_file configs/accelerate/fsdp_vitg.yaml train_hf.py config.yaml --num_epochs 3

Arguments come from the command line, from a YAML or JSON file given first, or both (the command line wins).
Outputs: `output_dir/best` (lowest validation loss; the test split chooses nothing) and `output_dir/final`, each a
transformers directory that `AutoModel.from_pretrained(dir, trust_remote_code=True)` loads, with one encoder (a
fine-tuned one's EMA target by default, `--export_encoder`), its config recording the data split (`data_split`);
`output_dir/checkpoints/checkpoint-<step>` (both encoders) to resume.
The helpers (arguments, accelerator, data and latent cache, checkpoints, guard, export) are training_surgical_wm's.
"""

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from accelerate.logging import get_logger

from dataset_surgvu import EpochShuffleSampler, collate_clips
from dataset_surgvu.latent_cache import latent_cache_off_reason
from modeling_surgical_wm import frames_to_steps
from planning_surgical_wm import empirical_action_prior
from training_surgical_wm.accelerator import available_cores, cosine_schedule, init_trackers, make_accelerator
from training_surgical_wm.arguments import parse_training_arguments, public_arguments
from training_surgical_wm.checkpoints import resume_progress
from training_surgical_wm.data import (
    SkippedClips,
    check_pretrained_split,
    clip_datasets,
    clip_inputs,
    data_fps,
    dataset_entry,
    load_dataset_splits,
    split_definition,
    split_groups,
)
from training_surgical_wm.export import (
    create_hub_repo,
    export_model,
    model_card,
    push_export,
    recorded_crop,
    video_processor,
)
from training_surgical_wm.guard import BadStepLimit, DebugHooks, NonFiniteGuard
from training_surgical_wm.preemption import Preemption, ignore_stop_signals
from training_surgical_wm.world_model import (
    check_pretrained_checkpoint,
    contrastive_off_reason,
    load_world_model,
    release_encoder,
    run_validation,
)


logger = get_logger(__name__, log_level="INFO")

TRAIN_METRICS = ("loss", "temporal_loss", "contrastive_loss", "mask_loss")  # averaged over an epoch's batches


def main(argv=None) -> None:
    model_args, data_args, train_args = parse_training_arguments(argv, __doc__.splitlines()[0])
    saved = check_pretrained_checkpoint(model_args.pretrained_checkpoint)  # now, not after the data is built
    output_dir = Path(train_args.output_dir)
    checkpoints_dir = output_dir / "checkpoints"

    # ---- accelerator, logging, seed; the Hub repository
    accelerator = make_accelerator(train_args, output_dir)
    repo_id = create_hub_repo(accelerator, train_args, output_dir)

    # ---- data (built once on the main process, read from the Arrow cache by the others)
    entry = dataset_entry(data_args)
    with accelerator.main_process_first():
        dataset = load_dataset_splits(data_args)
    metadata = entry.build_metadata(dataset)
    if metadata.get("corrupt_videos"):
        logger.warning(f"skipped {len(metadata['corrupt_videos'])} unreadable video(s): "
                       + "; ".join(metadata["corrupt_videos"].values()))
    if len(dataset["train"]) == 0:
        raise SystemExit(f"error: no training clip in {data_args.data_root} (check the layout with "
                         "scripts/check_setup.py --data_root ...).")

    data_split = split_definition(entry.name, dataset, metadata, "validation" if len(dataset["validation"]) else "train")
    check_pretrained_split(model_args.pretrained_checkpoint, saved, data_split, model_args.allow_selection_split)

    # ---- model (its config records the data's action spec and frame rate, which the export carries)
    model = load_world_model(model_args, entry.action_spec(dataset), fps=data_fps(metadata), saved=saved)
    # The split travels with every export, so later scripts find it and refuse data split another way.
    model.config.data_split = data_split
    processor = video_processor(model.config, recorded_crop(metadata))  # the exports' sampling, crop, preprocessing
    if model_args.activation_checkpointing:
        model.activation_checkpointing_enable()
    # The training split's action statistics, for planning's action prior: from the label arrays, no video decoded.
    train_actions = dataset["train"].with_format("torch", columns=["actions"])[:]["actions"]  # (clips, frames, A)
    model.config.action_prior = empirical_action_prior(frames_to_steps(train_actions, model.config.frames_per_step),
                                                       model.config.action_groups(), model.config.action_spec)
    transform = entry.transform(crop_size=model.config.encoder_config.crop_size)
    num_workers = min(data_args.num_workers, available_cores())
    train_sampler = EpochShuffleSampler(len(dataset["train"]), train_args.seed)
    loader_kwargs = {"batch_size": train_args.batch_size, "num_workers": num_workers,
                     "persistent_workers": num_workers > 0, "pin_memory": torch.cuda.is_available(),
                     "collate_fn": collate_clips, "worker_init_fn": ignore_stop_signals}
    cache_off = latent_cache_off_reason(no_cache=data_args.no_cache, encoder_frozen=model_args.encoder_frozen,
                                        transform=transform)
    clips = clip_datasets(accelerator, model, dataset, transform, data_args, output_dir, cache_off,
                          train_args.batch_size, num_workers)
    # The loaders draw worker seeds from their own generators, never from the global RNG that resuming restores.
    train_dataloader = DataLoader(clips["train"], sampler=train_sampler, drop_last=True,
                                  generator=torch.Generator().manual_seed(train_args.seed), **loader_kwargs)
    val_dataloader = DataLoader(clips["validation"], shuffle=False,
                                generator=torch.Generator().manual_seed(train_args.seed), **loader_kwargs)

    # ---- optimizer over trainable parameters only
    predictor_parameters = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    parameter_groups = [{"params": predictor_parameters, "lr": train_args.learning_rate}]
    if not model_args.encoder_frozen:
        encoder_lr = train_args.encoder_learning_rate or train_args.learning_rate / 10
        parameter_groups.append({"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": encoder_lr})
    optimizer = torch.optim.AdamW(parameter_groups, weight_decay=train_args.weight_decay)

    # ---- prepare, scheduler, trackers
    model, optimizer, train_dataloader, val_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, val_dataloader
    )
    lr_scheduler, steps_per_epoch, total_steps = cosine_schedule(accelerator, optimizer, train_dataloader, train_args)
    # A complete latent cache: the encoder never runs again, so its weights leave memory (the exports read them back).
    encoder_file = (release_encoder(accelerator, model, output_dir / "frozen_encoder.safetensors")
                    if cache_off is None else None)
    init_trackers(accelerator, "surgical_wm", train_args, model_args, data_args, train_args)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("***** Running training *****")
    logger.info(f"  clips: {len(dataset['train'])} train / {len(dataset['validation'])} validation / "
                f"{len(dataset['test']) if 'test' in dataset else 0} test, never read for a choice "
                f"({split_groups(dataset, metadata)})")
    logger.info(f"  epochs: {train_args.num_epochs}, optimizer steps: {total_steps} ({steps_per_epoch} per epoch)")
    logger.info(f"  batch per device: {train_args.batch_size}, accumulation: {train_args.gradient_accumulation_steps}, "
                f"global batch: {train_args.batch_size * accelerator.num_processes * train_args.gradient_accumulation_steps}")
    logger.info(f"  trainable parameters: {trainable / 1e6:.2f} M (encoder {'frozen' if model_args.encoder_frozen else 'trained'})")
    if (reason := contrastive_off_reason(accelerator.unwrap_model(model).config, train_args.batch_size)) is not None:
        logger.warning(reason)

    # ---- resume
    progress = resume_progress(accelerator, train_args, checkpoints_dir)
    global_step, start_epoch, resume_batches = progress["global_step"], progress["epoch"], progress["batches_in_epoch"]
    history, best_val, best_metrics = progress["history"], progress["best_val_loss"], progress["best_metrics"]

    guard = NonFiniteGuard(accelerator, train_args.max_grad_norm)
    bad_steps = BadStepLimit(accelerator, train_args.max_bad_steps, checkpoints_dir, progress["skipped_steps"])
    hooks = DebugHooks(train_args, accelerator.process_index)
    skipped = {name: SkippedClips(accelerator, name, clips[name], train_args.max_bad_clips) for name in clips}
    preemption = Preemption(accelerator)  # SIGTERM / SIGUSR1: a checkpoint at the step reached, then exit 0
    world_model = accelerator.unwrap_model(model)
    progress_bar = None
    if accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        progress_bar = tqdm(total=total_steps, initial=global_step, desc="steps", dynamic_ncols=True)

    def trainer_state(epoch: int, batches_in_epoch: int) -> dict:
        return {"global_step": global_step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                "skipped_steps": bad_steps.skipped_steps, "best_val_loss": best_val, "best_metrics": best_metrics,
                "history": history, "training_arguments": public_arguments(model_args, data_args, train_args)}

    # ---- loop
    done = global_step >= total_steps
    for epoch in range(start_epoch, train_args.num_epochs):
        if done:
            break
        model.train()
        train_dataloader.set_epoch(epoch)
        batches_in_epoch = resume_batches if epoch == start_epoch else 0
        active = accelerator.skip_first_batches(train_dataloader, batches_in_epoch) if batches_in_epoch else train_dataloader
        sums = {name: torch.zeros((), device=accelerator.device) for name in TRAIN_METRICS + ("clips",)}
        for split_skipped in skipped.values():
            split_skipped.new_epoch()
        window_lost_a_batch = False
        for batch in active:
            batches_in_epoch += 1
            checked = skipped["train"].check(batch)
            batch, window_lost_a_batch = checked.batch, window_lost_a_batch or checked.skip_step
            hooks.on_batch(global_step, epoch, batch)
            with accelerator.accumulate(model):
                output = model(**clip_inputs(batch), actions=batch["actions"])
                loss = hooks.on_loss(global_step + 1, output.loss)
                if checked.stand_in:  # the step is skipped; under DeepSpeed, whose engine steps anyway, it adds nothing
                    loss = loss * 0.0
                loss_is_bad = guard.backward(loss, skip=checked.skip_step)
                updated = guard.step(model, optimizer) if accelerator.sync_gradients else None
            if not loss_is_bad:
                for name in TRAIN_METRICS:
                    value = loss if name == "loss" else getattr(output, name)
                    sums[name] += value.detach().float() if value is not None else 0.0
                sums["clips"] += 1
            if updated is None:
                continue

            # ---- one optimizer step has ended (taken or skipped)
            if window_lost_a_batch:
                logger.warning(f"step {global_step + 1}: skipped, a process had no decodable clip in its batch")
            else:
                bad_steps.update(updated, global_step + 1)
            window_lost_a_batch = False
            if updated:
                world_model.update_target_encoder()
            global_step += 1
            lr_scheduler.step()
            if progress_bar is not None:
                progress_bar.update(1)
                progress_bar.set_postfix(loss=f"{loss.item():.4f}")
            accelerator.log({"train/loss": loss.item(), "train/temporal_loss": output.temporal_loss.item(),
                             "train/contrastive_loss": output.contrastive_loss.item(),
                             "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            if preemption.save_after_step(checkpoints_dir, lambda: trainer_state(epoch, batches_in_epoch), global_step,
                                          total_steps, train_args):
                if progress_bar is not None:
                    progress_bar.close()
                accelerator.end_training()
                return
            if global_step >= total_steps:
                done = True
                break

        # ---- end of epoch: validation, the epoch's log line, best export
        totals = accelerator.reduce(sums, reduction="sum")
        train_metrics = {name: totals[name].item() / max(totals["clips"].item(), 1.0) for name in TRAIN_METRICS}
        val_metrics = (run_validation(accelerator, model, val_dataloader, train_args.seed, skipped["validation"])
                       if len(dataset["validation"]) else {})
        record = {"epoch": epoch + 1, "step": global_step, "lr": lr_scheduler.get_last_lr()[0],
                  **{f"train_{k}": v for k, v in train_metrics.items()},
                  **{f"val_{k}": v for k, v in val_metrics.items()}}
        history.append(record)
        accelerator.log({f"epoch/{k}": v for k, v in record.items()}, step=global_step)
        logger.info(
            f"Epoch {epoch + 1}/{train_args.num_epochs} | train loss {train_metrics['loss']:.4f} (temporal "
            f"{train_metrics['temporal_loss']:.4f}, contrastive {train_metrics['contrastive_loss']:.4f}, mask "
            f"{train_metrics['mask_loss']:.4f})"
            + (f" | val loss {val_metrics['loss']:.4f} (temporal {val_metrics['temporal_loss']:.4f}, contrastive "
               f"{val_metrics['contrastive_loss']:.4f}, mask {val_metrics['mask_loss']:.4f}) | rollout error "
               f"{val_metrics['rollout_error']:.4f} vs copy-context {val_metrics['copy_context_error']:.4f}"
               if val_metrics else " | no validation clips")
            + (f" | skipped undecodable clips: {skipped['train'].in_epoch} train, "
               f"{skipped['validation'].in_epoch} validation" if any(s.in_epoch for s in skipped.values()) else "")
        )
        score = val_metrics.get("loss", train_metrics["loss"])
        if score < best_val:
            best_val = score
            best_metrics = {f"validation_{k}": v for k, v in val_metrics.items()} or {"train_loss": score}
            best_state = trainer_state(epoch + 1, 0)
            export_model(accelerator, model, output_dir / "best", best_state,
                         model_card(world_model.config, train_args, best_state, repo_id, entry.name,
                                    entry.display_name, model_args.export_encoder), model_args.export_encoder,
                         encoder_file, processor)
        model.train()

    # ---- final export, model card, upload
    accelerator.wait_for_everyone()
    hooks.on_end(world_model)
    final_state = trainer_state(history[-1]["epoch"] if history else start_epoch, 0)
    export_model(accelerator, model, output_dir / "final", final_state,
                 model_card(world_model.config, train_args, final_state, repo_id, entry.name, entry.display_name,
                            model_args.export_encoder), model_args.export_encoder, encoder_file, processor)
    if progress_bar is not None:
        progress_bar.close()
    push_export(accelerator, repo_id, output_dir / "best", "Upload surgical world model")
    logger.info(f"done: {global_step} steps, {bad_steps.skipped_steps} skipped; best validation loss {best_val:.4f}; "
                f"exports in {output_dir / 'best'} and {output_dir / 'final'}")
    accelerator.end_training()


if __name__ == "__main__":
    main()

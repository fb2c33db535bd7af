"""The training loop, on Hugging Face accelerate: one CPU, one GPU, several GPUs, several machines.

accelerate does the device placement, the distributed wrapping (DDP), mixed precision and gradient accumulation, and
saves/restores the resumable state (model, optimizer, RNGs) with ``save_state``/``load_state``; this module adds the
Paint-by-Example parts: the data stream (:mod:`.data`), the loss (:func:`.model.eps_loss`), the warm-up schedule, a
progress bar, and the final single-file checkpoint (:func:`.model.export`).

Output folder::

    checkpoints/step-0001000/   resumable state (accelerate's files + train_state.json)
    metrics.jsonl               one line per optimizer step: step, loss, lr
    <final_name>                the fine-tuned model, original single-file layout (.safetensors)

Every step's randomness (samples, noise, timesteps, VAE posterior) is a function of the seed, the step and the
process, so a run resumed from a checkpoint continues the loss curve it would have drawn without the interruption.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import TrainConfig

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
CHECKPOINTS = "checkpoints"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    losses: list[tuple[int, float]] = field(default_factory=list)  # (optimizer step, mean loss), this run's steps
    final_path: Path | None = None
    start_step: int = 0


def resolve_mixed_precision(choice: str) -> str:
    """``auto`` -> bf16 on a GPU that has it, fp16 on other GPUs, no (fp32) on CPU."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-step on one process: noise, timesteps and VAE samples come from it."""
    import numpy as np

    s = int(np.random.SeedSequence([seed, step, micro, rank, 3]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(s)


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Resumable checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file())


def _resume_dir(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        found = checkpoint_dirs(cfg.output_dir)
        if not found:
            log.info("resume=latest: no checkpoint in %s yet; starting from step 0.", cfg.output_dir)
            return None
        return found[-1]
    p = Path(cfg.resume)
    if not (p / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume={cfg.resume!r} is not a checkpoint folder (no {STATE_FILE} in it).")
    return p


def train(cfg: TrainConfig) -> TrainResult:
    """Run the fine-tuning ``cfg`` describes; returns this run's losses and the final checkpoint's path."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_constant_schedule_with_warmup

    from ..edit.sampling import scaled_linear_alphas_cumprod
    from . import model as M
    from .annotations import load_records
    from .data import StreamSampler, TrainingSamples

    cfg.validate().check_paths()  # before anything is created: a wrong path leaves no output folder behind
    acc = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        project_dir=cfg.output_dir,
    )
    out = Path(cfg.output_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    else:  # one process reports
        logging.getLogger("pbe_core").setLevel(logging.WARNING)
    log.info("%s, mixed precision %s", acc.state.distributed_type, acc.mixed_precision)

    ckpt = M.initial_checkpoint(cfg.init_from, cfg.clip_weights, cfg.mapper_depth, cfg.seed)
    trainable, frozen = M.build_modules(ckpt, cfg.unet_heads)
    if cfg.gradient_checkpointing:
        trainable.unet.enable_gradient_checkpointing()
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
    if acc.device.type == "cpu":
        frozen_dtype = torch.float32
    frozen.to(acc.device, frozen_dtype)

    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    # stepped once per optimizer step by this loop (accelerate's wrapper would step it once per process)
    schedule = get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    trainable, optimizer = acc.prepare(trainable, optimizer)
    acc.register_for_checkpointing(schedule)

    start_step = 0
    resume = _resume_dir(cfg)
    if resume is not None:
        acc.load_state(str(resume))
        start_step = json.loads((resume / STATE_FILE).read_text())["step"]
        log.info("Resumed from %s at step %d.", resume, start_step)

    records = load_records(cfg.data_format, cfg.annotations, cfg.images, cfg.min_box_fraction, cfg.max_box_fraction)
    dataset = TrainingSamples(records, cfg.image_size, ckpt.info.clip_image_size, cfg.seed, cfg.drop_rate,
                              cfg.bezier_rate)
    accum = cfg.gradient_accumulation_steps
    sampler = StreamSampler(cfg.batch_size, start_step * accum, acc.process_index, acc.num_processes)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=True, persistent_workers=cfg.num_workers > 0)
    batches = iter(loader)
    alphas_cumprod = scaled_linear_alphas_cumprod()

    result = TrainResult(start_step=start_step)
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="fine-tuning", unit="step",
               disable=not (cfg.progress and acc.is_local_main_process))
    metrics = open(out / "metrics.jsonl", "a") if acc.is_main_process else None
    trainable.train()
    t0 = time.monotonic()
    try:
        for step in range(start_step, cfg.max_steps):
            total = torch.zeros((), device=acc.device)
            for micro in range(accum):
                batch = next(batches)
                gen = step_generator(cfg.seed, step, micro, acc.process_index)
                with acc.accumulate(trainable):
                    # the prepared module's forward already runs under the mixed-precision autocast
                    loss = M.eps_loss(trainable, frozen, batch, alphas_cumprod, gen, acc.device)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                total += loss.detach() / accum
            if not optimizer.step_was_skipped:
                schedule.step()
            mean = acc.gather(total[None]).mean().item()
            done = step + 1
            result.losses.append((done, mean))
            lr = schedule.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
            if metrics is not None:
                metrics.write(json.dumps({"step": done, "loss": mean, "lr": lr}) + "\n")
                metrics.flush()
            if cfg.log_every and done % cfg.log_every == 0:
                log.info("step %d/%d loss %.5f lr %.3g (%.2f s/step)", done, cfg.max_steps, mean, lr,
                         (time.monotonic() - t0) / (done - start_step))
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.max_steps:
                save_checkpoint(acc, cfg, done)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()

    acc.wait_for_everyone()
    if acc.is_main_process:
        final = out / cfg.final_name
        meta = {"paint_by_example_finetuned_from": str(cfg.init_from), "paint_by_example_steps": str(cfg.max_steps)}
        M.export(acc.unwrap_model(trainable), ckpt, final, DTYPES[cfg.save_dtype], meta)
        log.info("Wrote %s (%s).", final, cfg.save_dtype)
        result.final_path = final
    acc.wait_for_everyone()
    acc.end_training()
    if not acc.is_main_process:
        logging.getLogger("pbe_core").setLevel(logging.NOTSET)
    return result


def save_checkpoint(acc, cfg: TrainConfig, step: int) -> Path:
    """Save the resumable state of ``step`` and keep only the newest ``keep_checkpoints``."""
    path = Path(cfg.output_dir) / CHECKPOINTS / f"step-{step:07d}"
    acc.save_state(str(path))
    if acc.is_main_process:
        (path / STATE_FILE).write_text(json.dumps({"step": step, "config": cfg.as_dict()}, indent=1))
        if cfg.keep_checkpoints:
            for old in checkpoint_dirs(cfg.output_dir)[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return path

"""The training loop for every GLIDE stage, readable top to bottom.

One process by default; several under torchrun (DDP, ``gloo`` on CPU, ``nccl`` on GPUs)::

    # one GPU, or the CPU
    glide train --stage base --model tiny-base --data shapes --out runs/shapes
    # one node with 8 GPUs
    torchrun --standalone --nproc_per_node 8 -m glide train --stage base --data 'laion-{00000..00999}.tar' ...
    # 4 nodes x 8 GPUs: the same command on every node
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m glide train ...

``--batch-size`` is the global batch of one optimizer step; each rank runs micro-batches of
``batch_size / (world_size * grad_accum)``. Each sample's timestep, noise, caption dropout and
mask come from a generator seeded by ``(seed, step, position in the global batch)`` and the data
order is a function of ``(seed, step)``, so a run gives the same weights on 1 or N ranks (up to
float rounding) and a resumed run gives bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoints import read_checkpoint
from . import distributed
from .build import (
    create_model,
    describe,
    finish_new_config,
    load_checkpoint_model,
    load_init,
    new_model_config,
    optimizer_groups,
    set_trainable,
)
from .config import ConfigError, TrainConfig
from .distributed import Distributed
from .ema import EMA
from .loader import DataStream, batch_positions, open_dataset, probe
from .monitor import Meter, MetricsLog
from .runtime import StopRequest, check_launch, learning_rate, make_progress, precision_tools, seed_everything
from .safe_step import safe_step
from .stages import TEXT2IM_STAGES, make_stage, sample_seeds
from .state import (
    STATE_FORMAT,
    ResumeError,
    capture_rng,
    clean_stale_dirs,
    ema_file_name,
    find_step_to_resume,
    holds_run,
    list_step_dirs,
    load_trainer_state,
    prepare_run_dir,
    restore_rng,
    save_checkpoint,
)

logger = logging.getLogger("glide.training")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train`` after Ctrl-C / SIGTERM, once the checkpoint of the last step is saved."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"training stopped at step {step}; checkpoint: {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


def train(config: TrainConfig) -> Path:
    """Train as ``config`` says and return the run folder (``config.out``)."""
    cfg = config
    env = distributed.setup(cfg.device)
    log_file = metrics = data = None
    try:
        device = env.device
        micro_batch = check_launch(cfg, env)
        autocast, scaler = precision_tools(cfg.precision, device)
        say = logger.info if env.is_main else (lambda *args, **kwargs: None)

        # ---- the run folder, and the checkpoint to resume from ------------------------------
        run_dir = cfg.run_dir
        resume_from = find_resume(cfg)
        resume_state = load_trainer_state(resume_from) if resume_from else None
        if resume_state is not None:
            check_resumable(cfg, resume_state, resume_from)
        if env.is_main:
            prepare_run_dir(run_dir, resume=cfg.resume is not None, overwrite=cfg.overwrite)
            clean_stale_dirs(run_dir)
            log_file = attach_log_file(run_dir)
        env.barrier()

        # ---- the model and the data ---------------------------------------------------------
        if resume_from is not None:
            bare = load_checkpoint_model(resume_from, cfg.dropout)
            dataset = open_dataset(cfg, bare.config.image_size)
        elif cfg.init is not None:
            if cfg.tokenizer is not None:
                raise ConfigError("--tokenizer applies to new models; a model from --init keeps its own tokenizer")
            bare = load_init(cfg.init, cfg)
            dataset = open_dataset(cfg, bare.config.image_size)
        else:
            model_config = new_model_config(cfg)
            dataset = open_dataset(cfg, model_config.image_size)
            model_config = finish_new_config(cfg, model_config, dataset, env)
            bare = create_model(model_config, cfg.seed)
        bare.to(device).train()
        trainable = set_trainable(bare, cfg.train)
        if cfg.grad_checkpointing:
            if not hasattr(bare, "set_grad_checkpointing"):
                raise ConfigError(f"--grad-checkpointing is not supported by {type(bare).__name__}")
            bare.set_grad_checkpointing(True)
        stage = make_stage(cfg, bare)
        references = probe(dataset, cfg.num_samples)
        check_data(references, bare, stage, cfg)
        say(f"{describe(bare)}; stage {cfg.stage}; {env.world_size} process(es) on {device.type}; global batch "
            f"{cfg.batch_size} = {env.world_size} x {cfg.grad_accum} x {micro_batch}; precision {cfg.precision}")

        # ---- optimizer, EMA, and the state of a resumed run ---------------------------------
        optimizer = torch.optim.AdamW(optimizer_groups(bare, cfg.weight_decay), lr=cfg.lr,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                      fused=device.type in ("cpu", "cuda"))  # one kernel for all tensors
        ema = EMA(bare, cfg.ema)
        step, skipped = 0, 0
        seed_everything(cfg.seed + env.rank)  # dropout differs per rank; the model init did not
        if resume_state is not None:
            step, skipped = restore(resume_state, resume_from, optimizer, scaler, ema, env, cfg)
            say(f"resumed from {resume_from} at step {step}")
        model = bare
        if env.enabled:
            model = DistributedDataParallel(bare, device_ids=[device.index] if device.type == "cuda" else None,
                                            gradient_as_bucket_view=True)
        data = DataStream(dataset, cfg, micro_batch, env.rank, env.world_size, step, pin_memory=device.type == "cuda")

        # ---- watching ---------------------------------------------------------------------
        grid = None
        if env.is_main:
            cfg.to_yaml(run_dir / "config.yaml", extra={
                "resolved_model": readable_model_config(bare),
                "launch": {"world_size": env.world_size, "micro_batch": micro_batch, "device": str(device)},
            })
            # when resuming, rows logged after the checkpoint (by the interrupted run) are dropped
            metrics = MetricsLog(run_dir, resume_step=step if cfg.resume is not None else None,
                                 tensorboard=cfg.tensorboard)
            if cfg.stage in TEXT2IM_STAGES and cfg.sample_every:
                from .samples import SampleGrid

                grid = SampleGrid(cfg, stage, references)
        meter = Meter(device)
        # The latest caption diagnostics, in every metrics row once they are on (NaN before the first):
        # the probe's accuracies (--probe-every) and the judge's reading of the sample grid.
        diagnostics = dict.fromkeys(PROBE_COLUMNS, float("nan")) if cfg.probe_every else {}
        if grid is not None and grid.judged:
            diagnostics[GRID_COLUMN] = float("nan")
        progress = make_progress(cfg, step, enabled=env.is_main and cfg.progress)
        interval = {"steps": 0, "seconds": 0.0, "grad_norm": 0.0, "finite_steps": 0}
        checkpoint = None

        def save(step: int) -> Path | None:
            rng = env.gather(capture_rng())  # every rank's RNG, for dropout after resuming
            path = None
            if env.is_main:
                state = {
                    "format": STATE_FORMAT, "step": step, "stage": cfg.stage, "config": cfg.to_dict(),
                    "model_config": bare.config.to_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "lr": learning_rate(cfg, step),
                    "skipped_steps": skipped, "samples_seen": step * cfg.batch_size,
                    "micro_batches_per_rank": step * cfg.grad_accum, "world_size": env.world_size, "rng": rng,
                }
                path = save_checkpoint(run_dir, step, bare, ema, state, keep=cfg.keep)
                say(f"saved {path}")
            env.barrier()
            return path

        # ---- the loop -----------------------------------------------------------------------
        if step >= cfg.steps:
            say(f"nothing to do: the run is already at step {step} of --steps {cfg.steps}")
        with StopRequest() as stop, progress:
            while step < cfg.steps:
                started = time.perf_counter()
                lr = learning_rate(cfg, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                for k in range(cfg.grad_accum):
                    batch = next(data)
                    seeds = sample_seeds(cfg.seed, step, batch_positions(k, env.rank, env.world_size, micro_batch))
                    last = k == cfg.grad_accum - 1
                    with nullcontext() if last or not env.enabled else model.no_sync():
                        loss, sample_metrics = stage.loss(model, bare, batch, seeds, autocast)
                        scaler.scale(loss / cfg.grad_accum).backward()
                    loss_sum += loss.detach().float()
                    meter.add(sample_metrics)
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip or math.inf)
                local_bad = not bool(torch.isfinite(grad_norm) & torch.isfinite(loss_sum))
                nonfinite, stopping = env.any_flag(local_bad, stop.requested)
                # never let a NaN/inf reach the weights, the optimizer state or the EMA
                if nonfinite:
                    skipped_why = "non-finite loss or gradient"
                elif not safe_step(optimizer, scaler):  # the update overflowed and was rolled back
                    skipped_why = "non-finite update"
                else:
                    skipped_why = None
                    ema.update(bare, step=step)
                    interval["grad_norm"] += float(grad_norm)
                    interval["finite_steps"] += 1
                scaler.update()  # after a skipped step: lowers the fp16 loss scale
                if skipped_why is not None:
                    skipped += 1
                    logger.warning(f"step {step + 1}: {skipped_why}, step skipped ({skipped} so far)")
                optimizer.zero_grad(set_to_none=True)
                step += 1
                interval["steps"] += 1
                interval["seconds"] += time.perf_counter() - started
                progress.update(1)

                if grid is not None and step % cfg.sample_every == 0:
                    path, image, accuracy = grid.render(bare, ema, step, run_dir, autocast)
                    metrics.add_image("samples", image, step)
                    say(f"samples: {path}" + (f" (caption accuracy {accuracy:.2f})" if accuracy is not None else ""))
                    if accuracy is not None:
                        diagnostics[GRID_COLUMN] = accuracy
                if cfg.probe_every and step % cfg.probe_every == 0 and metrics is not None:
                    diagnostics.update(run_probe(cfg, bare, ema))
                    say("caption probe: " + ", ".join(f"{k} {diagnostics[k]:.2f}" for k in PROBE_COLUMNS))
                if step % cfg.log_every == 0 or step == cfg.steps or stopping:
                    row = {**log_row(cfg, step, lr, skipped, meter, interval, data, env), **diagnostics}
                    if metrics is not None:
                        metrics.write(row)
                        progress.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}",
                                             img_s=f"{row['images_per_s']:.1f}")
                        logger.info(f"step {step}/{cfg.steps}: " + ", ".join(
                            f"{k} {v:.4g}" for k, v in row.items() if k != "step" and isinstance(v, float | int)))
                    interval = {"steps": 0, "seconds": 0.0, "grad_norm": 0.0, "finite_steps": 0}
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or stopping:
                    checkpoint = save(step)
                if stopping:
                    raise TrainingInterrupted(step, checkpoint)

        if metrics is not None:
            stats = data.stats()
            if any(stats.values()):
                say("data: " + ", ".join(f"{k}={v}" for k, v in stats.items()) + " (rank 0)")
            say(f"done: {cfg.steps} steps, {skipped} skipped; checkpoints in {run_dir / 'checkpoints'}")
        return run_dir
    finally:
        if data is not None:  # first: data-loader workers must never outlive a failed run
            data.close()
        if metrics is not None:
            metrics.close()
        if log_file is not None:
            logging.getLogger("glide").removeHandler(log_file)
            log_file.close()
        env.close()


# --------------------------------------------------------------------------------------------
# Resuming


def find_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint folder ``--resume`` names (``auto``: the latest in ``--out``).

    ``--resume`` of a folder that is missing or holds no run is an error naming it (a typo must
    not start a new run); a run that has not saved its first step yet starts from the beginning.
    """
    if cfg.resume is None:
        return None
    if cfg.resume in ("auto", "latest", ""):
        run_dir = Path(cfg.run_dir)
        if not holds_run(run_dir):
            what = "does not exist" if not run_dir.exists() else "holds no training run"
            raise ResumeError(f"cannot resume: --out {run_dir} {what}. Check the folder name; a new run needs "
                              f"no --resume.")
        found = list_step_dirs(run_dir)
        if not found:
            logger.info(f"--resume: the run in {run_dir} has no complete checkpoint yet; starting it from step 0")
        return found[-1] if found else None
    return find_step_to_resume(cfg.resume)


_SHAPE_IGNORED = {"tokenizer", "n_vocab", "num_classes", "dropout", "model_type"}


def check_resumable(cfg: TrainConfig, state: dict[str, Any], checkpoint: Path) -> None:
    """Refuse a checkpoint of another stage or model shape than the options ask for."""
    if state.get("stage") != cfg.stage:
        raise ResumeError(f"cannot resume from {checkpoint}: it was trained with --stage {state.get('stage')}, "
                          f"this run is --stage {cfg.stage}")
    saved = state.get("model_config", {})
    if cfg.init is None:
        try:
            requested_config = new_model_config(cfg)
        except ConfigError:
            requested_config = None
        requested = requested_config.to_dict() if requested_config is not None else {}
    else:
        requested = {**saved, **cfg.size_overrides()}
    differing = [f"{k}={saved[k]!r} (asked: {requested[k]!r})" for k in requested
                 if k in saved and k not in _SHAPE_IGNORED and _plain(requested[k]) != _plain(saved[k])]
    if differing:
        raise ResumeError(f"cannot resume from {checkpoint}: its model differs from the one asked for: "
                          f"{', '.join(differing)}. Resume with the run's own options, or start a new --out.")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def restore(state: dict[str, Any], checkpoint: Path, optimizer, scaler, ema: EMA, env: Distributed,
            cfg: TrainConfig) -> tuple[int, int]:
    """Load optimizer, scaler, EMA and RNG states; returns (step, skipped steps)."""
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise ResumeError(f"cannot resume from {checkpoint}: the optimizer state does not fit ({exc}); "
                          f"was --train different?") from None
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    for rate in ema.rates:
        path = checkpoint / ema_file_name(rate)
        if path.is_file():
            weights, _ = read_checkpoint(path)
            ema.load_state_dict(rate, weights)
        else:
            logger.warning(f"{checkpoint} has no {path.name}: that EMA starts from the current weights")
    step = int(state["step"])
    rng = state.get("rng", [])
    if len(rng) == env.world_size:
        restore_rng(rng[env.rank])
    else:  # another world size: dropout draws cannot match the old run, the rest still does
        logger.warning(f"the checkpoint was written by {len(rng)} process(es), this run has {env.world_size}: "
                       f"reseeding the global RNGs")
        seed_everything(cfg.seed + 7919 * step + env.rank)  # prime stride: (step, rank) pairs differ
    return step, int(state.get("skipped_steps", 0))


# --------------------------------------------------------------------------------------------
# Data checks, logging helpers


def check_data(references: list[dict[str, Any]], bare, stage, cfg: TrainConfig) -> None:
    size = bare.config.image_size
    shape = tuple(references[0]["image"].shape)
    if shape != (3, size, size):
        raise ConfigError(f"--data {cfg.data} gives images of shape {list(shape)}, the model takes [3, {size}, {size}]")
    if stage.needs_labels and "label" not in references[0]:
        raise ConfigError(f"stage {cfg.stage!r} needs class labels, but --data {cfg.data} has none: use 'shapes', a "
                          f"folder with one subfolder per class, or a .csv/.jsonl table with a 'label' column")
    if hasattr(bare, "tokenize"):
        bare.tokenize([""])  # loads the tokenizer now: a missing vocabulary fails before any worker starts


def readable_model_config(bare) -> dict[str, Any]:
    config = bare.config.to_dict()
    tokenizer = config.get("tokenizer")
    if isinstance(tokenizer, dict) and "json" in tokenizer:
        config["tokenizer"] = {"kind": tokenizer.get("kind"), "json": "(stored in the checkpoints)"}
    return config


PROBE_COLUMNS = ("probe_colour", "probe_shape", "probe_size", "probe_all")
GRID_COLUMN = "grid_caption_accuracy"


def run_probe(cfg: TrainConfig, bare, ema: EMA) -> dict[str, float]:
    """The caption probe on the sample weights (rank 0): accuracy of each attribute's words."""
    from .probe import caption_probe
    from .samples import sampling_weights

    result = caption_probe(sampling_weights(bare, ema, cfg.sample_weights), images=cfg.probe_images)
    values = (result.colour_accuracy, result.shape_accuracy, result.size_accuracy, result.all_accuracy)
    return dict(zip(PROBE_COLUMNS, values, strict=True))


def log_row(cfg: TrainConfig, step: int, lr: float, skipped: int, meter: Meter, interval: dict[str, float],
            data: DataStream, env: Distributed) -> dict[str, Any]:
    """One metrics row (a collective call: every rank must reach it)."""
    row: dict[str, Any] = {"step": step, **meter.reduce()}
    finite = interval["finite_steps"]
    row["grad_norm"] = interval["grad_norm"] / finite if finite else float("nan")
    row["lr"] = lr
    row["images_per_s"] = cfg.batch_size * interval["steps"] / max(interval["seconds"], 1e-9)
    row["skipped_steps"] = skipped
    row.update(data.all_stats(env.gather))
    return row


def attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("glide")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler

"""The training run: `train(cfg)` trains one model (GGAM, or the plain backbone) and evaluates it.

Runs under DDP when launched by `torchrun`; only rank 0 writes files. Every check comes before the first write, each
epoch ends in a complete checkpoint, and a signal waits until the checkpoint is written (see `checkpoint.py`,
`signals.py`). The per-step work is `loop.py`; the building blocks (datasets, model, optimizer) are `build.py`.
A run goes through `_set_up`, `_build_data` and `_build` (every check before the first write), `_fit` (one
`_fit_epoch` per epoch) and `_finish`.
"""
import dataclasses
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .._files import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, atomic_write_json, load_weights
from ..data.device import device_loaders, wants_device_data
from ..data.loader import EpochSampler, SeededTransformDataset, ShardSampler, build_loader, build_transform, derive_seed
from ..head import fused_self_test
from ..loss import GGAMLoss
from ..model import GGAMModel
from ..spatial_guidance import SpatialGuidanceLoss
from .build import (
    build_datasets,
    build_model,
    build_optimizer,
    build_scheduler,
    check_classes,
    class_names_of,
    num_classes_of,
    prepare_generated,
    resolve_data_config,
    restore_rng_state,
    rng_state,
    run_config_json,
    scan_data,
    usable_cores,
)
from .checkpoint import (
    TRAINING_WEIGHTS_NAME,
    CheckpointWriteError,
    clean_partial,
    list_checkpoints,
    load_training_state,
    save_checkpoint,
)
from .config import RESUME_MUTABLE_FIELDS, TrainConfig
from .distributed import (
    DistInfo,
    barrier,
    broadcast_buffers,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    replica_max_abs_diff,
)
from .evaluate import build_eval_loader, loader_workers
from .loop import (
    StepOptions,
    StepState,
    TrainForward,
    TrainingDiverged,
    amp_dtype_for,
    evaluate_model,
    fp16_grad_scaler,
    train_one_epoch,
    updates_per_epoch,
)
from .machine import machine_info
from .metrics import METRIC_COLUMNS, MetricsWriter
from .report import write_report
from .run_dir import (
    RESULTS_NAME,
    claim_output,
    clear_run_dir,
    config_differences,
    default_output,
    is_nonempty_dir,
    read_run_config,
)
from .signals import InterruptGuard, TrainingInterrupted
from .stats import percent

__all__ = ['build_mixup', 'check_finite_weights', 'train']

_logger = logging.getLogger(__name__)

_STATE_VERSION = 1


# --- training --------------------------------------------------------------------------------------------------------
def _resolve_output(cfg: TrainConfig, info: DistInfo) -> TrainConfig:
    """`cfg` with its run directory named (rank 0's default name on every rank)."""
    out = broadcast_object(cfg.output or default_output(cfg, '' if cfg.arm == 'ggam' else f'-{cfg.arm}'), info)
    return dataclasses.replace(cfg, output=str(out))


def _check_output(cfg: TrainConfig) -> Path:
    """Check overwrite / resume of the (locked) run directory; reads only, writes nothing."""
    out = Path(cfg.output)
    if cfg.resume:
        saved = TrainConfig.from_dict(read_run_config(out)['ggam_layers']['train_config'])
        diff = config_differences(saved, cfg)
        if diff:
            raise ValueError(
                f'resume: {", ".join(f"{k}={getattr(cfg, k)!r} (saved {getattr(saved, k)!r})" for k in diff)} '
                f'differ from the run in {out}; only {sorted(RESUME_MUTABLE_FIELDS)} may change on resume')
    elif is_nonempty_dir(out) and not cfg.overwrite:
        raise FileExistsError(f'output directory {out} is not empty; pass --overwrite (overwrite=True) to replace '
                              'its run files, or --resume to continue it')
    return out


def _init_output(cfg: TrainConfig, out: Path, info: DistInfo) -> None:
    """Create (or clear, with overwrite) the run directory: the first write of a run, after every check."""
    barrier(info)  # every rank has checked before rank 0 touches the folder
    if info.is_main:
        if cfg.overwrite and not cfg.resume and out.is_dir():
            clear_run_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        clean_partial(out)
    barrier(info)


def _check_batch_size(cfg: TrainConfig, n: int, skipped: int = 0) -> None:
    if n < cfg.batch_size:
        extra = f' after skipping {skipped} unreadable images' if skipped else ''
        raise ValueError(f'batch_size {cfg.batch_size} is larger than the training set ({n} images{extra}); pass '
                         f'--batch-size {_pow2_floor(n)} or less')


def _pow2_floor(n: int) -> int:
    """The largest power of two not above n (a batch size to suggest)."""
    return 1 << (max(n, 1).bit_length() - 1)


def _resume_state(out: Path, model: nn.Module, ema: Any, label: str, main: bool
                  ) -> Tuple[Optional[Path], Dict[str, Any]]:
    """Load the newest intact checkpoint of `out` into `model` (and the EMA's weights into `ema`); a damaged newer
    one is reported and passed over."""
    ckpts = list_checkpoints(out)
    damaged = []
    for ckpt in reversed(ckpts):
        try:
            state = load_training_state(ckpt, map_location='cpu')
            if (ckpt / TRAINING_WEIGHTS_NAME).is_file():  # a run with EMA: model.safetensors holds the EMA
                load_weights(model, ckpt / TRAINING_WEIGHTS_NAME, what='checkpoint training weights')
                if ema is not None:
                    load_weights(ema.module, ckpt / WEIGHTS_NAME, what='checkpoint EMA weights')
            else:
                load_weights(model, ckpt / WEIGHTS_NAME, what='checkpoint weights')
                if ema is not None:
                    ema.module.load_state_dict(model.state_dict())
        except CheckpointError as e:
            damaged.append(f'{ckpt.name}: {e}')
            if main:
                _logger.warning('[%s] checkpoint %s is damaged (%s); falling back to the previous one', label, ckpt, e)
            continue
        if state.get('format_version') != _STATE_VERSION:
            raise ValueError(f'{ckpt}: training state format {state.get("format_version")} is not supported')
        if damaged and main:
            msg = (f'[{label}] resuming from {ckpt.name}, the newest intact checkpoint: '
                   f'{", ".join(d.split(":")[0] for d in damaged)} damaged (see the warning above)')
            print(msg, file=sys.stderr, flush=True)
        return ckpt, state
    if damaged:
        raise CheckpointError(f'every checkpoint of {out} is damaged, nothing to resume from: ' + ' | '.join(damaged))
    return None, {}


def _stopped_message(out: Path, label: str, exc: BaseException) -> str:
    last = list_checkpoints(out)
    kept = (f'the last complete checkpoint is {last[-1]} (epoch {int(last[-1].name.split("-")[1])})' if last
            else 'no epoch had finished, so there is no checkpoint yet')
    if isinstance(exc, TrainingInterrupted):
        why = f'interrupted by {exc.name}'
    else:  # under DDP, typically another process of the job died
        why = f'stopped by {type(exc).__name__} ({" ".join(str(exc).split())[:160]})'
    run = out
    if out.name in ('ggam', 'plain') and (out.parent / 'ggam').is_dir() and not (out.parent / CONFIG_NAME).is_file():
        run = out.parent  # a --compare-plain run: resuming the parent continues both models
    return (f'[{label}] {why}: {kept}. Continue with: ggam-layers train --resume {run} (under torchrun, the same '
            'torchrun command with --resume); it ends with the weights of an uninterrupted run')


def train(
        cfg: TrainConfig,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        command: Optional[str] = None,
        loss_fn: Optional[nn.Module] = None,
) -> Dict[str, Any]:
    """Train one model (GGAM, or the plain backbone with `cfg.plain`) and evaluate it.

    Runs under DDP when launched by `torchrun` (or inside an initialised process group); only rank 0 writes files.
    The run owns its output folder from its first check to its end (`run_dir.claim_output`): a second run into it
    raises `OutputInUse` (a FileExistsError) at once.

    Args:
        cfg: The run.
        train_dataset: Use this training dataset (PIL images, no transform) instead of building it from `cfg`.
        eval_dataset: Likewise for evaluation.
        command: Command line to record as the recipe in config.json.
        loss_fn: A criterion in place of `GGAMLoss(lam, target, label_smoothing)` for a GGAM model (research on new
            targets): `loss_fn.terms(out, y)` gets the `forward_ggam` output and the targets (soft ones under mixup /
            cutmix) and returns `GGAMLossTerms(loss, ce, ggam)`. It is not recorded in config.json: a run trained
            with it says so in its log and in results.json (`loss_fn`).

    Returns:
        Final metrics: test_top1, test_top5, test_loss, train_loss, train_ce, train_ggam, train_top1, best_test_top1,
        best_epoch, epochs_done, finished, train_time_s, images_per_s, output, num_classes, world_size,
        replica_max_abs_diff, history (the per-epoch rows).
    """
    cfg = dataclasses.replace(cfg).validate()
    info = init_distributed(cfg.device)
    try:
        cfg = _resolve_output(cfg, info)
        with claim_output(Path(cfg.output), info):
            return _train(cfg, info, train_dataset, eval_dataset, command, loss_fn)
    finally:
        cleanup_distributed(info)


@dataclasses.dataclass(frozen=True)
class _Run:
    """A checked run: its config, its processes, its run directory and its label ('GGAM resnet50')."""
    cfg: TrainConfig
    info: DistInfo
    out: Path
    label: str

    @property
    def show(self) -> bool:
        """Whether this process shows progress bars and epoch lines (rank 0, with `cfg.progress`)."""
        return self.cfg.progress and self.info.is_main


@dataclasses.dataclass
class _Data:
    """The run's datasets (PIL images, unreadable files skipped), their classes and the skip report of `scan_data`."""
    train: Any
    eval: Any
    num_classes: int
    skipped: Dict[str, Any]


@dataclasses.dataclass
class _Parts:
    """What `_build` makes for `_fit` and `_finish`: the model and its training machinery, the loaders, and the
    epochs already done (a resumed run's)."""
    model: nn.Module
    ema: Any
    optimizer: torch.optim.Optimizer
    scaler: Any
    amp_dtype: Optional[torch.dtype]
    loss_fn: nn.Module
    fwd: nn.Module
    opts: StepOptions
    step_state: StepState
    train_loader: Any
    eval_loader: Any
    steps_per_epoch: int
    start_epoch: int
    history: List[Dict[str, Any]]
    metrics_writer: Optional[MetricsWriter]
    custom_loss: bool = False  # loss_fn came from train(loss_fn=...), not from the config

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and saved as model.safetensors: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model


def _train(cfg: TrainConfig, info: DistInfo, train_ds: Any, eval_ds: Any, command: Optional[str],
           loss_fn: Optional[nn.Module] = None) -> Dict[str, Any]:
    """One run in its claimed folder, in four phases: set up, build (data, then model; every check comes before the
    first write, so a refused run writes nothing), fit, finish."""
    run = _set_up(cfg, info)
    data = _build_data(run, train_ds, eval_ds)
    parts = _build(run, data, command, loss_fn)
    t_run = time.perf_counter()
    last_eval = _fit(run, parts)
    return _finish(run, data, parts, last_eval, t_run)


def _set_up(cfg: TrainConfig, info: DistInfo) -> _Run:
    """Check the batch splits over the processes, set threads and determinism, and check the run directory."""
    if cfg.batch_size % info.world_size:
        raise ValueError(f'batch_size {cfg.batch_size} (the global batch) must be divisible by the number of '
                         f'processes {info.world_size}')
    torch.set_num_threads(cfg.threads or max(1, usable_cores() // info.local_world_size))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif info.device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    # every check first (settings, run directory, data layout, batch size, image files, model, checkpoint): a refused
    # run writes nothing
    out = _check_output(cfg)
    kind = {'ggam': 'GGAM', 'se': 'SE', 'cbam': 'CBAM'}.get(cfg.arm, cfg.arm)
    return _Run(cfg, info, out, f'{kind} {cfg.model}')


def _build_data(run: _Run, train_ds: Any, eval_ds: Any) -> _Data:
    """The datasets (given, or built from the config), checked: classes, batch size, image files."""
    cfg = run.cfg
    if train_ds is None or eval_ds is None:
        built = build_datasets(cfg)
        train_ds = train_ds if train_ds is not None else built[0]
        eval_ds = eval_ds if eval_ds is not None else built[1]
    check_classes(cfg, {cfg.train_split: train_ds, cfg.eval_split: eval_ds})
    num_classes = num_classes_of(train_ds)
    if num_classes_of(eval_ds) != num_classes:
        raise ValueError(f'the training split has {num_classes} classes but the evaluation split has '
                         f'{num_classes_of(eval_ds)}')
    _check_batch_size(cfg, len(train_ds))
    scanned, skipped = scan_data(cfg, {'train': train_ds, 'eval': eval_ds}, run.info, run.show)
    _check_batch_size(cfg, len(scanned['train']), skipped['train'])
    return _Data(scanned['train'], scanned['eval'], num_classes, skipped)


def _build(run: _Run, data: _Data, command: Optional[str], custom_loss: Optional[nn.Module] = None) -> _Parts:
    """The model, its optimizer and loss and a resumed run's state (the last checks), then the run directory, the
    generated images, the loaders and the metrics files."""
    cfg, info = run.cfg, run.info
    model, ema, data_config, config = _build_model(run, data, command)
    optimizer = build_optimizer(model, cfg)
    amp_dtype = amp_dtype_for(cfg.amp, cfg.amp_dtype, info.device)
    scaler = fp16_grad_scaler() if amp_dtype == torch.float16 else None
    mixup = build_mixup(cfg, data.num_classes)
    # under mixup / cutmix the targets carry the label smoothing (timm's Mixup makes them)
    smoothing = 0.0 if mixup is not None else cfg.label_smoothing
    if cfg.guide == 'spatial':
        loss_fn: nn.Module = SpatialGuidanceLoss(lam=cfg.lam, label_smoothing=smoothing)
    else:
        loss_fn = GGAMLoss(lam=cfg.lam, target=cfg.loss_target(), label_smoothing=smoothing)
    if custom_loss is not None:
        if not callable(getattr(custom_loss, 'terms', None)):
            raise TypeError(f'loss_fn must have terms(out, y) -> GGAMLossTerms, got {type(custom_loss).__name__}')
        if run.show:
            _logger.info('loss: %s (loss_fn given to train(); not recorded in config.json)', _loss_name(custom_loss))
        loss_fn = custom_loss
    start_epoch, history, skipped_steps = _resume(run, model, ema, optimizer, scaler)

    # the run directory, then the data
    _init_output(cfg, run.out, info)
    if config is not None:
        atomic_write_json(run.out / CONFIG_NAME, config)
    prepare_generated(data.train, run.show, f'generating {cfg.train_split} images')
    prepare_generated(data.eval, run.show, f'generating {cfg.eval_split} images')
    train_loader, eval_loader = _loaders(run, data, data_config)
    steps_per_epoch = updates_per_epoch(len(train_loader), cfg.grad_accum_steps)  # optimizer updates
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    step_state = StepState(updates=start_epoch * steps_per_epoch, skipped=skipped_steps,
                           scheduler=build_scheduler(optimizer, cfg, steps_per_epoch), mixup=mixup, ema=ema)

    fwd = TrainForward(model, ggam=cfg.arm == 'ggam')
    opts = StepOptions(
        ggam=cfg.arm == 'ggam', cam_class=cfg.cam_class, label_smoothing=smoothing, grad_clip=cfg.grad_clip,
        channels_last=cfg.channels_last, amp_dtype=amp_dtype, seed=cfg.seed, epochs=cfg.epochs, sched=cfg.sched,
        warmup_steps=warmup_steps, min_lr_ratio=cfg.min_lr_ratio, grad_accum_steps=cfg.grad_accum_steps,
        max_nonfinite_steps=cfg.max_nonfinite_steps)
    if info.distributed:
        fwd = DistributedDataParallel(fwd, device_ids=[info.device.index] if info.device.type == 'cuda' else None)
    if cfg.compile:
        fwd = torch.compile(fwd)
    metrics_writer = MetricsWriter(str(run.out), cfg.tensorboard) if info.is_main else None
    if metrics_writer is not None and history:
        metrics_writer.write(history)  # drop rows of epochs after the checkpoint a killed run had logged
    return _Parts(model, ema, optimizer, scaler, amp_dtype, loss_fn, fwd, opts, step_state, train_loader, eval_loader,
                  steps_per_epoch, start_epoch, history, metrics_writer, custom_loss is not None)


def _build_model(run: _Run, data: _Data, command: Optional[str]
                 ) -> Tuple[nn.Module, Any, Dict[str, Any], Optional[Dict[str, Any]]]:
    """The seeded model on its device and its EMA (or None), its data config, and the config.json to write (rank 0
    of a run without one; else None)."""
    cfg, info, device = run.cfg, run.info, run.info.device
    torch.manual_seed(derive_seed(cfg.seed, 0x313D))
    model = build_model(cfg, data.num_classes)
    data_config = resolve_data_config(cfg, model)
    config = None  # timm's config.json, made now (save_for_hf wants contiguous weights) and written with the run
    if info.is_main and (not cfg.resume or not (run.out / CONFIG_NAME).is_file()):
        config = run_config_json(model, cfg, data_config, class_names_of(data.train), data.num_classes, command, None)
    if cfg.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if device.type == 'cuda' and isinstance(model, GGAMModel):
        fused_self_test(device)  # before any compile: a failing kernel turns the fused path off, with one warning
    return model, _model_ema(model, cfg), data_config, config


def _resume(run: _Run, model: nn.Module, ema: Any, optimizer: torch.optim.Optimizer, scaler: Any
            ) -> Tuple[int, List[Dict[str, Any]], int]:
    """With `cfg.resume`, load the newest intact checkpoint into the model, EMA, optimizer, scaler and random state.
    Returns the epochs done, their history and the updates skipped so far (0, [], 0 for a new run)."""
    if not run.cfg.resume:
        return 0, [], 0
    ckpt, state = _resume_state(run.out, model, ema, run.label, run.info.is_main)
    if ckpt is None:
        return 0, [], 0
    optimizer.load_state_dict(state['optimizer'])
    if scaler is not None and state.get('scaler'):
        scaler.load_state_dict(state['scaler'])
    restore_rng_state(state['rng'])
    start_epoch = int(state['epoch'])
    if run.show:
        tqdm.write(f'[{run.label}] resumed from {ckpt} after epoch {start_epoch}', file=sys.stdout)
    return start_epoch, list(state['history']), int(state.get('skipped_steps', 0))


def _loaders(run: _Run, data: _Data, data_config: Dict[str, Any]) -> Tuple[Any, Any]:
    """The training loader (seeded augmentation, this rank's share of each epoch) and the evaluation loader; both on
    the device when the data fits there (`data.device`)."""
    cfg, info, device = run.cfg, run.info, run.info.device
    pin = device.type == 'cuda'
    train_set = SeededTransformDataset(
        data.train, build_transform(data_config, True, cfg.train_aug, cfg.hflip, aa=cfg.aa, reprob=cfg.reprob,
                                    color_jitter=cfg.color_jitter), seed=cfg.seed, seeded=True)
    sampler = EpochSampler(len(train_set), seed=cfg.seed, rank=info.rank, world_size=info.world_size, shuffle=True)
    if wants_device_data(cfg.data_path, device, data.train, train_set.transform):
        return device_loaders(
            data.train, data.eval, train_set.transform, build_transform(data_config, False),
            cfg.batch_size // info.world_size, cfg.eval_batch_size, sampler,
            ShardSampler(len(data.eval), info.rank, info.world_size), device, cfg.seed)
    train_loader = build_loader(train_set, cfg.batch_size // info.world_size, sampler,
                                num_workers=loader_workers(cfg, data.train, info), drop_last=True, pin_memory=pin)
    return train_loader, build_eval_loader(data.eval, build_transform(data_config, False), cfg, info, pin)


def _fit(run: _Run, parts: _Parts) -> Dict[str, Any]:
    """Train to `cfg.epochs` (or `cfg.stop_after`), one checkpoint per epoch, Ctrl-C / SIGTERM waiting for a
    checkpoint being written (`InterruptGuard`). Returns the last evaluation ({} when none ran)."""
    cfg = run.cfg
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    last_eval: Dict[str, Any] = {}
    with InterruptGuard() as guard:
        try:
            for epoch in range(parts.start_epoch, end_epoch):
                last_eval = _fit_epoch(run, parts, guard, epoch, end_epoch) or last_eval
        except TrainingDiverged as e:
            if run.info.is_main:
                print(_diverged_message(run.out, run.label, e, cfg), file=sys.stderr, flush=True)
            raise
        except (KeyboardInterrupt, RuntimeError) as e:  # a signal, or (DDP) a peer process that died
            if run.info.is_main and not isinstance(e, CheckpointWriteError):
                print(_stopped_message(run.out, run.label, e), file=sys.stderr, flush=True)
            raise
        finally:
            if parts.metrics_writer is not None:
                parts.metrics_writer.close()
    return last_eval


def _fit_epoch(run: _Run, parts: _Parts, guard: InterruptGuard, epoch: int, end_epoch: int) -> Dict[str, Any]:
    """Train epoch `epoch` (0-based), evaluate when due, checkpoint it (rank 0) and log it. Returns the evaluation,
    or {} when none was due."""
    cfg, info, label = run.cfg, run.info, run.label
    row = train_one_epoch(parts.fwd, parts.model, parts.loss_fn, parts.optimizer, parts.scaler, parts.train_loader,
                          epoch, parts.opts, info, run.show, f'[{label}]', parts.step_state)
    check_finite_weights(parts.model, parts.ema, epoch + 1)
    broadcast_buffers(parts.model, info)  # every rank evaluates (and rank 0 saves) the same running statistics
    res: Dict[str, Any] = {}
    if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == end_epoch:
        t0 = time.perf_counter()
        res = evaluate_model(parts.eval_model, parts.eval_loader, info.device, parts.amp_dtype, cfg.channels_last,
                             info, run.show, desc=f'[{label}] eval')
        row.update(test_loss=res['loss'], test_top1=res['top1'], test_top5=res['top5'],
                   eval_time_s=time.perf_counter() - t0)
    else:
        row.update(test_loss=None, test_top1=None, test_top5=None, eval_time_s=None)
    parts.history.append({**{k: row.get(k) for k in METRIC_COLUMNS}, 'lr_groups': row['lr_groups']})
    if info.is_main:
        _save_epoch(run, parts, guard, epoch + 1)
    barrier(info)
    if run.show:
        tqdm.write(_epoch_line(label, parts.history[-1], cfg.epochs), file=sys.stdout)
    elif info.is_main:
        _logger.info(_epoch_line(label, parts.history[-1], cfg.epochs))
    return res if row.get('test_top1') is not None else {}


def _save_epoch(run: _Run, parts: _Parts, guard: InterruptGuard, epochs_done: int) -> None:
    """Write the checkpoint of `epochs_done` epochs and the metrics files; a signal waits until both are written."""
    cfg, scaler = run.cfg, parts.scaler
    state = {
        'format_version': _STATE_VERSION, 'epoch': epochs_done, 'global_step': epochs_done * parts.steps_per_epoch,
        'optimizer': parts.optimizer.state_dict(), 'scaler': scaler.state_dict() if scaler is not None else {},
        'rng': rng_state(), 'history': parts.history, 'train_config': asdict(cfg),
        'skipped_steps': parts.step_state.skipped,
    }
    extra = {TRAINING_WEIGHTS_NAME: parts.model} if parts.ema is not None else None
    with guard.critical():  # a signal now waits until the checkpoint is complete
        save_checkpoint(run.out, epochs_done, parts.eval_model, state, keep=cfg.keep_checkpoints, extra_weights=extra)
        parts.metrics_writer.write(parts.history)


def _loss_name(loss_fn: nn.Module) -> str:
    """How a criterion given to `train()` is named in the log and in results.json: its class and repr."""
    cls = type(loss_fn)
    return f'{cls.__module__}.{cls.__qualname__}: {" ".join(repr(loss_fn).split())[:200]}'


def _finish(run: _Run, data: _Data, parts: _Parts, last_eval: Dict[str, Any], t_run: float) -> Dict[str, Any]:
    """The run's result (its wall time counted from `t_run`, a `time.perf_counter()`); on rank 0 also results.json,
    the per-class report and the metrics in config.json."""
    cfg, info, out, history, ema = run.cfg, run.info, run.out, parts.history, parts.ema
    replica_diff = replica_max_abs_diff(parts.model, info)
    result = _final_result(cfg, history, out, data.num_classes, info, time.perf_counter() - t_run, replica_diff,
                           run.label)
    result.update(skipped_train_images=data.skipped['train'], skipped_eval_images=data.skipped['eval'],
                  skipped_files=data.skipped['files'], skipped_steps=parts.step_state.skipped,
                  weights='ema' if ema is not None else 'model',
                  model_ema_decay=cfg.model_ema_decay if ema is not None else None,
                  loss_fn=_loss_name(parts.loss_fn) if parts.custom_loss else None)
    if last_eval:  # what fine-grained papers report beside top-1 (the CSV files: report.py)
        result.update(test_mean_per_class_top1=last_eval['mean_per_class_top1'],
                      test_per_class_top1=last_eval['per_class_top1'])
    if ema is not None and history:  # the raw weights beside the EMA that model.safetensors holds
        raw = evaluate_model(parts.model, parts.eval_loader, info.device, parts.amp_dtype, cfg.channels_last, info,
                             False)
        result.update(test_top1_raw=raw['top1'], test_top5_raw=raw['top5'])
    if info.is_main and history:
        atomic_write_json(out / RESULTS_NAME, {k: v for k, v in result.items() if k != 'history'})
        if last_eval:
            write_report(last_eval, out, class_names_of(data.train), png=False)
        config = json.loads((out / CONFIG_NAME).read_text(encoding='utf-8'))
        config['ggam_layers']['metrics'] = {k: result[k] for k in ('test_top1', 'test_top5', 'epochs_done')
                                            if result.get(k) is not None}
        atomic_write_json(out / CONFIG_NAME, config)
    barrier(info)
    return result


def _model_ema(model: nn.Module, cfg: TrainConfig) -> Any:
    """timm's `ModelEmaV3` of `model` (ModelEmaV2 on timm releases without V3), or None."""
    if not cfg.model_ema:
        return None
    import timm.utils
    ema_cls = getattr(timm.utils, 'ModelEmaV3', None) or timm.utils.ModelEmaV2
    return ema_cls(model, decay=cfg.model_ema_decay)


def build_mixup(cfg: TrainConfig, num_classes: int) -> Any:
    """timm's `Mixup` (mixup and / or cutmix, soft targets with the label smoothing), or None."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


def check_finite_weights(model: nn.Module, ema: Any, epoch: int) -> None:
    """Refuse to checkpoint weights (or BatchNorm statistics) that are not finite: a checkpoint is never replaced
    by a bad one."""
    for m in (model, ema.module if ema is not None else None):
        if m is not None and not all(bool(torch.isfinite(v).all()) for v in m.state_dict().values()
                                     if v.is_floating_point()):
            raise TrainingDiverged(epoch, 0, 0, 'weights')


def _diverged_message(out: Path, label: str, e: TrainingDiverged, cfg: TrainConfig) -> str:
    last = list_checkpoints(out)
    kept = (f'the last good checkpoint is {last[-1]} (epoch {int(last[-1].name.split("-")[1])}; its weights are '
            f'{out / WEIGHTS_NAME})' if last else 'no epoch had finished, so no weights were written')
    what = (f'the weights stopped being finite in epoch {e.epoch}' if e.what == 'weights' else
            f'{e.count} optimizer updates in a row had a non-finite {e.what} (epoch {e.epoch}, update {e.step}; '
            f'each was skipped)')
    hints = [f'a lower --lr (now {cfg.lr:g})', '--grad-clip 1.0' if cfg.grad_clip is None else
             f'a smaller --grad-clip (now {cfg.grad_clip:g})']
    if cfg.amp and cfg.amp_dtype in ('float16', 'fp16', 'half'):
        hints.append('--amp-dtype bfloat16 instead of float16')
    return (f'[{label}] training diverged: {what}. {kept[0].upper() + kept[1:]}, and no checkpoint was replaced. '
            f'Try {", ".join(hints[:-1])} or {hints[-1]}.')


def _epoch_line(label: str, row: Dict[str, Any], epochs: int) -> str:
    parts = [f'[{label}] epoch {row["epoch"]}/{epochs}', f'train loss {row["train_loss"]:.4f}']
    if row.get('train_ggam') is not None:
        parts[-1] += f' (ce {row["train_ce"]:.4f}, ggam {row["train_ggam"]:.4f})'
    parts.append(f'train top-1 {percent(row["train_top1"])}')
    if row.get('test_top1') is not None:
        parts.append(f'test top-1 {percent(row["test_top1"])} top-5 {percent(row["test_top5"])}')
    if row.get('skipped_steps'):
        parts.append(f'{row["skipped_steps"]} updates skipped (non-finite)')
    parts.append(f'{row["images_per_s"]:.0f} img/s, {row["epoch_time_s"]:.1f} s')
    return ' | '.join(parts)


def _final_result(cfg: TrainConfig, history: List[Dict[str, Any]], out: Path, num_classes: int, info: DistInfo,
                  run_time: float, replica_diff: float, label: str) -> Dict[str, Any]:
    evaluated = [r for r in history if r.get('test_top1') is not None]
    last = history[-1] if history else {}
    last_eval = evaluated[-1] if evaluated else {}
    best = max(evaluated, key=lambda r: r['test_top1']) if evaluated else {}
    return {
        'model': cfg.arm,
        'label': label,
        'backbone': cfg.model,
        'test_top1': last_eval.get('test_top1'),
        'test_top5': last_eval.get('test_top5'),
        'test_loss': last_eval.get('test_loss'),
        'train_loss': last.get('train_loss'),
        'train_ce': last.get('train_ce'),
        'train_ggam': last.get('train_ggam'),
        'train_top1': last.get('train_top1'),
        'best_test_top1': best.get('test_top1'),
        'best_epoch': best.get('epoch'),
        'epochs_done': len(history),
        'finished': len(history) == cfg.epochs,
        'train_time_s': sum(r['epoch_time_s'] + (r.get('eval_time_s') or 0.0) for r in history),
        'wall_time_s': run_time,
        'images_per_s': float(np.mean([r['images_per_s'] for r in history])) if history else None,
        'output': str(out),
        'num_classes': num_classes,
        'world_size': info.world_size,
        'replica_max_abs_diff': replica_diff,
        'machine': machine_info(),  # seeded runs are bit-identical on one CPU type only
        'history': history,
    }

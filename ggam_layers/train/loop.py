"""One training epoch and one evaluation pass, for GGAM models and plain timm models, alone or under DDP.

A GGAM step is one forward (`forward_ggam`: logits, S and the closed-form Grad-CAM beta) and one backward of
`GGAMLoss`; a plain step is cross-entropy on `model(x)` (timm's soft-target cross-entropy under mixup / cutmix).
Gradients of `grad_accum_steps` batches make one update; an update whose loss or gradient is not finite is skipped
and counted, and too many in a row raise `TrainingDiverged`. Metrics are summed on the device and reduced over
ranks once per epoch (the progress bar reads them every 10 steps); the finiteness check is one host sync per update.
"""
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loader import derive_seed
from .distributed import DistInfo, all_ranks_true, all_reduce_sum
from .progress import progress as progress_bar

__all__ = ['AMP_DTYPE_ALIASES', 'StepOptions', 'StepState', 'TrainForward', 'TrainingDiverged', 'amp_dtype_for',
           'autocast', 'evaluate_model', 'finish_update', 'fp16_grad_scaler', 'lr_factor', 'normalize_amp_dtype',
           'train_one_epoch', 'updates_per_epoch', 'tta_views', 'TTA_MODES']

# every spelling of the autocast dtype that timm and PyTorch users type, to its canonical name
AMP_DTYPE_ALIASES = {
    'auto': 'auto', 'bfloat16': 'bfloat16', 'bf16': 'bfloat16', 'float16': 'float16', 'fp16': 'float16',
    'half': 'float16'}


def normalize_amp_dtype(amp_dtype: str) -> str:
    """'auto', 'bfloat16' or 'float16' for any accepted spelling ('bf16', 'fp16', 'half', any case)."""
    key = str(amp_dtype).strip().lower()
    if key not in AMP_DTYPE_ALIASES:
        raise ValueError(f'amp_dtype must be one of {tuple(AMP_DTYPE_ALIASES)}, got {amp_dtype!r}')
    return AMP_DTYPE_ALIASES[key]


def lr_factor(step: int, total_steps: int, warmup_steps: int, sched: str = 'cosine', min_ratio: float = 0.) -> float:
    """Learning rate multiplier at optimizer step `step` (0-based): linear warm-up, then cosine or constant.

    Args:
        step: Optimizer step.
        total_steps: Steps of the whole run.
        warmup_steps: Steps of linear warm-up from 1/warmup_steps to 1.
        sched: 'cosine' (from 1 to `min_ratio` over the steps after the warm-up) or 'none' (constant 1).
        min_ratio: The cosine's final value.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if sched == 'none':
        return 1.0
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def fp16_grad_scaler() -> Any:
    """The loss scaler of float16 training on CUDA: `torch.amp.GradScaler('cuda')` where torch has it (2.3 and
    newer), `torch.cuda.amp.GradScaler()` on the older releases the package accepts (torch.amp has no GradScaler
    in torch 2.1)."""
    if hasattr(torch.amp, 'GradScaler'):
        return torch.amp.GradScaler('cuda')
    return torch.cuda.amp.GradScaler()


def amp_dtype_for(amp: bool, amp_dtype: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype: None without AMP; bfloat16 on the CPU; on CUDA bfloat16 where supported for 'auto'."""
    if not amp:
        return None
    amp_dtype = normalize_amp_dtype(amp_dtype)
    if device.type == 'cuda':
        if amp_dtype == 'float16' or (amp_dtype == 'auto' and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if amp_dtype == 'float16':
        raise ValueError("amp_dtype='float16' needs CUDA; on the CPU use 'bfloat16' (or 'auto')")
    return torch.bfloat16


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """`torch.autocast` for `dtype`, or a no-op context when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class TrainForward(nn.Module):
    """The module DDP wraps: `forward_ggam` for GGAM models (DDP syncs only gradients of calls to `forward`)."""

    def __init__(self, model: nn.Module, ggam: bool):
        super().__init__()
        self.model = model
        self.ggam = ggam

    def forward(self, x: torch.Tensor, classes: Optional[torch.Tensor] = None) -> Any:
        return self.model.forward_ggam(x, classes) if self.ggam else self.model(x)


@dataclass(frozen=True)
class StepOptions:
    """How `train_one_epoch` runs a step.

    Attributes:
        ggam: GGAM model (`forward_ggam` + the GGAM loss) or plain model (cross-entropy).
        cam_class: 'pred' (Grad-CAM of the predicted class) or 'label' (under mixup: the larger-weight label).
        label_smoothing: Of the plain model's cross-entropy (the GGAM loss has its own; under mixup, Mixup's).
        grad_clip: Gradient norm clip, or None.
        channels_last: Move inputs to channels-last.
        amp_dtype: Autocast dtype, or None.
        seed: Run seed (dropout, drop-path and mixup are seeded from (seed, epoch, rank)).
        epochs: Total epochs (for the schedule and the bar).
        sched: 'cosine' or 'none' (the package's schedule, `lr_factor`); other names step a timm scheduler.
        warmup_steps: Linear warm-up updates.
        min_lr_ratio: Final cosine factor.
        grad_accum_steps: Batches per optimizer update.
        max_nonfinite_steps: Updates in a row with a non-finite loss or gradient that end the run (each is skipped).
    """
    ggam: bool = True
    cam_class: str = 'pred'
    label_smoothing: float = 0.
    grad_clip: Optional[float] = None
    channels_last: bool = False
    amp_dtype: Optional[torch.dtype] = None
    seed: int = 0
    epochs: int = 1
    sched: str = 'cosine'
    warmup_steps: int = 0
    min_lr_ratio: float = 0.
    grad_accum_steps: int = 1
    max_nonfinite_steps: int = 5


class TrainingDiverged(RuntimeError):
    """More than `max_nonfinite_steps` updates in a row had a non-finite loss or gradient."""

    def __init__(self, epoch: int, step: int, count: int, what: str):
        self.epoch, self.step, self.count, self.what = epoch, step, count, what
        if what == 'weights':
            super().__init__(f'non-finite weights after epoch {epoch}')
        else:
            super().__init__(f'{count} updates in a row had a non-finite {what} (epoch {epoch}, step {step})')


@dataclass
class StepState:
    """What crosses epochs: optimizer updates done, skipped updates (in all and in a row), the timm scheduler, the
    mixup function and the EMA of the weights (each None when off)."""
    updates: int = 0
    skipped: int = 0
    skipped_in_a_row: int = 0
    scheduler: Any = None
    mixup: Any = None
    ema: Any = None


def updates_per_epoch(batches: int, grad_accum_steps: int) -> int:
    """Optimizer updates of an epoch of `batches` batches (the last update may take fewer batches)."""
    return max(1, math.ceil(batches / grad_accum_steps))


def _soft_ce(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    if target.is_floating_point():  # mixup / cutmix targets: timm's soft-target cross-entropy
        from timm.loss import SoftTargetCrossEntropy
        return SoftTargetCrossEntropy()(logits.float(), target.float())
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def train_one_epoch(
        fwd: nn.Module,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: Optional[Any],
        loader: Any,
        epoch: int,
        opts: StepOptions,
        info: DistInfo,
        show: bool = False,
        label: str = '',
        state: Optional[StepState] = None,
) -> Dict[str, Any]:
    """Train one epoch; returns its metrics row (train loss / CE / GGAM term / top-1, learning rates, speed).

    Each update accumulates `opts.grad_accum_steps` batches (each loss divided by the batches of its update, so the
    update is that of the whole batch), skips itself when its loss or gradient is not finite, then steps the
    optimizer, the schedule and the EMA.

    Args:
        fwd: `TrainForward(model)`, possibly wrapped in DDP or compiled.
        model: The unwrapped model (gradient clipping, EMA).
        loss_fn: `GGAMLoss` (used by GGAM models).
        optimizer: Its param groups carry `initial_lr` (the base lr the schedule multiplies) and a `name`.
        scaler: A `torch.amp.GradScaler` for float16, else None.
        loader: Training batches; its sampler has `set_epoch`.
        epoch: 0-based epoch.
        opts: Step options.
        info: Process placement.
        show: Show a progress bar.
        label: Prefix of the bar.
        state: Updates, skipped updates, scheduler, mixup and EMA across epochs (a fresh one when None).

    Raises:
        TrainingDiverged: More than `opts.max_nonfinite_steps` updates in a row were not finite.
    """
    state = state if state is not None else StepState()
    device = info.device
    steps = len(loader)
    accum = max(1, opts.grad_accum_steps)
    n_updates = updates_per_epoch(steps, accum)
    fwd.train()
    sampler = getattr(loader, 'sampler', None)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)
    # dropout / drop-path (torch) and mixup (numpy) draw from global RNGs: make them a function of (seed, epoch, rank)
    torch.manual_seed(derive_seed(opts.seed, epoch, info.rank, 0xD0))
    if state.mixup is not None:
        np.random.seed(derive_seed(opts.seed, epoch, info.rank, 0x313) % 2 ** 32)
    # loss, ce, ggam (each x n, over the batches with a finite loss), correct, n, n of the finite batches
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    skipped_before = state.skipped
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    bar = progress_bar(loader, desc=f'{label} epoch {epoch + 1}/{opts.epochs}'.strip(), disable=not show)
    finite = torch.ones((), dtype=torch.bool, device=device)
    for i, (x, y) in enumerate(bar):
        update, first = divmod(i, accum)
        in_update = min(accum, steps - update * accum)  # batches of this update
        last = first + 1 == in_update
        if first == 0:
            _set_lr(optimizer, state, epoch * n_updates + update, n_updates, opts)
            optimizer.zero_grad(set_to_none=True)
            finite = torch.ones((), dtype=torch.bool, device=device)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        hard = y
        if state.mixup is not None:
            x, y = state.mixup(x, y)
            hard = y.argmax(1)  # the label with the larger weight: train top-1 and cam_class='label'
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sync = contextlib.nullcontext() if last or not hasattr(fwd, 'no_sync') else fwd.no_sync()
        with sync:
            with autocast(device, opts.amp_dtype):
                out = fwd(x, hard if opts.cam_class == 'label' else None) if opts.ggam else fwd(x)
            if opts.ggam:
                logits = out.logits
                loss, ce, ggam = loss_fn.terms(out, y)
            else:
                logits = out
                ce = _soft_ce(logits, y, opts.label_smoothing)
                loss, ggam = ce, torch.zeros((), device=device)
            ok = torch.isfinite(loss.detach())
            finite &= ok
            scaled = loss / in_update
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if last:
            finish_update(model, params, optimizer, scaler, finite, opts, state, epoch, update, info)
        with torch.no_grad():
            n = y.shape[0]
            sums += torch.stack([
                torch.where(ok, loss.detach().double(), 0.) * n, torch.where(ok, ce.detach().double(), 0.) * n,
                torch.where(ok, ggam.detach().double(), 0.) * n, (logits.detach().argmax(1) == hard).sum().double(),
                torch.tensor(float(n), dtype=torch.float64, device=device), ok.double() * n])
        if show and (i % 10 == 0 or i + 1 == steps):
            s = sums.tolist()
            bar.set_postfix(loss=f'{s[0] / max(s[5], 1.0):.3f}', acc=f'{100 * s[3] / s[4]:.1f}%', refresh=False)
    bar.close()
    sums = all_reduce_sum(sums, info).tolist()
    dt = time.perf_counter() - t0
    n, n_ok = max(sums[4], 1.0), sums[5]
    lrs = {g.get('name'): g['lr'] for g in optimizer.param_groups}
    backbone = [v for k, v in lrs.items() if str(k).startswith('backbone')]
    head = [v for k, v in lrs.items() if str(k).startswith('head')]
    return {
        'epoch': epoch + 1, 'train_loss': sums[0] / n_ok if n_ok else math.nan,
        'train_ce': sums[1] / n_ok if n_ok else math.nan,
        'train_ggam': (sums[2] / n_ok if n_ok else math.nan) if opts.ggam else None, 'train_top1': sums[3] / n,
        'lr_backbone': max(backbone) if backbone else None, 'lr_head': max(head) if head else None,
        'lr_groups': lrs, 'skipped_steps': state.skipped - skipped_before, 'images_per_s': sums[4] / dt,
        'epoch_time_s': dt,
    }


def _set_lr(optimizer: torch.optim.Optimizer, state: StepState, update: int, n_updates: int,
            opts: StepOptions) -> None:
    """The learning rate of every group for optimizer update `update` (0-based over the run)."""
    if state.scheduler is not None:
        state.scheduler.step_update(update)
        return
    factor = lr_factor(update, n_updates * opts.epochs, opts.warmup_steps, opts.sched, opts.min_lr_ratio)
    for g in optimizer.param_groups:
        g['lr'] = g['initial_lr'] * factor


def finish_update(model: nn.Module, params: list, optimizer: torch.optim.Optimizer, scaler: Optional[Any],
                   finite: torch.Tensor, opts: StepOptions, state: StepState, epoch: int, update: int,
                   info: DistInfo) -> None:
    """Clip, check and apply the accumulated gradient, or skip the update when it is not finite.

    Under DDP the decision is taken over all ranks (one all-reduce of two flags): a rank whose own loss is not finite
    makes every rank skip and count, so that the EMA, the skip count and the divergence stop stay in step.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    # the gradient norm (also without clipping: one fused reduction) tells whether every gradient is finite
    norm = nn.utils.clip_grad_norm_(params, opts.grad_clip if opts.grad_clip is not None else float('inf'))
    flags = all_ranks_true(torch.stack([finite.reshape(()), torch.isfinite(norm).reshape(())]), info)
    ok_loss, ok_grad = flags.tolist()  # the one host sync of an update
    ok_grad = ok_grad and ok_loss
    if ok_loss and (ok_grad or scaler is not None):  # fp16: GradScaler skips an overflowing gradient itself
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        state.skipped_in_a_row = 0
        if state.ema is not None:
            state.ema.update(model, step=state.updates)
    else:
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # the scale reacts to the non-finite gradient as after any fp16 overflow
        state.skipped += 1
        state.skipped_in_a_row += 1
        if state.skipped_in_a_row > opts.max_nonfinite_steps:
            raise TrainingDiverged(epoch + 1, update + 1, state.skipped_in_a_row,
                                   'loss' if not ok_loss else 'gradient')
    state.updates += 1


TTA_MODES = ('none', 'flip', 'flip-crops')
# the confusion matrix is kept up to this many classes (K x K counts); above, per-class accuracy only
MAX_CONFUSION_CLASSES = 2048


def tta_views(x: torch.Tensor, tta: str = 'none', crop: float = 0.875) -> list:
    """The views of an evaluation batch that test-time augmentation averages over.

    'none': the batch. 'flip': it and its horizontal flip. 'flip-crops': those two, and the four corner crops of
    `crop` times its side, resized back to its size (bilinear), with their flips: 10 views.
    """
    if tta not in TTA_MODES:
        raise ValueError(f'tta must be one of {TTA_MODES}, got {tta!r}')
    views = [x]
    if tta == 'flip-crops':
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
        for top, left in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)):
            part = x[..., top:top + ch, left:left + cw]
            views.append(F.interpolate(part.float(), size=(h, w), mode='bilinear', align_corners=False).to(x.dtype))
    if tta != 'none':
        views += [v.flip(-1) for v in views]
    return views


@torch.no_grad()
def evaluate_model(
        model: nn.Module,
        loader: Any,
        device: torch.device,
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        info: Optional[DistInfo] = None,
        progress: bool = False,
        desc: str = 'eval',
        tta: str = 'none',
) -> Dict[str, Any]:
    """Top-1, top-5, mean cross-entropy, per-class accuracy and the confusion matrix of `model` over `loader`, summed
    over DDP ranks.

    Args:
        tta: Test-time augmentation: 'none', 'flip' or 'flip-crops' (`tta_views`); the softmax is averaged over the
            views and the loss is the cross-entropy of that average.

    Returns:
        {'top1', 'top5', 'loss', 'count', 'tta', 'mean_per_class_top1' (the mean over the classes present),
        'per_class_top1' (None for a class without images), 'per_class_count', 'confusion' (rows: true class,
        columns: predicted; None above `MAX_CONFUSION_CLASSES` classes)}; top-5 is top-k with k = min(5, classes).
    """
    if tta not in TTA_MODES:
        raise ValueError(f'tta must be one of {TTA_MODES}, got {tta!r}')
    info = info or DistInfo(device=device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    confusion = per_class = None
    try:
        for x, y in progress_bar(loader, desc=desc, disable=not progress):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if tta == 'none':
                with autocast(device, amp_dtype):
                    logits = model(x)
                scores = logits.float()
                loss = F.cross_entropy(scores, y, reduction='sum')
            else:
                views = tta_views(x, tta)
                probs = None
                for view in views:
                    with autocast(device, amp_dtype):
                        p = model(view).float().softmax(1)
                    probs = p if probs is None else probs + p
                scores = probs / len(views)
                loss = F.nll_loss(scores.clamp_min(1e-12).log(), y, reduction='sum')
            k = min(5, scores.shape[1])
            top = scores.topk(k, dim=1).indices
            hit = top == y[:, None]
            sums += torch.stack([
                loss.double(), hit[:, 0].sum().double(),
                hit.any(1).sum().double(), torch.tensor(float(y.numel()), dtype=torch.float64, device=device)])
            n_cls = scores.shape[1]
            if n_cls <= MAX_CONFUSION_CLASSES:
                counts = torch.bincount(y * n_cls + top[:, 0], minlength=n_cls * n_cls).view(n_cls, n_cls)
                confusion = counts if confusion is None else confusion + counts
            else:
                counts = torch.stack([torch.bincount(y, minlength=n_cls),
                                      torch.bincount(y[hit[:, 0]], minlength=n_cls)])
                per_class = counts if per_class is None else per_class + counts
    finally:
        model.train(was_training)
    sums = all_reduce_sum(sums, info).tolist()
    n = max(sums[3], 1.0)
    res: Dict[str, Any] = {'top1': sums[1] / n, 'top5': sums[2] / n, 'loss': sums[0] / n, 'count': int(sums[3]),
                           'tta': tta}
    if confusion is not None:
        confusion = all_reduce_sum(confusion, info).cpu()
        count, correct = confusion.sum(1), confusion.diagonal()
        res['confusion'] = confusion.tolist()
    elif per_class is not None:
        count, correct = all_reduce_sum(per_class, info).cpu()
        res['confusion'] = None
    else:  # an empty loader
        return {**res, 'mean_per_class_top1': None, 'per_class_top1': [], 'per_class_count': [], 'confusion': None}
    acc = [c / t if t else None for c, t in zip(correct.tolist(), count.tolist())]
    present = [a for a in acc if a is not None]
    res.update(mean_per_class_top1=sum(present) / len(present) if present else None, per_class_top1=acc,
               per_class_count=count.tolist())
    return res

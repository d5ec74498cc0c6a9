"""One training epoch and one evaluation pass, for GGAM models and plain timm models, alone or under DDP.

A GGAM step is one forward (`forward_ggam`: logits, S and the closed-form Grad-CAM beta) and one backward of
`GGAMLoss`; a plain step is cross-entropy on `model(x)`. Metrics are summed on the device and reduced over ranks
once per epoch (the progress bar reads them every 10 steps).
"""
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loader import derive_seed
from .distributed import DistInfo, all_reduce_sum
from .progress import progress as progress_bar

__all__ = ['AMP_DTYPE_ALIASES', 'StepOptions', 'TrainForward', 'amp_dtype_for', 'autocast', 'evaluate_model',
           'lr_factor', 'normalize_amp_dtype', 'train_one_epoch']

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
        cam_class: 'pred' (Grad-CAM of the predicted class) or 'label'.
        label_smoothing: Of the plain model's cross-entropy (the GGAM loss has its own).
        grad_clip: Gradient norm clip, or None.
        channels_last: Move inputs to channels-last.
        amp_dtype: Autocast dtype, or None.
        seed: Run seed (dropout and drop-path are seeded from (seed, epoch, rank)).
        epochs: Total epochs (for the schedule and the bar).
        sched: 'cosine' or 'none'.
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Final cosine factor.
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
) -> Dict[str, Any]:
    """Train one epoch; returns its metrics row (train loss / CE / GGAM term / top-1, learning rates, speed).

    Args:
        fwd: `TrainForward(model)`, possibly wrapped in DDP.
        model: The unwrapped model (gradient clipping).
        loss_fn: `GGAMLoss` (used by GGAM models).
        optimizer: Its param groups carry `initial_lr` (the base lr the schedule multiplies) and a `name`.
        scaler: A `torch.amp.GradScaler` for float16, else None.
        loader: Training batches; its sampler has `set_epoch`.
        epoch: 0-based epoch.
        opts: Step options.
        info: Process placement.
        show: Show a progress bar.
        label: Prefix of the bar.
    """
    device = info.device
    steps = len(loader)
    fwd.train()
    sampler = getattr(loader, 'sampler', None)
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)
    # dropout / drop-path draw from the global RNG: make it a function of (seed, epoch, rank)
    torch.manual_seed(derive_seed(opts.seed, epoch, info.rank, 0xD0))
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, ce, ggam (each x n), correct, n
    t0 = time.perf_counter()
    bar = progress_bar(loader, desc=f'{label} epoch {epoch + 1}/{opts.epochs}'.strip(), disable=not show)
    for i, (x, y) in enumerate(bar):
        factor = lr_factor(epoch * steps + i, steps * opts.epochs, opts.warmup_steps, opts.sched, opts.min_lr_ratio)
        for g in optimizer.param_groups:
            g['lr'] = g['initial_lr'] * factor
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, opts.amp_dtype):
            out = fwd(x, y if opts.cam_class == 'label' else None) if opts.ggam else fwd(x)
        if opts.ggam:
            logits = out.logits
            loss, ce, ggam = loss_fn.terms(out, y)
        else:
            logits = out
            ce = F.cross_entropy(logits.float(), y, label_smoothing=opts.label_smoothing)
            loss, ggam = ce, torch.zeros((), device=device)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if opts.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if opts.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            optimizer.step()
        with torch.no_grad():
            n = y.shape[0]
            sums += torch.stack([loss.detach().double() * n, ce.detach().double() * n, ggam.detach().double() * n,
                                 (logits.detach().argmax(1) == y).sum().double(),
                                 torch.tensor(float(n), dtype=torch.float64, device=device)])
        if show and (i % 10 == 0 or i + 1 == steps):
            s = sums.tolist()
            bar.set_postfix(loss=f'{s[0] / s[4]:.3f}', acc=f'{100 * s[3] / s[4]:.1f}%', refresh=False)
    bar.close()
    sums = all_reduce_sum(sums, info).tolist()
    dt = time.perf_counter() - t0
    n = max(sums[4], 1.0)
    lrs = {g.get('name'): g['lr'] for g in optimizer.param_groups}
    return {
        'epoch': epoch + 1, 'train_loss': sums[0] / n, 'train_ce': sums[1] / n,
        'train_ggam': sums[2] / n if opts.ggam else None, 'train_top1': sums[3] / n,
        'lr_backbone': lrs.get('backbone'), 'lr_head': lrs.get('head'), 'images_per_s': sums[4] / dt,
        'epoch_time_s': dt,
    }


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
) -> Dict[str, float]:
    """Top-1, top-5 and mean cross-entropy of `model` over `loader`, summed over DDP ranks.

    Returns:
        {'top1', 'top5', 'loss', 'count'}; top-5 is top-k with k = min(5, classes).
    """
    info = info or DistInfo(device=device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    try:
        for x, y in progress_bar(loader, desc=desc, disable=not progress):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                logits = model(x)
            logits = logits.float()
            k = min(5, logits.shape[1])
            hit = logits.topk(k, dim=1).indices == y[:, None]
            sums += torch.stack([
                F.cross_entropy(logits, y, reduction='sum').double(), hit[:, 0].sum().double(),
                hit.any(1).sum().double(), torch.tensor(float(y.numel()), dtype=torch.float64, device=device)])
    finally:
        model.train(was_training)
    sums = all_reduce_sum(sums, info).tolist()
    n = max(sums[3], 1.0)
    return {'top1': sums[1] / n, 'top5': sums[2] / n, 'loss': sums[0] / n, 'count': int(sums[3])}

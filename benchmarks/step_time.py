"""Training-step time and peak memory of GGAM against plain fine-tuning and the authors' two-backward step.

Four ways to train the same timm backbone, measured in the same run on the same inputs:

- ``plain``: `timm.create_model(name, num_classes=K)` with cross-entropy, the baseline of every ratio.
- ``ggam``: `wrap_timm_model(name, num_classes=K)`, `forward_ggam` and `GGAMLoss`; beta in closed form, so the step
  is one forward and one backward. On CUDA (with Triton) the head runs the fused kernels (`GGAMHead(fused='auto')`,
  `ggam_layers.kernels`); `--force-fused` makes it run them elsewhere too (the CPU under TRITON_INTERPRET=1).
- ``ggam_unfused``: the same with the head's PyTorch path (`fused=False`): what ``ggam`` was before the fused
  kernels. Timed by default only where the two differ (CUDA, or `--force-fused`).
- ``ggam_autograd``: the same with `closed_form=False`: beta by `torch.autograd.grad` on the head only.
- ``authors``: the step of the authors' cars_sp_CAM.py (PRIS-CV/CAM-Guided-Attention) on the same GGAM model: a
  forward hook registers a tensor hook on the attention output D that saves its gradient, `optimizer.zero_grad()`,
  `max_logit.backward(retain_graph=True)` through the whole model, beta = softmax(mean of the saved gradient),
  loss = CE + `F.kl_div(beta.log(), S, reduction='sum')`, `loss.backward()`, `optimizer.step()`. The max-logit
  gradient stays in every parameter's `.grad` and is applied by the step (measured by the gradient check below).
  Its hooks need the attended map D, so its head always runs the PyTorch path.

Every step is `zero_grad`, forward, loss, backward, SGD step (momentum 0.9). Times are medians over interleaved
rounds (one step of every configuration per round, so a load change on a shared machine hits all of them alike);
min, max and IQR are kept, and on the CPU the process CPU time too. Peak memory: on CUDA,
`torch.cuda.max_memory_allocated` during the measured steps minus what was allocated before building the model; on
the CPU, peak resident set size (VmHWM, reset through /proc/self/clear_refs after warm-up) during the measured steps
minus the RSS before building the model, each configuration in a fresh interpreter (`--memory-probe`, the process
isolation of this script alone: see `benchmarks/common.py`) where glibc serves every allocation of 64 KiB or more by
mmap (so a freed tensor leaves the resident set at once and the peak is that of live memory, not
of heap fragmentation). Also measured: inference (`model(x)`, eval, no_grad) of GGAM against the plain backbone, the
GGAM head + loss alone (fused and unfused, eager against torch.compile; with the fused kernels also each kernel
alone, with the bytes of A it must move and the bandwidth that achieves), the gradient each method leaves in `.grad`
against the exact gradient of its loss, and on CUDA whether the GGAM loss makes any host sync.

Examples::

    python -m benchmarks.step_time --threads 2      # CPU: resnet50 @ 448 b2 and resnet18 @ 224 b2
    python -m benchmarks.step_time --quick          # CI smoke run, < 60 s
    python -m benchmarks.step_time --device cuda --amp bf16 --sync-check  # see gpu_check.sh
"""
import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.common import REPO_ROOT, command_line, machine_info, markdown_table, write_results
from ggam_layers import GGAMHead, GGAMLoss, wrap_timm_model
from ggam_layers.kernels import load_ops, triton_available

__all__ = [
    'METHODS', 'Setting', 'TrainStep', 'AuthorsStep', 'build_step', 'time_steps', 'gradient_check', 'head_benchmark',
    'host_sync_check', 'kernel_benchmark', 'main',
]

METHODS = ('plain', 'ggam', 'ggam_unfused', 'ggam_autograd', 'authors')
COMPILABLE = ('plain', 'ggam', 'ggam_unfused', 'ggam_autograd')
# the head's `fused` for the 'ggam' method: 'auto' (fused on CUDA), or True with --force-fused (interpreter dry runs)
FUSED = {'ggam': 'auto'}
AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@dataclass(frozen=True)
class Setting:
    """A backbone at an input size and batch size."""
    model: str
    img_size: int
    batch: int

    @classmethod
    def parse(cls, text: str) -> 'Setting':
        """'resnet50:448:2' -> Setting('resnet50', 448, 2)."""
        try:
            name, img, batch = text.split(':')
            return cls(name, int(img), int(batch))
        except ValueError:
            raise ValueError(f'a setting is NAME:IMG_SIZE:BATCH such as resnet50:448:2, got {text!r}') from None

    def __str__(self) -> str:
        return f'{self.model}:{self.img_size}:{self.batch}'


def _autocast(device: str, amp: str):
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type=device, dtype=dtype) if dtype is not None else nullcontext()


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def build_model(method: str, setting: Setting, num_classes: int, device: str, channels_last: bool) -> nn.Module:
    """The plain timm model or the GGAM-wrapped one, random weights, in train mode."""
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    if method == 'plain':
        model = timm.create_model(setting.model, num_classes=num_classes, pretrained=False)
    else:
        model = wrap_timm_model(setting.model, num_classes=num_classes, closed_form=method != 'ggam_autograd')
        # the authors' hooks need D, so their head takes the PyTorch path; so does the 'unfused' baseline
        model.head.fused = FUSED['ggam'] if method == 'ggam' else 'auto' if method == 'ggam_autograd' else False
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model.train()


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)


class TrainStep:
    """One forward and one backward: `zero_grad`, loss (under autocast), `loss.backward()`, `optimizer.step()`."""

    def __init__(
            self, model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, device: str, amp: str,
    ):
        self.model, self.loss_fn, self.optimizer, self.device, self.amp = model, loss_fn, optimizer, device, amp

    def grads(self, x: torch.Tensor, y: torch.Tensor, reference: bool = False) -> Tuple[torch.Tensor, Any]:
        """Everything but the optimizer step; with `reference`, also the exact gradient of the loss (autograd.grad)."""
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device, self.amp):
            loss = self.loss_fn(x, y)
        return self._backward(loss, reference)

    def _backward(self, loss: torch.Tensor, reference: bool) -> Tuple[torch.Tensor, Any]:
        """`loss.backward()`; with `reference`, first the exact gradient of the loss (autograd.grad)."""
        ref = None
        if reference:
            params = [p for p in self.model.parameters() if p.requires_grad]
            ref = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        loss.backward()
        return loss.detach(), ref

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss, _ = self.grads(x, y)
        self.optimizer.step()
        return loss


class AuthorsStep(TrainStep):
    """The training step of the authors' cars_sp_CAM.py, on a GGAM model (see the module docstring).

    As in their `Spatial_SEModule`, a forward hook stores S (softmax of the channel-attention logits) and registers a
    tensor hook on the attention output D that appends its gradient to a list.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: str, amp: str):
        self.model, self.optimizer, self.device, self.amp = model, optimizer, device, amp
        self.gradients: List[torch.Tensor] = []
        self.sig: Optional[torch.Tensor] = None
        attn = model.head.attn
        self._handles = [attn.register_forward_hook(self._hook_output), attn.fc2.register_forward_hook(self._hook_sig)]

    def _hook_output(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.gradients = []
        if output.requires_grad:
            output.register_hook(self.gradients.append)

    def _hook_sig(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.sig = (output / self.model.head.attn.temperature).softmax(dim=1)

    def grads(self, x: torch.Tensor, y: torch.Tensor, reference: bool = False) -> Tuple[torch.Tensor, Any]:
        """Their step without `optimizer.step()`; with `reference`, also the exact gradient of their loss."""
        with _autocast(self.device, self.amp):
            outputs = self.model(x)
        one_hot = outputs.max(1, keepdim=True)[0]
        sig = self.sig
        self.optimizer.zero_grad(set_to_none=True)
        one_hot.backward(torch.ones_like(one_hot), retain_graph=True)
        grad_val = self.gradients[-1].detach()
        weights = grad_val.float().mean(dim=(2, 3)).softmax(dim=1)
        kl_loss = F.kl_div(weights.log(), sig.float(), reduction='sum')
        loss = F.cross_entropy(outputs.float(), y) + kl_loss
        return self._backward(loss, reference)

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()


def build_step(
        method: str,
        setting: Setting,
        num_classes: int = 200,
        device: str = 'cpu',
        amp: str = 'none',
        channels_last: bool = False,
        compiled: bool = False,
        lam: float = 1.0,
) -> Tuple[Callable, nn.Module]:
    """A training step of `method` on a freshly built model.

    Args:
        method: One of `METHODS`.
        setting: Backbone, input size, batch size.
        num_classes: K.
        device: 'cpu' or 'cuda'.
        amp: 'none', 'bf16' or 'fp16' autocast.
        channels_last: Model (and the caller's inputs) in channels_last.
        compiled: `torch.compile(fullgraph=True)` the forward and loss (the backward is compiled with it).
        lam: lambda of `GGAMLoss`.

    Returns:
        The step (call it with images and targets) and the model.
    """
    model = build_model(method, setting, num_classes, device, channels_last)
    opt = _optimizer(model)
    if method == 'authors':
        if compiled:
            raise ValueError("the authors' step (hooks, retain_graph, two backwards) is not compiled")
        return AuthorsStep(model, opt, device, amp), model
    if method == 'plain':
        def loss_fn(x, y):
            return F.cross_entropy(model(x).float(), y)
    else:
        crit = GGAMLoss(lam=lam)

        def loss_fn(x, y):
            return crit(model.forward_ggam(x), y)
    if compiled:
        loss_fn = torch.compile(loss_fn, fullgraph=True)
    return TrainStep(model, loss_fn, opt, device, amp), model


def _inputs(setting: Setting, num_classes: int, device: str, channels_last: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(setting.batch, 3, setting.img_size, setting.img_size, generator=g).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (setting.batch,), generator=g).to(device)
    return x, y


def _stats(times: Sequence[float]) -> Dict[str, float]:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {'median_s': statistics.median(times), 'min_s': min(times), 'max_s': max(times), 'iqr_s': q[2] - q[0],
            'repeats': len(times)}


def time_steps(
        steps: Dict[str, Callable[[], Any]], warmup: int, repeats: int, device: str, log: Callable = print,
) -> Dict[str, Dict[str, float]]:
    """Warm each step up, then time `repeats` interleaved rounds (one call of every step per round).

    Returns:
        Per key: wall-clock median, min, max, IQR (seconds), repeats, the warm-up time (compilation included) and,
        on the CPU, the median process CPU time (all threads; robust to other processes taking the cores).
    """
    warm = {}
    for key, fn in steps.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        _sync(device)
        warm[key] = time.perf_counter() - t0
        log(f'  warm-up {key}: {warm[key]:.1f} s')
    times: Dict[str, List[float]] = {k: [] for k in steps}
    cpu: Dict[str, List[float]] = {k: [] for k in steps}
    for r in range(repeats):
        for key, fn in steps.items():
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
        log(f'  round {r + 1}/{repeats}: ' + ', '.join(
            f'{k} {v[-1]:.3f} (cpu {cpu[k][-1]:.3f})' for k, v in times.items()))
    out = {}
    for k, v in times.items():
        out[k] = dict(_stats(v), warmup_s=warm[k])
        if device == 'cpu':
            c = _stats(cpu[k])
            out[k].update(cpu_median_s=c['median_s'], cpu_iqr_s=c['iqr_s'])
    return out


# --- memory ------------------------------------------------------------------------------------------------------
def _rss_kb(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so that RSS tracks live memory."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _mmap_large_allocations(threshold: int = 1 << 16) -> bool:
    """glibc: serve every allocation of `threshold` bytes or more by mmap and unmap it when freed.

    Freed tensors then leave the resident set at once instead of staying in the heap, so the peak RSS measures the
    peak of live memory rather than the allocator's fragmentation (which varies by 10% between runs otherwise).
    """
    try:
        return bool(ctypes.CDLL('libc.so.6').mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def measure_memory(
        method: str, setting: Setting, num_classes: int, device: str, amp: str, channels_last: bool, compiled: bool,
        warmup: int = 1, steps: int = 1,
) -> Dict[str, Any]:
    """Peak memory of the training step, in this process (see the module docstring for what is counted).

    Returns:
        mem_mb: peak during the measured steps minus the memory before the model was built (model, gradients,
        optimizer state, activations); step_mem_mb: the same minus the memory after building; peak_mb: the peak
        itself (on the CPU the whole process's resident set, interpreter and libraries included); model_mb.
    """
    # build and drop a tiny model of the same kind first, so that one-time lazy imports (torch.func for the GGAM
    # wrapper's meta probe, ...) are not counted as the model's memory
    build_model(method, Setting('test_resnet', 64, 1), num_classes, device, channels_last)
    gc.collect()
    exact = device == 'cpu' and _mmap_large_allocations()
    _malloc_trim()
    if device == 'cuda':
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kb('VmRSS')
    step, model = build_step(method, setting, num_classes, device, amp, channels_last, compiled)
    x, y = _inputs(setting, num_classes, device, channels_last)
    _sync(device)
    gc.collect()
    _malloc_trim()
    built = torch.cuda.memory_allocated() if device == 'cuda' else _rss_kb('VmRSS')
    for _ in range(warmup):
        step(x, y)
    _sync(device)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        resettable = True
    else:
        gc.collect()
        _malloc_trim()
        resettable = _reset_peak_rss()
    for _ in range(steps):
        step(x, y)
    _sync(device)
    if device == 'cuda':
        peak = torch.cuda.max_memory_allocated()
        mib = 2 ** 20
        out = {'mem_mb': (peak - base) / mib, 'peak_mb': peak / mib, 'model_mb': (built - base) / mib,
               'step_mem_mb': (peak - built) / mib, 'memory_method': 'torch.cuda.max_memory_allocated'}
    else:
        peak = _rss_kb('VmHWM') if resettable else None
        if peak is None:  # no /proc: lifetime peak, warm-up and compilation included
            import resource
            peak, resettable = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False
        how = ('VmHWM after reset' if resettable else 'ru_maxrss (lifetime)') + (
            ', allocations >= 64 KiB mmapped' if exact else '')
        out = {'mem_mb': (peak - base) / 1024, 'peak_mb': peak / 1024, 'model_mb': (built - base) / 1024,
               'step_mem_mb': (peak - built) / 1024, 'memory_method': how}
    del step, model
    gc.collect()
    return out


def _memory_subprocess(cfg: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """`measure_memory` in a fresh interpreter (`python -m benchmarks.step_time --memory-probe`, from the repository
    root), so that nothing of this process's heap or allocator state is inherited."""
    cmd = [sys.executable, '-m', 'benchmarks.step_time', '--memory-probe', json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {'memory_error': f'timed out after {timeout:.0f} s'}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode != 0 or not lines:
        return {'memory_error': (proc.stderr.strip().splitlines() or ['no output'])[-1]}
    return json.loads(lines[-1])


# --- the other measurements --------------------------------------------------------------------------------------
def _flat(tensors: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for t in tensors if t is not None])


def gradient_check(setting: Setting, num_classes: int, device: str, amp: str = 'none') -> List[Dict[str, Any]]:
    """For each method, how far the `.grad` left before `optimizer.step()` is from the exact gradient of its loss.

    Returns:
        Rows with the relative norm difference ||grad - dloss/dtheta|| / ||dloss/dtheta|| over the parameters
        whose exact gradient is not zero (at timm's random init the last BN of each residual block is zero, so the
        rest of that branch gets no gradient at all), and how many of those have a `.grad` off their exact gradient
        (relative difference above 1e-6).
    """
    rows = []
    for method in ('plain', 'ggam') + (('ggam_unfused',) if fused_differs(device) else ()) + (
            'ggam_autograd', 'authors'):
        torch.manual_seed(0)
        step, model = build_step(method, setting, num_classes, device, amp)
        x, y = _inputs(setting, num_classes, device, False, seed=1)
        loss, ref = step.grads(x, y, reference=True)
        params = [p for p in model.parameters() if p.requires_grad]
        pairs = [(p.grad, r) for p, r in zip(params, ref) if r is not None and bool(r.any())]
        got, want = _flat([g for g, _ in pairs]), _flat([r for _, r in pairs])
        changed = sum(bool((g - r).norm() > 1e-6 * r.norm()) for g, r in pairs)
        rows.append({'method': method, 'loss': float(loss), 'grad_rel_diff': float((got - want).norm() / want.norm()),
                     'params_off': f'{changed}/{len(pairs)}'})
        if isinstance(step, AuthorsStep):
            step.remove()
    return rows


def _head_features(setting: Any, device: torch.device, amp: Optional[str], channels_last: bool):
    """Random ReLU features of the backbone's last stage for `setting` (shape, autocast dtype, memory format), and
    the generator that drew them (seeded 0)."""
    backbone = timm.create_model(setting.model, num_classes=0, pretrained=False)
    c, red = backbone.num_features, backbone.feature_info[-1]['reduction']
    del backbone
    hw = setting.img_size // red
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(setting.batch, c, hw, hw, generator=g).relu().to(device, AMP_DTYPES[amp] or torch.float32)
    if channels_last:
        feats = feats.contiguous(memory_format=torch.channels_last)
    return feats, g


def head_benchmark(
        setting: Setting, num_classes: int, device: str, amp: str, warmup: int, repeats: int,
        compiled: bool, log: Callable = print, channels_last: bool = False,
) -> List[Dict[str, Any]]:
    """Forward + backward of the head and loss alone on features A (the backbone's output), eager and compiled.

    The plain head (global average pool, linear, CE) against the GGAM head + `GGAMLoss` (fused where the device has
    the kernels, and unfused), on features of the shape, dtype (the autocast dtype, as the backbone gives them) and
    memory format the backbone gives for the setting.
    """
    feats, g = _head_features(setting, device, amp, channels_last)
    c, hw, dtype = feats.shape[1], feats.shape[-1], feats.dtype
    feats.requires_grad_(True)
    y = torch.randint(0, num_classes, (setting.batch,), generator=g).to(device)
    torch.manual_seed(0)
    plain_fc = nn.Linear(c, num_classes).to(device)
    head = GGAMHead(c, num_classes, fused=FUSED['ggam']).to(device)
    unfused = GGAMHead(c, num_classes, fused=False).to(device)
    unfused.load_state_dict(head.state_dict())
    crit = GGAMLoss()

    def plain_fn(a, t):
        return F.cross_entropy(plain_fc(a.mean((2, 3))).float(), t)

    def ggam_fn(a, t):
        return crit(head.forward_ggam(a), t)

    def unfused_fn(a, t):
        return crit(unfused.forward_ggam(a), t)

    fns = {'plain_head': plain_fn, 'ggam_head': ggam_fn}
    if fused_differs(device):
        fns['ggam_head_unfused'] = unfused_fn
    if compiled:
        for key, fn in list(fns.items()):
            fns[key + '_compiled'] = torch.compile(fn, fullgraph=True)

    def run(fn):
        def go():
            feats.grad = None
            with _autocast(device, amp):
                loss = fn(feats, y)
            loss.backward()
        return go

    res = time_steps({k: run(fn) for k, fn in fns.items()}, warmup, repeats, device, log)
    a_bytes = feats.numel() * feats.element_size()
    rows = []
    for k, v in res.items():
        row = {'part': k, 'features': f'{setting.batch}x{c}x{hw}x{hw} {str(dtype)[6:]}', 'uses_fused': False, **v}
        if k.startswith('ggam_head') and 'unfused' not in k:
            row['uses_fused'] = head.uses_fused(feats)
        if row['uses_fused']:  # 5 reads forward (3 attention, 2 beta), 2 reads + 1 write backward: ops docstring
            row['a_passes'] = 8
            row['bytes_moved_mb'] = 8 * a_bytes / 1e6
            row['achieved_gb_s'] = 8 * a_bytes / v['median_s'] / 1e9
        rows.append(row)
    return rows


def fused_differs(device: str) -> bool:
    """Whether 'ggam' (fused='auto' or forced) and 'ggam_unfused' run different head code on `device`."""
    return FUSED['ggam'] is True or (device == 'cuda' and triton_available())


def kernel_benchmark(
        setting: Setting, num_classes: int, device: str, amp: str, channels_last: bool, warmup: int, repeats: int,
        log: Callable = print,
) -> List[Dict[str, Any]]:
    """Each fused kernel alone, and the fused attention op forward and backward, on the head's features.

    bytes_moved counts the bytes of A each must read or write (passes x B C H W x element size; the B x C and B x N
    vectors are under 1% of it); achieved_gb_s = bytes_moved / median time: against the GPU's peak bandwidth
    (about 4.8 TB/s on an H200) it says how close to memory speed each kernel runs.
    """
    ops = load_ops()
    a, g = _head_features(setting, device, amp, channels_last)
    c, hw, dtype = a.shape[1], a.shape[-1], a.dtype
    torch.manual_seed(0)
    head = GGAMHead(c, num_classes, fused=True).to(device)
    attn = head.attn
    a3 = a.flatten(2)
    b, n = setting.batch, hw * hw
    v = torch.rand(b, c, device=device)
    q = torch.rand(b, n, device=device)
    weights = (attn.fc1.weight, attn.fc1.bias, attn.fc2.weight, attn.fc2.bias, 1.0, 'softmax', True, 1.0, 1e-6)
    a_grad = a.detach().clone().requires_grad_(True)

    def attend_fwd_bwd():
        pooled, s, t, *_ = ops.attend(a_grad, *weights)
        torch.autograd.backward([pooled, s], [v, v])

    parts = {
        'gap: position_contract(A, 1/N)': (lambda: ops.position_contract(a3, None, 1.0 / n), 1),
        'u or g: channel_contract(A, v)': (lambda: ops.channel_contract(a3, v, 1.0), 1),
        'pooled or dS: position_contract(A, q)': (lambda: ops.position_contract(a3, q, 1.0), 1),
        'dA: input_grad (write)': (lambda: ops.input_grad(a, v, q, v, q, v), 1),
        'attend forward (op, with the MLP)': (lambda: ops.attend(a, *weights), 3),
        'attend forward + backward': (attend_fwd_bwd, 6),
    }
    res = time_steps({k: fn for k, (fn, _) in parts.items()}, warmup, repeats, device, log)
    a_bytes = a.numel() * a.element_size()
    layout = 'channels_last' if channels_last else 'NCHW'
    return [{'kernel': k, 'features': f'{b}x{c}x{hw}x{hw} {str(dtype)[6:]} {layout}', 'a_passes': parts[k][1],
             'bytes_moved_mb': parts[k][1] * a_bytes / 1e6, 'median_s': t['median_s'], 'iqr_s': t['iqr_s'],
             'achieved_gb_s': parts[k][1] * a_bytes / t['median_s'] / 1e9} for k, t in res.items()]


def host_sync_check(setting: Setting, num_classes: int, amp: str, channels_last: bool) -> Dict[str, Any]:
    """On CUDA: run GGAM parts under `torch.cuda.set_sync_debug_mode('error')`; any host sync raises.

    Scopes: 'loss' (head `forward_ggam` + `GGAMLoss` + backward through the head, features computed outside),
    'step' (the whole training step: forward, loss, backward, optimizer step), and 'plain_step' for reference.
    """
    if not torch.cuda.is_available():
        return {'skipped': 'no CUDA device'}
    out: Dict[str, Any] = {}
    for scope in ('loss', 'step', 'plain_step'):
        method = 'plain' if scope == 'plain_step' else 'ggam'
        step, model = build_step(method, setting, num_classes, 'cuda', amp, channels_last)
        x, y = _inputs(setting, num_classes, 'cuda', channels_last)
        step(x, y)  # warm-up outside the check (cuDNN autotuning, lazy init)
        torch.cuda.synchronize()
        crit = GGAMLoss()
        try:
            if scope == 'loss':
                with _autocast('cuda', amp):
                    feats = model.features_to_nchw(model.forward_features(x)).detach().requires_grad_(True)
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode('error')
                with _autocast('cuda', amp):
                    loss = crit(model.head.forward_ggam(feats), y)
                loss.backward()
            else:
                torch.cuda.set_sync_debug_mode('error')
                step(x, y)
            out[scope] = 'no host sync'
        except RuntimeError as e:
            out[scope] = f'host sync: {str(e).splitlines()[0]}'
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        del step, model
    return out


# --- driver -------------------------------------------------------------------------------------------------------
def _configs(methods: Sequence[str], compile_methods: Sequence[str]) -> List[Tuple[str, bool]]:
    cfgs = [(m, False) for m in methods]
    cfgs += [(m, True) for m in compile_methods if m in COMPILABLE]
    return cfgs


def _label(method: str, compiled: bool) -> str:
    return method + (' (compiled)' if compiled else '')


def _memory_row(method: str, compiled: bool, setting: Setting, args: argparse.Namespace, log: Callable = print):
    cfg = {'method': method, 'setting': str(setting), 'num_classes': args.num_classes, 'device': args.device,
           'amp': args.amp, 'channels_last': args.channels_last, 'compiled': compiled, 'threads': args.threads,
           'force_fused': FUSED['ggam'] is True}
    if args.memory == 'subprocess' and args.device == 'cpu':
        mem = _memory_subprocess(cfg, args.memory_timeout)
    else:
        mem = measure_memory(method, setting, args.num_classes, args.device, args.amp, args.channels_last, compiled)
        mem['memory_method'] += ' (in process)' if args.device == 'cpu' else ''
    log(f'  memory {_label(method, compiled)} @ {setting}: {mem}')
    return mem


def _memory_ratios(rows: List[Dict[str, Any]]) -> None:
    """Memory ratios against plain (compiled rows against plain compiled when present), per setting."""
    for row in rows:
        same = [r for r in rows if r['setting'] == row['setting']]
        base = next((r for r in same if r['method'] == _label('plain', row['method'].endswith('(compiled)'))),
                    None) or next((r for r in same if r['method'] == 'plain'), None)
        for key, ratio in (('mem_mb', 'mem_ratio'), ('step_mem_mb', 'step_mem_ratio'), ('peak_mb', 'peak_ratio')):
            if base and row.get(key) is not None and base.get(key):
                row[ratio] = row[key] / base[key]


def inference_rows(setting: Setting, args: argparse.Namespace, x: torch.Tensor, log: Callable = print) -> List[Dict]:
    """`model(x)` in eval mode under no_grad: the GGAM model against the plain timm model."""
    device, amp = args.device, args.amp
    fns = {}
    for method in ('plain', 'ggam') + (('ggam_unfused',) if fused_differs(device) else ()):
        torch.manual_seed(0)
        model = build_model(method, setting, args.num_classes, device, args.channels_last).eval()

        def infer(m=model):
            with torch.no_grad(), _autocast(device, amp):
                return m(x)
        fns[method] = infer
    res = time_steps(fns, args.warmup, args.repeats, device, log)
    rows = []
    for method, t in res.items():
        rows.append({'setting': str(setting), 'method': method, **t,
                     'ratio_vs_plain': t['median_s'] / res['plain']['median_s']})
        if 'cpu_median_s' in t:
            rows[-1]['cpu_ratio_vs_plain'] = t['cpu_median_s'] / res['plain']['cpu_median_s']
    del fns
    gc.collect()
    return rows


def run_setting(setting: Setting, args: argparse.Namespace, log: Callable = print) -> Dict[str, List[Dict]]:
    """Training, memory and inference measurements of one setting."""
    device, amp = args.device, args.amp
    log(f'== {setting} ({device}, amp {amp}, channels_last {args.channels_last})')
    x, y = _inputs(setting, args.num_classes, device, args.channels_last)
    cfgs = _configs(args.methods, args.compile_methods)
    steps, models = {}, []
    for method, compiled in cfgs:
        torch.manual_seed(0)
        step, model = build_step(method, setting, args.num_classes, device, amp, args.channels_last, compiled)
        steps[_label(method, compiled)] = (lambda s=step: s(x, y))
        models.append(model)
    timed = time_steps(steps, args.warmup, args.repeats, device, log)
    base = timed.get('plain', {}).get('median_s')
    train_rows = []
    for method, compiled in cfgs:
        t = timed[_label(method, compiled)]
        row = {'setting': str(setting), 'method': _label(method, compiled), **t}
        base_c = timed.get(_label('plain', compiled), {}).get('median_s', base)
        row['ratio_vs_plain'] = t['median_s'] / base if base else None
        row['ratio_vs_plain_same_mode'] = t['median_s'] / base_c if base_c else None
        if 'cpu_median_s' in t and 'plain' in timed:
            row['cpu_ratio_vs_plain'] = t['cpu_median_s'] / timed['plain']['cpu_median_s']
        train_rows.append(row)
    del steps, models
    gc.collect()
    _malloc_trim()

    if args.memory != 'off':
        for row, (method, compiled) in zip(train_rows, cfgs):
            row.update(_memory_row(method, compiled, setting, args, log))
        _memory_ratios(train_rows)

    infer_rows = inference_rows(setting, args, x, log) if args.inference else []
    return {'train': train_rows, 'inference': infer_rows}


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--settings', nargs='+', default=None,
                   help='NAME:IMG:BATCH; default resnet50:448:2 resnet18:224:2 on CPU, resnet50:448:32 on CUDA')
    p.add_argument('--methods', nargs='*', default=None, choices=METHODS,
                   help='training configurations to time (none: pass the flag alone, e.g. with --head); default all, '
                        'ggam_unfused only where it differs from ggam (CUDA or --force-fused)')
    p.add_argument('--compile-methods', nargs='*', default=['plain', 'ggam'], choices=COMPILABLE,
                   help='methods also timed under torch.compile(fullgraph=True) (none: pass the flag alone)')
    p.add_argument('--compile-settings', nargs='*', default=None,
                   help='settings where compiled configs run (default: all)')
    p.add_argument('--num-classes', type=int, default=200)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    p.add_argument('--amp', default='none', choices=tuple(AMP_DTYPES))
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--memory', default='subprocess', choices=('subprocess', 'inprocess', 'off'),
                   help='CPU peak memory per configuration in a fresh subprocess (CUDA is always in process)')
    p.add_argument('--memory-timeout', type=float, default=1800)
    p.add_argument('--update', nargs='+', default=None, choices=('memory', 'grad_check', 'head', 'inference'),
                   help='measure only these parts and merge them into an existing result file (same --name)')
    p.add_argument('--no-inference', dest='inference', action='store_false')
    p.add_argument('--no-grad-check', dest='grad_check', action='store_false')
    p.add_argument('--head', action='store_true', help='time the head + loss alone (eager; compiled as well when '
                   'the setting compiles anything, or with --head-compile)')
    p.add_argument('--head-compile', action='store_true', help='also time the compiled head + loss')
    p.add_argument('--force-fused', action='store_true',
                   help="GGAM heads use fused=True (the fused kernels everywhere; on a CPU set TRITON_INTERPRET=1): "
                        'a dry run of the fused path without a GPU')
    p.add_argument('--sync-check', action='store_true', help='CUDA: check for host syncs with set_sync_debug_mode')
    p.add_argument('--quick', action='store_true', help='CI smoke run: resnet18 @ 64 px, few repeats, no compile')
    p.add_argument('--name', default=None, help='result file stem (default step_time_<device>[_quick])')
    p.add_argument('--out-dir', default=str(Path(__file__).resolve().parent / 'results'))
    p.add_argument('--memory-probe', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    FUSED['ggam'] = True if args.force_fused else 'auto'
    if args.methods is None:
        args.methods = [m for m in METHODS if m != 'ggam_unfused' or fused_differs(args.device)]
    if args.quick:
        args.settings = args.settings or ['resnet18:64:2']
        args.warmup, args.repeats = 1, 3
        args.compile_methods = []
        args.memory = 'inprocess' if args.memory == 'subprocess' else args.memory
    if args.settings is None:
        args.settings = ['resnet50:448:32'] if args.device == 'cuda' else ['resnet50:448:2', 'resnet18:224:2']
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: no CUDA device is available')
    return args


def _memory_probe(cfg: Dict[str, Any]) -> None:
    if cfg.get('threads'):
        torch.set_num_threads(cfg['threads'])
    FUSED['ggam'] = True if cfg.get('force_fused') else 'auto'
    mem = measure_memory(cfg['method'], Setting.parse(cfg['setting']), cfg['num_classes'], cfg['device'],
                         cfg['amp'], cfg['channels_last'], cfg['compiled'])
    print(json.dumps(mem), flush=True)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = _parse(argv)
    if args.memory_probe:
        _memory_probe(json.loads(args.memory_probe))
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cuda':
        torch.backends.cudnn.benchmark = True
    name = args.name or f'step_time_{args.device}' + ('_quick' if args.quick else '')
    if args.update:
        paths = update_result(args, name)
        print('wrote', ', '.join(str(p) for p in paths))
        return {}
    t_start = time.perf_counter()
    settings = [Setting.parse(s) for s in args.settings]
    compile_settings = set(args.compile_settings) if args.compile_settings is not None else None
    train_rows, infer_rows, head_rows, grad_rows, kernel_rows = [], [], [], [], []
    sync = None

    def write() -> List[Path]:
        meta = {
            'machine': machine_info(),
            'command': command_line('step_time', argv),
            'device': args.device, 'amp': args.amp, 'channels_last': args.channels_last,
            'num_classes': args.num_classes, 'warmup': args.warmup, 'repeats': args.repeats, 'memory': args.memory,
            'optimizer': 'SGD momentum 0.9', 'total_s': round(time.perf_counter() - t_start, 1),
            'inference': infer_rows, 'head': head_rows, 'kernels': kernel_rows, 'grad_check': grad_rows,
            'host_sync': sync, 'ggam_head_fused': FUSED['ggam'],
        }
        return write_report(name, args.out_dir, meta, train_rows)

    if args.sync_check:  # first: on a GPU this is the result that must come back
        sync = host_sync_check(settings[0], args.num_classes, args.amp, args.channels_last)
        print('host sync check:', sync)
    for setting in settings:
        run_args = argparse.Namespace(**vars(args))
        if compile_settings is not None and str(setting) not in compile_settings:
            run_args.compile_methods = []
        res = run_setting(setting, run_args)
        train_rows += res['train']
        infer_rows += res['inference']
        write()
        if args.head:
            head_rows += [dict(r, setting=str(setting)) for r in head_benchmark(
                setting, args.num_classes, args.device, args.amp, args.warmup, args.repeats,
                compiled=args.head_compile or bool(run_args.compile_methods), channels_last=args.channels_last)]
            write()
            if fused_differs(args.device):
                kernel_rows += [dict(r, setting=str(setting)) for r in kernel_benchmark(
                    setting, args.num_classes, args.device, args.amp, args.channels_last, args.warmup, args.repeats)]
        write()  # keep what is done if a long run stops
    if args.grad_check:
        gsetting = settings[-1]
        grad_rows = [dict(r, setting=str(gsetting)) for r in gradient_check(gsetting, args.num_classes, args.device)]
        print('gradient check:', grad_rows)
    paths = write()
    print('wrote', ', '.join(str(p) for p in paths))
    return {'train': train_rows, 'inference': infer_rows, 'head': head_rows, 'grad_check': grad_rows, 'sync': sync}


def write_report(name: str, out_dir: str, meta: Dict[str, Any], train_rows: List[Dict[str, Any]]) -> List[Path]:
    """JSON and Markdown: the training table, then targets, inference, head, gradient check and host sync."""
    infer_rows, head_rows = meta.get('inference') or [], meta.get('head') or []
    grad_rows, sync = meta.get('grad_check') or [], meta.get('host_sync')
    meta = dict(meta, targets=targets(train_rows, infer_rows, head_rows, meta.get('device')))
    cols = ['setting', 'method', 'median_s', 'min_s', 'max_s', 'iqr_s', 'ratio_vs_plain', 'ratio_vs_plain_same_mode',
            'cpu_median_s', 'cpu_ratio_vs_plain', 'mem_mb', 'mem_ratio', 'step_mem_mb', 'step_mem_ratio', 'peak_mb',
            'peak_ratio']
    notes = [_table(meta['targets'], ['setting', 'target', 'value', 'limit', 'met'], 'Targets')]
    if infer_rows:
        notes.append(_table(infer_rows, ['setting', 'method', 'median_s', 'min_s', 'max_s', 'iqr_s', 'ratio_vs_plain',
                                         'cpu_median_s', 'cpu_ratio_vs_plain'],
                            'Inference, `model(x)` in eval mode under no_grad'))
    if head_rows:
        notes.append(_table(head_rows, ['setting', 'part', 'features', 'uses_fused', 'median_s', 'min_s', 'max_s',
                                        'iqr_s', 'cpu_median_s', 'a_passes', 'bytes_moved_mb', 'achieved_gb_s'],
                            'Head + loss alone, forward + backward (bytes moved: the passes over A of the fused path)'))
    kernel_rows = meta.get('kernels') or []
    if kernel_rows:
        notes.append(_table(kernel_rows, ['setting', 'kernel', 'features', 'a_passes', 'bytes_moved_mb', 'median_s',
                                          'iqr_s', 'achieved_gb_s'],
                            'Fused kernels alone (bytes moved: passes over A x its size; achieved = bytes / time)'))
    if grad_rows:
        notes.append(_table(grad_rows, ['setting', 'method', 'loss', 'grad_rel_diff', 'params_off'],
                            '`.grad` before the optimizer step against the exact gradient of the loss '
                            '(relative norm difference; params_off: parameter tensors whose `.grad` is off, of those '
                            'with a non-zero gradient)'))
    if sync is not None:
        notes.append('Host sync check (`torch.cuda.set_sync_debug_mode("error")`): ' + json.dumps(sync))
    return write_results(name, train_rows, meta, out_dir, columns=[c for c in cols if any(
        c in r for r in train_rows)], notes=notes)


def update_result(args: argparse.Namespace, name: str) -> List[Path]:
    """Measure only `args.update` (memory, grad_check, head, inference), merge it into an existing result."""
    path = Path(args.out_dir) / f'{name}.json'
    if path.exists():
        with open(path) as f:
            data = json.load(f)
        meta, rows = data['meta'], data['rows']
    else:
        meta, rows = {'machine': machine_info(), 'device': args.device, 'amp': args.amp}, []
    if 'memory' in args.update:
        compile_settings = set(args.compile_settings) if args.compile_settings is not None else None
        for text in args.settings:
            setting = Setting.parse(text)
            compile_methods = args.compile_methods if compile_settings is None or text in compile_settings else []
            for method, compiled in _configs(args.methods, compile_methods):
                label = _label(method, compiled)
                row = next((r for r in rows if r['setting'] == str(setting) and r['method'] == label), None)
                if row is None:
                    row = {'setting': str(setting), 'method': label}
                    rows.append(row)
                for key in ('memory_error', 'mem_mb', 'mem_ratio', 'step_mem_ratio', 'peak_ratio'):
                    row.pop(key, None)
                row.update(_memory_row(method, compiled, setting, args))
        _memory_ratios(rows)
        meta['memory'] = args.memory
    if 'inference' in args.update:
        infer = [r for r in meta.get('inference') or [] if r['setting'] not in args.settings]
        for text in args.settings:
            setting = Setting.parse(text)
            x, _ = _inputs(setting, args.num_classes, args.device, args.channels_last)
            infer += inference_rows(setting, args, x)
        meta['inference'] = infer
    if 'head' in args.update:
        head = [r for r in meta.get('head') or [] if r['setting'] not in args.settings]
        for text in args.settings:
            setting = Setting.parse(text)
            head += [dict(r, setting=text) for r in head_benchmark(
                setting, args.num_classes, args.device, args.amp, args.warmup, args.repeats,
                compiled=args.head_compile or bool(args.compile_methods), channels_last=args.channels_last)]
        meta['head'] = head
        if fused_differs(args.device):
            meta['kernels'] = [dict(r, setting=text) for text in args.settings for r in kernel_benchmark(
                Setting.parse(text), args.num_classes, args.device, args.amp, args.channels_last, args.warmup,
                args.repeats)]
    if 'grad_check' in args.update:
        gsetting = Setting.parse(args.settings[-1])
        meta['grad_check'] = [dict(r, setting=str(gsetting))
                              for r in gradient_check(gsetting, args.num_classes, args.device)]
    meta.setdefault('updates', []).append(command_line('step_time'))
    return write_report(name, args.out_dir, meta, rows)


def targets(
        train_rows: List[Dict], infer_rows: List[Dict], head_rows: List[Dict], device: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """The targets of the single-pass step, per setting, from the measured rows (eager configurations).

    On CUDA also those of the fused head (issue 14): head + loss <= 1 ms, step <= 1.01x plain eager and compiled,
    inference <= 1.005x, memory <= 1.01x.
    """
    out = []
    for setting in dict.fromkeys(r['setting'] for r in train_rows):
        tr = {r['method']: r for r in train_rows if r['setting'] == setting}
        inf = {r['method']: r for r in infer_rows if r['setting'] == setting}
        hd = {r['part']: r for r in head_rows if r['setting'] == setting}
        checks = []
        if 'plain' in tr and 'ggam' in tr:
            checks.append(('GGAM / plain step time', tr['ggam']['median_s'] / tr['plain']['median_s'], 1.05, 'max'))
            if 'cpu_median_s' in tr['ggam']:
                checks.append(('GGAM / plain step CPU time', tr['ggam']['cpu_median_s'] / tr['plain']['cpu_median_s'],
                               1.05, 'max'))
            if tr['ggam'].get('mem_ratio') is not None:
                checks.append(('GGAM / plain training memory', tr['ggam']['mem_ratio'], 1.05, 'max'))
            if tr['ggam'].get('peak_ratio') is not None:
                checks.append(('GGAM / plain peak memory (process)', tr['ggam']['peak_ratio'], 1.05, 'max'))
        if 'authors' in tr and 'ggam' in tr:
            checks.append(("authors' / GGAM step time", tr['authors']['median_s'] / tr['ggam']['median_s'], 1.5,
                           'min'))
            if 'cpu_median_s' in tr['ggam']:
                checks.append(("authors' / GGAM step CPU time",
                               tr['authors']['cpu_median_s'] / tr['ggam']['cpu_median_s'], 1.5, 'min'))
        if 'plain' in inf and 'ggam' in inf:
            checks.append(('GGAM / plain inference', inf['ggam']['median_s'] / inf['plain']['median_s'], 1.02, 'max'))
            if 'cpu_median_s' in inf['ggam']:
                checks.append(('GGAM / plain inference CPU time',
                               inf['ggam']['cpu_median_s'] / inf['plain']['cpu_median_s'], 1.02, 'max'))
        if 'plain' in tr and 'plain_head' in hd and 'ggam_head' in hd:
            key = 'cpu_median_s' if 'cpu_median_s' in hd['ggam_head'] else 'median_s'
            extra = (hd['ggam_head'][key] - hd['plain_head'][key]) / tr['plain'][key]
            checks.append((f'1 + (GGAM head - plain head) / plain step ({key[:-2]})', 1 + extra, 1.05, 'max'))
        if device == 'cuda':
            if 'ggam_head' in hd:
                checks.append(('fused GGAM head + loss fwd+bwd, ms', hd['ggam_head']['median_s'] * 1e3, 1.0, 'max'))
            if 'plain' in tr and 'ggam' in tr:
                checks.append(('fused: GGAM / plain step time', tr['ggam']['median_s'] / tr['plain']['median_s'],
                               1.01, 'max'))
                if tr['ggam'].get('mem_ratio') is not None:
                    checks.append(('fused: GGAM / plain training memory', tr['ggam']['mem_ratio'], 1.01, 'max'))
            if 'plain (compiled)' in tr and 'ggam (compiled)' in tr:
                checks.append(('fused: compiled GGAM / compiled plain step time',
                               tr['ggam (compiled)']['median_s'] / tr['plain (compiled)']['median_s'], 1.01, 'max'))
            if 'plain' in inf and 'ggam' in inf:
                checks.append(('fused: GGAM / plain inference', inf['ggam']['median_s'] / inf['plain']['median_s'],
                               1.005, 'max'))
        for name, value, limit, kind in checks:
            met = value <= limit if kind == 'max' else value >= limit
            out.append({'setting': setting, 'target': name, 'value': value,
                        'limit': ('<= ' if kind == 'max' else '>= ') + str(limit), 'met': met})
    return out


def _table(rows: List[Dict[str, Any]], cols: List[str], title: str) -> str:
    return '\n'.join([f'{title}:', '', *markdown_table(cols, rows)])


if __name__ == '__main__':
    main()

"""Peak memory of a training step: on CUDA `torch.cuda.max_memory_allocated`, on the CPU the peak resident set
(VmHWM, reset through /proc/self/clear_refs) with glibc serving every allocation of 64 KiB or more by mmap, each
configuration in a fresh interpreter (`python -m benchmarks.step_time --memory-probe`, `memory_probe`) so that
nothing of the measuring process's heap is inherited."""
import argparse
import ctypes
import gc
import json
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional

import torch

from benchmarks.common import REPO_ROOT
from benchmarks.steps import FUSED, Setting, build_model, build_step, config_label, step_inputs
from benchmarks.timing import sync_device

__all__ = ['malloc_trim', 'measure_memory', 'memory_row', 'memory_ratios', 'memory_probe']


def _rss_kb(field: str) -> Optional[int]:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), or None."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def malloc_trim() -> None:
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
    """Reset VmHWM to the current RSS (/proc/self/clear_refs); False where that is not possible."""
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
    malloc_trim()
    if device == 'cuda':
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kb('VmRSS')
    step, model = build_step(method, setting, num_classes, device, amp, channels_last, compiled)
    x, y = step_inputs(setting, num_classes, device, channels_last)
    sync_device(device)
    gc.collect()
    malloc_trim()
    built = torch.cuda.memory_allocated() if device == 'cuda' else _rss_kb('VmRSS')
    for _ in range(warmup):
        step(x, y)
    sync_device(device)
    if device == 'cuda':
        torch.cuda.reset_peak_memorytime_stats()
        resettable = True
    else:
        gc.collect()
        malloc_trim()
        resettable = _reset_peak_rss()
    for _ in range(steps):
        step(x, y)
    sync_device(device)
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



def memory_row(method: str, compiled: bool, setting: Setting, args: argparse.Namespace, log: Callable = print):
    """The memory of one configuration: in a fresh interpreter (`--memory subprocess` on the CPU) or here."""
    cfg = {'method': method, 'setting': str(setting), 'num_classes': args.num_classes, 'device': args.device,
           'amp': args.amp, 'channels_last': args.channels_last, 'compiled': compiled, 'threads': args.threads,
           'force_fused': FUSED['ggam'] is True}
    if args.memory == 'subprocess' and args.device == 'cpu':
        mem = _memory_subprocess(cfg, args.memory_timeout)
    else:
        mem = measure_memory(method, setting, args.num_classes, args.device, args.amp, args.channels_last, compiled)
        mem['memory_method'] += ' (in process)' if args.device == 'cpu' else ''
    log(f'  memory {config_label(method, compiled)} @ {setting}: {mem}')
    return mem


def memory_ratios(rows: List[Dict[str, Any]]) -> None:
    """Memory ratios against plain (compiled rows against plain compiled when present), per setting."""
    for row in rows:
        same = [r for r in rows if r['setting'] == row['setting']]
        base = next((r for r in same if r['method'] == config_label('plain', row['method'].endswith('(compiled)'))),
                    None) or next((r for r in same if r['method'] == 'plain'), None)
        for key, ratio in (('mem_mb', 'mem_ratio'), ('step_mem_mb', 'step_mem_ratio'), ('peak_mb', 'peak_ratio')):
            if base and row.get(key) is not None and base.get(key):
                row[ratio] = row[key] / base[key]



def memory_probe(cfg: Dict[str, Any]) -> None:
    """The child side of the fresh-interpreter measurement: `measure_memory` of `cfg`, printed as one JSON line."""
    if cfg.get('threads'):
        torch.set_num_threads(cfg['threads'])
    FUSED['ggam'] = True if cfg.get('force_fused') else 'auto'
    mem = measure_memory(cfg['method'], Setting.parse(cfg['setting']), cfg['num_classes'], cfg['device'],
                         cfg['amp'], cfg['channels_last'], cfg['compiled'])
    print(json.dumps(mem), flush=True)

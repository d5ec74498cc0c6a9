"""Which timm architectures can GGAM wrap? Every one of `timm.list_models()`, then a real CPU run per model module.

Part 1 (``wrap``): every architecture is built with `wrap_timm_model(name, num_classes=10, device='meta')`: no
weights are allocated and `GGAMModel` decides the feature layout with its meta-device probe. Each ends as
``wrapped`` (with the layout NCHW / NHWC / NLC and its prefix tokens), ``refused`` (`UnsupportedBackboneError`, with
its reason) or ``failed`` (any other exception, a hang past the time limit or a dead worker: a bug in the wrapper).

Part 2 (``sample``): the architectures are grouped by the timm module that defines their entrypoint; for each module
the smallest wrapped model (parameters counted on meta, at most ``--max-params``) is built on the CPU with random
weights and run at its minimum input size (`pretrained_cfg` 'min_input_size', else 'input_size'; fixed-size models
at 'input_size'), batch 2: `model(x)`, `forward_ggam`, `GGAMLoss` and backward in train mode (finite loss, finite
gradients on `head.attn.fc1` / `fc2` and `head.fc`), then in eval mode the closed-form beta of `forward_ggam` against
the autograd beta of the same model with `head.closed_form = False` (relative error at most ``--beta-rtol``).

Models run in forked worker processes (one torch thread each), one model per task, with a time limit per model; a worker
that hangs or dies is replaced and the model is recorded as failed (`run_tasks`: persistent workers with per-task CPU
and wall-clock limits, which the other scripts' process isolation does not need; see `benchmarks/common.py`).
Results: JSON and a Markdown report.

Example::

    python -m benchmarks.timm_coverage                  # both parts, 2 workers -> benchmarks/results/timm_coverage.*
    python -m benchmarks.timm_coverage --quick          # a handful of models (CI), -> timm_coverage_quick.*
    python -m benchmarks.timm_coverage --part sample    # part 2 only, reusing part 1 from the existing JSON
"""

import argparse
import collections
import fnmatch
import json
import logging
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.models import get_pretrained_cfg, model_entrypoint

import ggam_layers
from benchmarks.common import command_line, git_provenance, machine_info, machine_line, markdown_table
from ggam_layers.loss import GGAMLoss
from ggam_layers.model import UnsupportedBackboneError, wrap_timm_model

__all__ = ['list_architectures', 'model_module', 'wrap_check', 'sample_check', 'select_sample', 'run_tasks', 'main']

QUICK_WRAP = ['test_resnet', 'test_vit', 'test_mambaout', 'test_convnext', 'pit_ti_224', 'crossvit_tiny_240']
QUICK_SAMPLE = ['test_resnet', 'test_vit', 'test_mambaout', 'pit_ti_224']
NUM_CLASSES = 10


# --- model discovery --------------------------------------------------------------------------------------------------
def model_module(name: str) -> str:
    """The timm module defining a model's entrypoint, without the `timm.models.` prefix (e.g. 'resnet')."""
    module = model_entrypoint(name).__module__
    return module[len('timm.models.'):] if module.startswith('timm.models.') else module


def list_architectures() -> List[str]:
    """`timm.list_models()` without entrypoints registered outside timm (our own `ggam_*` models)."""
    return [n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('timm.models.')]


def _input_sizes(name: str) -> Dict[str, Any]:
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return {'input_size': [3, 224, 224], 'min_input_size': None, 'fixed_input_size': False}
    return {
        'input_size': list(cfg.input_size),
        'min_input_size': list(cfg.min_input_size) if cfg.min_input_size else None,
        'fixed_input_size': bool(cfg.fixed_input_size),
    }


def _sample_size(sizes: Dict[str, Any]) -> Tuple[int, int]:
    """The input size of the real run: 'min_input_size' unless the model is fixed-size, else 'input_size'."""
    size = sizes['input_size'] if sizes['fixed_input_size'] or not sizes['min_input_size'] else sizes['min_input_size']
    return int(size[-2]), int(size[-1])


def _error(e: BaseException) -> Dict[str, Any]:
    lines = traceback.format_exception(type(e), e, e.__traceback__)
    last = ''.join(lines).strip().splitlines()[-1]
    return {'error': f'{type(e).__name__}: {e}'[:2000], 'error_last_line': last[:500],
            'traceback': ''.join(lines[-6:])[-4000:]}


class _ProbeLog(logging.Handler):
    """Collects `ggam_layers.model` debug messages (meta probe fell back to the CPU, meta backward failed)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:500])


def _with_probe_log(fn):
    def wrapped(*args, **kwargs):
        handler = _ProbeLog()
        logger = logging.getLogger('ggam_layers.model')
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        try:
            result = fn(*args, **kwargs)
        finally:
            logger.removeHandler(handler)
        if handler.messages:
            result['probe_log'] = handler.messages
        return result

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


# --- part 1: wrap every architecture on the meta device ---------------------------------------------------------------
@_with_probe_log
def wrap_check(name: str) -> Dict[str, Any]:
    """Wrap one architecture on the meta device and classify the outcome.

    Returns:
        A row with 'status' ('wrapped', 'refused' or 'failed'), the layout or the reason / error, parameter counts
        and input sizes.
    """
    row: Dict[str, Any] = {'model': name, 'module': model_module(name), **_input_sizes(name)}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        model = wrap_timm_model(name, num_classes=NUM_CLASSES, device='meta')
    except UnsupportedBackboneError as e:
        row.update(status='refused', reason=str(e))
        try:  # count the backbone's parameters anyway, for picking the sample
            backbone = timm.create_model(name, num_classes=0, device='meta')
            row['params'] = sum(p.numel() for p in backbone.parameters())
        except Exception as e2:  # noqa: BLE001
            row['params_error'] = f'{type(e2).__name__}: {e2}'[:500]
    except Exception as e:  # noqa: BLE001  (anything else is a bug in the wrapper)
        row.update(status='failed', **_error(e))
    else:
        layout = model.layout
        row.update(
            status='wrapped',
            fmt=layout.fmt,
            num_prefix_tokens=layout.num_prefix_tokens,
            reduction=layout.reduction,
            grid_rule=layout.grid_rule,
            num_features=int(model.num_features),
            params=sum(p.numel() for p in model.backbone.parameters()),
            head_params=sum(p.numel() for p in model.head.parameters()),
            unused_backbone_params=len(model.unused_backbone_params),
            shared_param_aliases=sum(1 for _ in model.backbone.named_parameters(remove_duplicate=False))
            - sum(1 for _ in model.backbone.parameters()),
            on_meta=all(p.device.type == 'meta' for p in model.parameters()),
        )
    row['seconds'] = round(time.perf_counter() - t0, 3)
    row['cpu_seconds'] = round(time.process_time() - c0, 3)
    return row


# --- part 2: a real CPU step on one model per module ------------------------------------------------------------------
def _finite_grad(p: torch.nn.Parameter) -> Optional[str]:
    if p.grad is None:
        return 'None'
    if not torch.isfinite(p.grad).all():
        return 'not finite'
    return None


@_with_probe_log
def sample_check(name: str, img_size: Sequence[int], beta_rtol: float = 1e-4, seed: int = 0) -> Dict[str, Any]:
    """One real train step and the closed-form vs autograd beta check on the CPU.

    Args:
        name: timm architecture.
        img_size: (H, W) of the input.
        beta_rtol: Largest accepted max |beta_closed - beta_autograd| / max |beta_autograd|.
        seed: Seed of the weights, images and targets.

    Returns:
        A row with 'status' ('pass', 'refused' or 'failed'), the stage reached and the measured values.
    """
    h, w = int(img_size[0]), int(img_size[1])
    row: Dict[str, Any] = {'model': name, 'module': model_module(name), 'img_size': [h, w], 'batch_size': 2}
    t0, c0 = time.perf_counter(), time.process_time()
    stage = 'build'
    checks: Dict[str, Any] = {}
    try:
        torch.manual_seed(seed)
        model = wrap_timm_model(name, num_classes=NUM_CLASSES)
        row['fmt'] = model.layout.fmt
        row['num_prefix_tokens'] = model.layout.num_prefix_tokens
        row['params'] = sum(p.numel() for p in model.parameters())
        left = [n for n, t in (*model.named_parameters(remove_duplicate=False),
                               *model.named_buffers(remove_duplicate=False)) if t.is_meta]
        if left:
            raise AssertionError(f'{len(left)} parameters / buffers left on the meta device after construction (the '
                                 f'probe did not restore them), e.g. {left[:3]}')
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 3, h, w, generator=g)
        target = torch.tensor([1, 7])

        stage = 'forward'
        model.train()
        logits = model(x)
        if tuple(logits.shape) != (2, NUM_CLASSES):
            raise AssertionError(f'model(x) gives shape {tuple(logits.shape)}, expected (2, {NUM_CLASSES})')
        if not torch.isfinite(logits).all():
            raise AssertionError('model(x) gives non-finite logits')

        stage = 'forward_ggam'
        out = model.forward_ggam(x)
        checks['channel_weights_shape'] = list(out.channel_weights.shape)
        checks['spatial_weights_shape'] = list(out.spatial_weights.shape)
        if tuple(out.cam_weights.shape) != (2, model.num_features):
            raise AssertionError(
                f'cam_weights shape {tuple(out.cam_weights.shape)}, expected (2, {model.num_features})')

        stage = 'loss'
        terms = GGAMLoss().terms(out, target)
        checks.update(loss=float(terms.loss), ce=float(terms.ce), ggam=float(terms.ggam))
        if not torch.isfinite(terms.loss):
            raise AssertionError(f'GGAMLoss is not finite: {float(terms.loss)}')

        stage = 'backward'
        terms.loss.backward()
        attn = model.head.attn
        head_params = {'head.attn.fc1.weight': attn.fc1.weight, 'head.attn.fc1.bias': attn.fc1.bias,
                       'head.attn.fc2.weight': attn.fc2.weight, 'head.attn.fc2.bias': attn.fc2.bias,
                       'head.fc.weight': model.head.fc.weight}
        bad = {n: why for n, p in head_params.items() if (why := _finite_grad(p))}
        if bad:
            raise AssertionError(f'bad head gradients: {bad}')
        checks['attn_grad_norm'] = float(torch.cat([attn.fc1.weight.grad.flatten(), attn.fc2.weight.grad.flatten()])
                                         .norm())
        trainable = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
        no_grad = [n for n, p in trainable if p.grad is None]
        checks['backbone_trainable_params'] = len(trainable)
        checks['backbone_params_without_grad'] = len(no_grad)
        if no_grad:
            checks['backbone_params_without_grad_names'] = no_grad[:10]
        if any(p.grad is not None and not torch.isfinite(p.grad).all() for _, p in trainable):
            raise AssertionError('non-finite backbone gradients')

        stage = 'beta'
        model.eval()
        model.zero_grad(set_to_none=True)
        if not model.head.uses_closed_form():
            raise AssertionError('the head does not use the closed form in eval mode')
        closed = model.forward_ggam(x)
        model.head.closed_form = False
        try:
            auto = model.forward_ggam(x)
        finally:
            model.head.closed_form = True
        if not torch.equal(closed.classes, auto.classes):
            raise AssertionError(f'explained classes differ: {closed.classes.tolist()} vs {auto.classes.tolist()}')
        scale = float(auto.cam_weights.abs().max())
        err = float((closed.cam_weights - auto.cam_weights).abs().max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        checks.update(beta_max_abs=scale, beta_max_abs_err=err, beta_rel_err=rel)
        if not rel <= beta_rtol:
            raise AssertionError(f'closed-form beta differs from autograd beta: relative error {rel:.3g} > {beta_rtol}')
        row['status'] = 'pass'
    except UnsupportedBackboneError as e:
        row.update(status='refused', reason=str(e))
    except Exception as e:  # noqa: BLE001
        row.update(status='failed', **_error(e))
    row['stage'] = stage
    row['checks'] = checks
    row['seconds'] = round(time.perf_counter() - t0, 3)
    row['cpu_seconds'] = round(time.process_time() - c0, 3)
    return row


def _by_module(rows: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """The rows of each timm module."""
    out: Dict[str, List[Dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        out[r['module']].append(r)
    return out


def select_sample(wrap_rows: Sequence[Dict[str, Any]], max_params: float) -> List[Dict[str, Any]]:
    """One entry per timm module: its smallest wrapped model with at most `max_params` parameters.

    Modules without such a model get a 'refused' (no wrappable model), 'failed' (only failures) or 'skipped'
    (all wrapped models too large) entry that is not run.
    """
    by_module = _by_module(wrap_rows)
    entries = []
    for module in sorted(by_module):
        rows = by_module[module]
        wrapped = sorted((r for r in rows if r['status'] == 'wrapped'), key=lambda r: (r['params'], r['model']))
        small = [r for r in wrapped if r['params'] <= max_params]
        entry: Dict[str, Any] = {'module': module, 'archs': len(rows)}
        if small:
            r = small[0]
            entry.update(model=r['model'], params=r['params'], img_size=list(_sample_size(r)), run=True)
        elif wrapped:
            r = wrapped[0]
            entry.update(model=r['model'], params=r['params'], run=False, status='skipped',
                         reason=f'smallest wrapped model has {r["params"] / 1e6:.1f}M parameters > '
                                f'{max_params / 1e6:.0f}M')
        else:
            refused = sorted((r for r in rows if r['status'] == 'refused'),
                             key=lambda r: (r.get('params', math.inf), r['model']))
            r = refused[0] if refused else rows[0]
            entry.update(model=r['model'], params=r.get('params'), run=False, status=r['status'])
            entry.update({k: r[k] for k in ('reason', 'error', 'error_last_line') if k in r})
        entries.append(entry)
    return entries


# --- worker pool with a time limit per task ---------------------------------------------------------------------------
_CHECKS = {'wrap': wrap_check, 'sample': sample_check}


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore')
    conn.send(('ready', None, None))
    while True:
        task = conn.recv()
        if task is None:
            return
        key, kind, args = task
        try:
            result = _CHECKS[kind](*args)
        except BaseException as e:  # noqa: BLE001  (the checks catch their own; this is a last resort)
            result = {'status': 'failed', **_error(e)}
        conn.send(('result', key, result))


def _process_cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of a process from /proc (None where there is no /proc)."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        return None


class _Worker:
    def __init__(self, ctx: Any):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.task: Optional[Tuple[Any, str, tuple]] = None
        self.deadline = math.inf
        self.started = 0.0
        self.cpu_start: Optional[float] = None
        self.cpu_limit = math.inf
        self.done = 0

    def assign(self, task: Tuple[Any, str, tuple], timeout: float, wall_factor: float) -> None:
        self.conn.send(task)
        self.task = task
        self.started = time.perf_counter()
        self.cpu_start = _process_cpu_seconds(self.proc.pid)
        self.cpu_limit = timeout if self.cpu_start is not None else math.inf
        self.deadline = self.started + timeout * (wall_factor if self.cpu_start is not None else 1.0)

    def over_limit(self, now: float) -> Optional[str]:
        """Why the running task is past its limits, or None."""
        if now > self.deadline:
            return f'timeout: no result after {now - self.started:.0f} s wall-clock'
        if self.cpu_start is not None:
            cpu = _process_cpu_seconds(self.proc.pid)
            if cpu is not None and cpu - self.cpu_start > self.cpu_limit:
                return f'timeout: no result after {cpu - self.cpu_start:.0f} CPU seconds'
        return None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_tasks(
        tasks: Sequence[Tuple[Any, str, tuple]],
        workers: int = 2,
        timeout: float = 120.,
        max_tasks_per_worker: int = 100,
        progress: bool = True,
        log_path: Optional[Path] = None,
        wall_factor: float = 5.,
) -> Dict[Any, Dict[str, Any]]:
    """Run (key, kind, args) tasks in single-thread worker processes, each task with a time limit.

    The limit is `timeout` CPU seconds of the worker (read from /proc, so that a loaded machine does not cause false
    timeouts), and `wall_factor * timeout` wall-clock seconds against hangs that use no CPU; without /proc it is
    `timeout` wall-clock seconds. A task past its limit, or whose worker dies, gets a 'failed' result; its worker is
    replaced. Workers are
    also replaced after `max_tasks_per_worker` tasks (bounds memory growth). Each result is also appended to
    `log_path` as a JSON line as soon as it arrives (a record of an interrupted run).

    Returns:
        The result row of each task by key.
    """
    # fork: the workers start at once with torch and timm already imported (the parent runs no torch op before, so
    # no thread pool is forked); spawn where fork is unavailable
    ctx = mp.get_context('fork' if 'fork' in mp.get_all_start_methods() else 'spawn')
    os.environ['OMP_NUM_THREADS'] = '1'  # inherited by spawned workers
    pending = collections.deque(tasks)
    total = len(pending)
    results: Dict[Any, Dict[str, Any]] = {}
    pool = [_Worker(ctx) for _ in range(min(workers, max(1, total)))]
    t0 = time.perf_counter()

    def finish(w: _Worker, row: Dict[str, Any]) -> None:
        key = w.task[0]
        row.setdefault('seconds', round(time.perf_counter() - w.started, 3))
        results[key] = row
        w.task, w.deadline = None, math.inf
        w.done += 1
        if log_path is not None:
            with open(log_path, 'a') as f:
                f.write(json.dumps(row) + '\n')
        if progress:
            print(f'[{len(results)}/{total} {time.perf_counter() - t0:.0f}s] {key}: {row.get("status")} '
                  f'({row["seconds"]:.1f}s)', flush=True)

    def failed_row(w: _Worker, why: str) -> Dict[str, Any]:
        key, kind, args = w.task
        row = {'model': args[0], 'module': model_module(args[0]), 'status': 'failed', 'error': why,
               'error_last_line': why, 'seconds': round(time.perf_counter() - w.started, 3)}
        if kind == 'wrap':
            row.update(_input_sizes(args[0]))
        return row

    try:
        while pending or any(w.task for w in pool):
            for i, w in enumerate(pool):
                if w.ready and w.task is None:
                    if w.done >= max_tasks_per_worker and pending:
                        w.stop()
                        pool[i] = _Worker(ctx)
                    elif pending:
                        w.assign(pending.popleft(), timeout, wall_factor)
            now = time.perf_counter()
            wait_s = max(0.01, min([w.deadline - now for w in pool] + [1.0]))
            for conn in multiprocessing.connection.wait([w.conn for w in pool], timeout=wait_s):
                i = next(j for j, w in enumerate(pool) if w.conn is conn)
                w = pool[i]
                try:
                    msg, _, row = conn.recv()
                except (EOFError, OSError):
                    code = w.proc.exitcode if not w.proc.is_alive() else None
                    if w.task is not None:
                        finish(w, failed_row(w, f'worker process died (exit code {code}), e.g. out of memory'))
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx)
                    continue
                if msg == 'ready':
                    w.ready = True
                else:
                    finish(w, row)
            now = time.perf_counter()
            for i, w in enumerate(pool):
                why = w.over_limit(now) if w.task is not None else None
                if why:
                    finish(w, failed_row(w, why))
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx)
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)
    return results


# --- reporting --------------------------------------------------------------------------------------------------------
def _counts(rows: Sequence[Dict[str, Any]], statuses: Sequence[str]) -> Dict[str, int]:
    c = collections.Counter(r['status'] for r in rows)
    return {s: c.get(s, 0) for s in statuses}


def _summarise_wrap(rows: List[Dict[str, Any]], wall_s: float) -> Dict[str, Any]:
    n = len(rows)
    counts = _counts(rows, ('wrapped', 'refused', 'failed'))
    wrapped = [r for r in rows if r['status'] == 'wrapped']
    layouts = collections.Counter(r['fmt'] for r in wrapped)
    prefix = collections.Counter(r['num_prefix_tokens'] for r in wrapped if r['fmt'] == 'NLC')
    secs = sorted(r['seconds'] for r in rows)
    cpu = sum(r.get('cpu_seconds', 0.0) for r in rows)
    return {
        'total': n,
        **counts,
        'wrapped_fraction': counts['wrapped'] / n if n else 0.0,
        'layouts': dict(sorted(layouts.items())),
        'nlc_prefix_tokens': {str(k): v for k, v in sorted(prefix.items())},
        'probe_cpu_fallbacks': sum(1 for r in rows if any('probing on the CPU' in m for m in r.get('probe_log', []))),
        'wall_seconds': round(wall_s, 1),
        'model_seconds_total': round(sum(secs), 1),
        'model_seconds_median': secs[len(secs) // 2] if secs else 0.0,
        'model_cpu_seconds_total': round(cpu, 1),
        'model_cpu_seconds_median': sorted(r.get('cpu_seconds', 0.0) for r in rows)[len(rows) // 2] if rows else 0.,
        'slowest': [{'model': r['model'], 'seconds': r['seconds'], 'cpu_seconds': r.get('cpu_seconds'),
                     'status': r['status']} for r in sorted(rows, key=lambda r: -r.get('cpu_seconds', 0))[:10]],
    }


def _md_escape(s: Any) -> str:
    return str(s).replace('|', '\\|').replace('\n', ' ')


def _fmt_params(p: Optional[float]) -> str:
    return '' if p is None else f'{p / 1e6:.2f}M'


def _changes(statuses: Dict[str, str]) -> str:
    changed = {k: v for k, v in statuses.items() if len(set(v.split(' -> '))) > 1}
    text = ', '.join(f'{k} {v}' for k, v in changed.items()) or 'no status changed'
    return text + (f'; {len(statuses) - len(changed)} unchanged' if changed and len(changed) < len(statuses) else '')


def markdown(data: Dict[str, Any]) -> str:
    """The Markdown report of a result JSON."""
    info = data['machine']
    lines = [
        '# GGAM coverage of timm architectures',
        '',
        f"Command: `{data['command']}`"
        + (f" (real CPU step: `{data['sample_command']}`)" if data.get('sample_command') else ''),
        '',
        f"Machine: {machine_line(info)}; {data['settings']['workers']} worker processes with one torch thread each.",
        '',
    ]
    if data.get('git', {}).get('commit'):
        dirty = data['git']['ggam_layers_uncommitted']
        lines += [f"Code: commit {data['git']['commit'][:10]}"
                  + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else '') + '.', '']
    wrap = data.get('wrap')
    sample = data.get('sample')
    if wrap:
        s = wrap['summary']
        lines += [
            '## Totals',
            '',
            f"- Wrap on the meta device (`wrap_timm_model(name, num_classes={NUM_CLASSES}, device='meta')`): "
            f"**{s['wrapped']} / {s['total']} wrapped ({100 * s['wrapped_fraction']:.1f}%)**, {s['refused']} "
            f"refused with a reason, {s['failed']} failed. Layouts of the wrapped: "
            + ', '.join(f'{k} {v}' for k, v in s['layouts'].items())
            + '; prefix tokens of NLC models: ' + ', '.join(f'{k}: {v}' for k, v in s['nlc_prefix_tokens'].items())
            + f". Wall time {s['wall_seconds'] / 60:.1f} min with {data['settings']['workers']} workers"
            + (f" (machine load average {s['load_average'][0]:.1f} at the start, {s['load_average'][1]:.1f} at the "
               'end, its own workers included)' if s.get('load_average') else '')
            + f"; CPU time in the checks {s['model_cpu_seconds_total'] / 60:.1f} min (median "
            f"{s['model_cpu_seconds_median']:.2f} s per model), i.e. about "
            f"{s['model_cpu_seconds_total'] / data['settings']['workers'] / 60:.1f} min on an idle machine.",
        ]
        for u in wrap.get('updates', []):
            lines.append(f"- Re-run of {len(u['models'])} models (`{u['command']}`, limit {u['timeout_s']:.0f} CPU s, "
                         f"{u['wall_seconds']:.0f} s): {_changes(u['models'])}.")
    if sample:
        s = sample['summary']
        lines.append(
            f"- Real CPU step, smallest model per timm module: **{s['pass']} / {s['modules']} modules pass**, "
            f"{s['refused']} refused, {s['skipped']} skipped (too large), {s['failed']} failed; "
            f"worst closed-form vs autograd beta relative error {s['beta_rel_err_max']:.2g}. "
            f"Wall time {s['wall_seconds'] / 60:.1f} min.")
        for u in sample.get('updates', []):
            lines.append(f"- Re-run of the sample of {len(u['modules'])} modules (`{u['command']}`, "
                         f"{u['wall_seconds']:.0f} s): {_changes(u['modules'])}.")
    lines.append('')

    if wrap:
        rows = wrap['models']
        samples = {e['module']: e for e in sample['modules']} if sample else {}
        by_module = _by_module(rows)
        table = []
        for module in sorted(by_module):
            mrows = by_module[module]
            c = _counts(mrows, ('wrapped', 'refused', 'failed'))
            lay = collections.Counter(
                r['fmt'] + (f"({r['num_prefix_tokens']})" if r['fmt'] == 'NLC' else '')
                for r in mrows if r['status'] == 'wrapped')
            e = samples.get(module, {})
            size = 'x'.join(str(v) for v in e.get('img_size', [])) if e else ''
            table.append([module, len(mrows), c['wrapped'], c['refused'], c['failed'],
                          ', '.join(f'{k} {v}' for k, v in sorted(lay.items())), e.get('model', ''),
                          _fmt_params(e.get('params')), size, e.get('status', '')])
        lines += ['## Per timm module', '', *markdown_table(
            ['module', 'archs', 'wrapped', 'refused', 'failed', 'layouts (NLC: prefix tokens)', 'sample model',
             'params', 'input', 'sample'], table), '']

        refused = [r for r in rows if r['status'] == 'refused']
        lines += ['## Refused architectures', '']
        if refused:
            groups: Dict[Tuple[str, str], List[str]] = collections.defaultdict(list)
            for r in refused:
                groups[(r['module'], r['reason'])].append(r['model'])
            lines += markdown_table(['module', 'models', 'reason'], [
                [module, ', '.join(models), _md_escape(reason)] for (module, reason), models in sorted(groups.items())])
        else:
            lines.append('None.')
        lines.append('')

        failed = [r for r in rows if r['status'] == 'failed']
        lines += ['## Failed architectures (bugs in the wrapper)', '']
        if failed:
            lines += markdown_table(['module', 'model', 'last line of the traceback'], [
                [r['module'], r['model'], _md_escape(r.get('error_last_line', ''))] for r in failed])
        else:
            lines.append('None.')
        lines.append('')

        fallbacks = [r['model'] for r in rows if any('probing on the CPU' in m for m in r.get('probe_log', []))]
        if fallbacks:
            lines += [f"Meta probe fell back to a CPU forward ({len(fallbacks)}): {', '.join(fallbacks)}.", '']
        shared = [r for r in rows if r.get('shared_param_aliases')]
        if shared:
            lines += [f'Backbones with shared modules (parameters reachable under several names; construction must '
                      f"leave all of them on the model's device) ({len(shared)}): "
                      + ', '.join(f"{r['model']} ({r['shared_param_aliases']})" for r in shared) + '.', '']
        lines += ['Slowest wrap checks (wall s, CPU s): ' + ', '.join(
            f"{r['model']} {r['seconds']:.0f}, {r.get('cpu_seconds', float('nan')):.0f}"
            for r in wrap['summary']['slowest']) + '.', '']

    if sample:
        lines += [
            '## Real CPU step per module',
            '',
            'Batch 2, random weights, train-mode `model(x)`, `forward_ggam`, `GGAMLoss` and backward (finite loss, '
            'finite gradients on `head.attn.fc1/fc2` and `head.fc`), then eval-mode closed-form beta vs autograd beta '
            f"(relative error at most {data['settings']['beta_rtol']:g}).",
            '',
        ]
        table = []
        for e in sample['modules']:
            ch = e.get('checks', {})
            fmt = e.get('fmt', '')
            if fmt == 'NLC':
                fmt += f"({e.get('num_prefix_tokens')})"
            size = 'x'.join(str(v) for v in e.get('img_size', []))
            rel = ch.get('beta_rel_err')
            table.append([
                e['module'], e.get('model', ''), _fmt_params(e.get('params')), size, fmt, e.get('status', ''),
                e.get('stage', ''), '' if 'loss' not in ch else format(ch['loss'], '.4g'),
                '' if rel is None else format(rel, '.2g'), ch.get('backbone_params_without_grad', ''),
                e.get('seconds', ''), e.get('cpu_seconds', ''),
                _md_escape(e.get('error_last_line') or e.get('reason') or '')])
        lines += markdown_table(
            ['module', 'model', 'params', 'input', 'layout', 'status', 'stage', 'loss', 'beta rel. err',
             'backbone params w/o grad', 'wall s', 'CPU s', 'error / reason'], table)
        lines.append('')
    return '\n'.join(lines)


# --- main -------------------------------------------------------------------------------------------------------------
def _git_state() -> Dict[str, Any]:
    """The commit and the uncommitted files under ggam_layers/ (the keys of the stored results)."""
    git = git_provenance(['ggam_layers'])
    return {'commit': git['commit'], 'ggam_layers_uncommitted': git['uncommitted']} if 'commit' in git else {}


def _match(names: List[str], patterns: Optional[List[str]]) -> List[str]:
    if not patterns:
        return names
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--part', choices=('both', 'wrap', 'sample'), default='both',
                        help='wrap: every architecture on meta; sample: a real CPU step per module (needs wrap '
                             'results, from this run or the existing JSON)')
    parser.add_argument('--quick', action='store_true',
                        help=f'only {QUICK_WRAP} (wrap) and {QUICK_SAMPLE} (sample); writes timm_coverage_quick.*')
    parser.add_argument('--models', nargs='*', help='fnmatch patterns restricting the architectures')
    parser.add_argument('--update', action='store_true',
                        help='re-run the wrap part only for --models (default: the failed ones) and, with --part '
                             'sample, their sample rows too; merge them into the existing JSON, keeping the other rows '
                             '(recorded under wrap.updates / sample.updates)')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--timeout', type=float, default=120.,
                        help='CPU seconds per model in the wrap part (wall-clock limit: 5x, against hangs)')
    parser.add_argument('--sample-timeout', type=float, default=300., help='CPU seconds per model in the sample part')
    parser.add_argument('--max-params', type=float, default=50e6, help='largest sample model')
    parser.add_argument('--beta-rtol', type=float, default=1e-4)
    parser.add_argument('--out-dir', default=str(Path(__file__).resolve().parent / 'results'))
    parser.add_argument('--name', default=None, help='output file stem (default timm_coverage[_quick])')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.name or ('timm_coverage_quick' if args.quick else 'timm_coverage')
    json_path, md_path = out_dir / f'{stem}.json', out_dir / f'{stem}.md'
    (out_dir / f'{stem}.partial.jsonl').unlink(missing_ok=True)
    command = command_line('timm_coverage', argv)
    data: Dict[str, Any] = {}
    if (args.part == 'sample' or args.update) and json_path.exists():
        data = json.loads(json_path.read_text())
    if args.update and 'wrap' not in data:
        parser.error(f'--update needs an existing wrap result in {json_path}')
    if not args.update:
        data['command'] = command.strip()
        data['git'] = _git_state()
        data['settings'] = {
            'workers': args.workers, 'timeout_s': args.timeout, 'sample_timeout_s': args.sample_timeout,
            'max_params': args.max_params, 'beta_rtol': args.beta_rtol, 'num_classes': NUM_CLASSES,
            'quick': args.quick}
    if args.part == 'sample' and not args.update:
        data['sample_command'] = command.strip()
        data['settings'].update(sample_timeout_s=args.sample_timeout, max_params=args.max_params,
                                beta_rtol=args.beta_rtol)
    all_names = list_architectures()
    names = _match(QUICK_WRAP if args.quick else all_names, args.models)
    progress = not args.no_progress

    if args.update:
        old = {r['model']: r for r in data['wrap']['models']}
        names = _match(list(old), args.models) if args.models else [
            n for n, r in old.items() if r['status'] == 'failed']
        t0 = time.perf_counter()
        res = run_tasks([(n, 'wrap', (n,)) for n in names], args.workers, args.timeout, progress=progress,
                        log_path=out_dir / f'{stem}.partial.jsonl')
        data['wrap']['models'] = [res.get(r['model'], r) for r in data['wrap']['models']]
        wall = data['wrap']['summary']['wall_seconds']
        load = data['wrap']['summary'].get('load_average')
        data['wrap']['summary'] = _summarise_wrap(data['wrap']['models'], wall)
        if load:
            data['wrap']['summary']['load_average'] = load
        data['wrap'].setdefault('updates', []).append({
            'command': command.strip(), 'timeout_s': args.timeout, 'wall_seconds': round(time.perf_counter() - t0, 1),
            'models': {n: f"{old[n]['status']} -> {res[n]['status']}" for n in names}})
        if args.part == 'both' or not args.models:
            args.part = 'wrap'  # the sample rows of --models are re-run with --part sample
    elif args.part in ('both', 'wrap'):
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        res = run_tasks([(n, 'wrap', (n,)) for n in names], args.workers, args.timeout, progress=progress,
                        log_path=out_dir / f'{stem}.partial.jsonl')
        rows = [res[n] for n in names]
        data['wrap'] = {'summary': _summarise_wrap(rows, time.perf_counter() - t0), 'models': rows}
        data['wrap']['summary']['load_average'] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        data['timm_list_models'] = len(all_names)
    if args.part in ('both', 'sample'):
        if 'wrap' not in data:
            parser.error(f'--part sample needs the wrap results: run --part wrap first (no {json_path})')
        wrap_rows = data['wrap']['models']
        if args.quick:
            wrap_rows = [r for r in wrap_rows if r['model'] in QUICK_SAMPLE]
            entries = [dict(module=r['module'], archs=1, model=r['model'], params=r.get('params'),
                            img_size=list(_sample_size(r)), run=r['status'] == 'wrapped', status=r['status'],
                            **{k: r[k] for k in ('reason', 'error', 'error_last_line') if k in r})
                       for r in wrap_rows]
        else:
            entries = select_sample(wrap_rows, args.max_params)
        t0 = time.perf_counter()
        tasks = [(e['module'], 'sample', (e['model'], e['img_size'], args.beta_rtol))
                 for e in entries if e['run'] and (not args.models or e['model'] in names)]
        res = run_tasks(tasks, args.workers, args.sample_timeout, max_tasks_per_worker=20, progress=progress,
                        log_path=out_dir / f'{stem}.partial.jsonl')
        previous = {e['module']: e for e in (data.get('sample') or {}).get('modules', [])} if args.models else {}
        for i, e in enumerate(entries):
            if e['module'] in res:
                r = res[e['module']]
                e.update({k: v for k, v in r.items() if k not in ('model', 'module')})
            elif previous.get(e['module'], {}).get('model') == e['model']:  # not re-run: keep the stored row
                entries[i] = previous[e['module']]
        run = [e for e in entries if e['module'] in res or e['module'] in previous]
        if previous:
            data['sample'].setdefault('updates', []).append({
                'command': command.strip(), 'wall_seconds': round(time.perf_counter() - t0, 1),
                'modules': {m: f"{previous[m].get('status')} -> {res[m]['status']}" for m in res if m in previous}})
        rels = [e['checks']['beta_rel_err'] for e in run if 'beta_rel_err' in e.get('checks', {})]
        counts = _counts(entries, ('pass', 'refused', 'skipped', 'failed'))
        updates = (data.get('sample') or {}).get('updates', []) if previous else []
        wall = data['sample']['summary']['wall_seconds'] if previous else round(time.perf_counter() - t0, 1)
        data['sample'] = {
            'summary': {'modules': len(entries), **counts, 'run': len(run),
                        'beta_rel_err_max': max(rels) if rels else 0.0,
                        'cpu_seconds': round(sum(e.get('cpu_seconds', 0.0) for e in run), 1),
                        'wall_seconds': wall},
            'modules': entries,
        }
        if updates:
            data['sample']['updates'] = updates

    data['machine'] = machine_info()  # after the workers ran: it asks torch about CUDA, which must not precede a fork
    data['ggam_layers'] = {'version': ggam_layers.__version__, 'file': ggam_layers.__file__}
    data['machine']['torch_threads'] = 1  # per worker process (the parent runs no model)
    data['machine']['load_average_at_end'] = [round(v, 2) for v in os.getloadavg()]
    json_path.write_text(json.dumps(data, indent=1) + '\n')
    md_path.write_text(markdown(data) + '\n')
    (out_dir / f'{stem}.partial.jsonl').unlink(missing_ok=True)
    print(f'wrote {json_path} and {md_path}')
    if 'wrap' in data:
        s = data['wrap']['summary']
        print(f"wrap: {s['wrapped']} wrapped, {s['refused']} refused, {s['failed']} failed of {s['total']} "
              f"({s['wall_seconds']:.0f} s)")
    if 'sample' in data:
        s = data['sample']['summary']
        print(f"sample: {s['pass']} pass, {s['refused']} refused, {s['skipped']} skipped, {s['failed']} failed of "
              f"{s['modules']} modules ({s['wall_seconds']:.0f} s)")
    return data


if __name__ == '__main__':
    main()

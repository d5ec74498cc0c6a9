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
that hangs or dies is replaced and the model is recorded as failed (`run_tasks`, over `benchmarks.pool`: persistent
workers with per-task CPU and wall-clock limits). The checks are `benchmarks.timm_checks`, the report
`benchmarks.timm_coverage_report`. Results: JSON and a Markdown report.

Example::

    python -m benchmarks.timm_coverage                  # both parts, 2 workers -> benchmarks/results/timm_coverage.*
    python -m benchmarks.timm_coverage --quick          # a handful of models (CI), -> timm_coverage_quick.*
    python -m benchmarks.timm_coverage --part sample    # part 2 only, reusing part 1 from the existing JSON
"""

import argparse
import fnmatch
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import ggam_layers
from benchmarks.common import command_line, git_provenance, machine_info
from benchmarks.pool import Outcome, run_pool
from benchmarks.timm_checks import (
    NUM_CLASSES,
    input_sizes,
    list_architectures,
    model_module,
    run_check,
    sample_check,
    sample_size,
    wrap_check,
)
from benchmarks.timm_coverage_report import markdown, rows_by_module, status_counts, summarise_wrap

__all__ = ['list_architectures', 'model_module', 'wrap_check', 'sample_check', 'select_sample', 'run_tasks', 'main',
           'markdown', 'NUM_CLASSES']

QUICK_WRAP = ['test_resnet', 'test_vit', 'test_mambaout', 'test_convnext', 'pit_ti_224', 'crossvit_tiny_240']
QUICK_SAMPLE = ['test_resnet', 'test_vit', 'test_mambaout', 'pit_ti_224']


def select_sample(wrap_rows: Sequence[Dict[str, Any]], max_params: float) -> List[Dict[str, Any]]:
    """One entry per timm module: its smallest wrapped model with at most `max_params` parameters.

    Modules without such a model get a 'refused' (no wrappable model), 'failed' (only failures) or 'skipped'
    (all wrapped models too large) entry that is not run.
    """
    by_module = rows_by_module(wrap_rows)
    entries = []
    for module in sorted(by_module):
        rows = by_module[module]
        wrapped = sorted((r for r in rows if r['status'] == 'wrapped'), key=lambda r: (r['params'], r['model']))
        small = [r for r in wrapped if r['params'] <= max_params]
        entry: Dict[str, Any] = {'module': module, 'archs': len(rows)}
        if small:
            r = small[0]
            entry.update(model=r['model'], params=r['params'], img_size=list(sample_size(r)), run=True)
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


# --- the checks in worker processes, each with a time limit -----------------------------------------------------------
def _worker_setup() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore')


def run_tasks(
        tasks: Sequence[Tuple[Any, str, tuple]],
        workers: int = 2,
        timeout: float = 120.,
        max_tasks_per_worker: int = 100,
        progress: bool = True,
        log_path: Optional[Path] = None,
        wall_factor: float = 5.,
) -> Dict[Any, Dict[str, Any]]:
    """Run (key, kind, args) tasks (`run_check(kind, *args)`) in single-thread worker processes (`benchmarks.pool`),
    each task with a time limit.

    The limit is `timeout` CPU seconds of the worker (read from /proc, so that a loaded machine does not cause false
    timeouts), and `wall_factor * timeout` wall-clock seconds against hangs that use no CPU; without /proc it is
    `timeout` wall-clock seconds. A task past its limit, or whose worker dies, gets a 'failed' result; its worker is
    replaced. Workers are also replaced after `max_tasks_per_worker` tasks (bounds memory growth). Each result is also
    appended to `log_path` as a JSON line as soon as it arrives (a record of an interrupted run).

    Returns:
        The result row of each task by key.
    """
    os.environ['OMP_NUM_THREADS'] = '1'  # inherited by spawned workers
    kinds = {key: (kind, args) for key, kind, args in tasks}
    results: Dict[Any, Dict[str, Any]] = {}
    t0 = time.perf_counter()

    def finish(out: Outcome) -> None:
        kind, args = kinds[out.key]
        if out.error is None:
            row = out.value
        else:
            row = {'model': args[0], 'module': model_module(args[0]), 'status': 'failed', 'error': out.error,
                   'error_last_line': out.error, 'seconds': out.seconds}
            if kind == 'wrap':
                row.update(input_sizes(args[0]))
        row.setdefault('seconds', out.seconds)
        results[out.key] = row
        if log_path is not None:
            with open(log_path, 'a') as f:
                f.write(json.dumps(row) + '\n')
        if progress:
            print(f'[{len(results)}/{len(tasks)} {time.perf_counter() - t0:.0f}s] {out.key}: {row.get("status")} '
                  f'({row["seconds"]:.1f}s)', flush=True)

    # fork: the workers start at once with torch and timm already imported (the parent runs no torch op before, so
    # no thread pool is forked); spawn where fork is unavailable
    run_pool(run_check, [(key, (kind, *args)) for key, kind, args in tasks], workers, start_method='fork',
             initializer=_worker_setup, timeout=timeout, wall_factor=wall_factor,
             max_tasks_per_worker=max_tasks_per_worker, on_outcome=finish)
    return results


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
        data['wrap']['summary'] = summarise_wrap(data['wrap']['models'], wall)
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
        data['wrap'] = {'summary': summarise_wrap(rows, time.perf_counter() - t0), 'models': rows}
        data['wrap']['summary']['load_average'] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        data['timm_list_models'] = len(all_names)
    if args.part in ('both', 'sample'):
        if 'wrap' not in data:
            parser.error(f'--part sample needs the wrap results: run --part wrap first (no {json_path})')
        wrap_rows = data['wrap']['models']
        if args.quick:
            wrap_rows = [r for r in wrap_rows if r['model'] in QUICK_SAMPLE]
            entries = [dict(module=r['module'], archs=1, model=r['model'], params=r.get('params'),
                            img_size=list(sample_size(r)), run=r['status'] == 'wrapped', status=r['status'],
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
        counts = status_counts(entries, ('pass', 'refused', 'skipped', 'failed'))
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

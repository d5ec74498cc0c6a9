"""The evidence for GGAM's claims on the synthetic fine-grained set: Table 3, Fig. 4 and the target-scale question.

Three parts, every model trained with the package's own training API (`ggam_layers.train.train`, 'synthetic' preset)
with the same backbone, budget and seeds; between runs only the GGAM head options and the loss options change:

* `ablation`: the eight rows of the paper's Table 3 (spatial attention, channel attention, GGAM loss, each on or
  off), beside the paper's CUB-200-2011 numbers. Without channel attention S is the constant 1/C, so the GGAM loss
  is a constant with no gradient (the package's documented behaviour): those rows train exactly as their rows
  without the loss (the first study ran them and got identical numbers), so they show the no-loss runs.
* `sweep`: lambda 1 to 9 for the full model (the paper's Fig. 4), against the channel-spatial model without the loss.
* `target`: how the Grad-CAM target is made (docs/design.md), each at several lambdas: the paper as written
  (sigmoid, symmetric KL), the authors' code (softmax, forward KL), informative targets (beta standardised per
  sample before squashing) and a control with no Grad-CAM at all, the same symmetric KL towards the uniform
  distribution (`--cam-target uniform`: the target is exactly 1/C; earlier studies reached the same loss through a
  temperature of 1e30 on the standardised beta, `UNIFORM_TEMPERATURE`). If the literal loss helps as much as the
  uniform control, its gain is a regulariser on S, not guidance.

Measured for every run: test top-1 (the engine's final evaluation), the normalised entropy of S (H(S) / log C, mean
over the test set), the Pearson correlation between S and beta over channels (per sample, averaged), the spread of
the target (C * (max - min) of beta~, 0 for the uniform distribution) and, from the synthetic set's part boxes, how
often the peak of the spatial attention T and of the Grad-CAM map falls on the class-deciding parts
(`benchmarks/localization.py`, with its chance level). Rows give mean and standard deviation over seeds, and the
paired difference against a reference trained with the same seeds (same initialisation, data order and
augmentation).

Writes `<name>.json` (every run and every table), `<name>.md` and `<name>_lambda.png` (Fig. 4) to `--out-dir`.
With `--jobs N` the runs go side by side in spawned worker processes that are reused (each keeps the generated data
between its runs) and exit when this process is gone (`benchmarks.pool`).

This module is the command line; the pieces are their own modules, their names re-exported here: the budgets
(`ablation_budgets`), the plan (`ablation_plan`: Table 3, the targets, `RunSpec`, `build_plan`), one run
(`ablation_run`), the analysis of a trained model (`channel_stats`), the statistics (`ablation_stats`), Fig. 4
(`ablation_plot`) and the report (`ablation_report`).

Example::

    python -m benchmarks.ablation                       # all three parts, default budget (about 45 min, 2 cores)
    python -m benchmarks.ablation --quick               # smoke test of the whole pipeline (about a minute)
    python -m benchmarks.ablation --parts target --seeds 0 1 2 3 4 --work-dir runs/ablation
"""
import argparse
import dataclasses
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from benchmarks.ablation_budgets import BUDGETS, IMAGENET, Budget
from benchmarks.ablation_plan import (
    DEFAULT_PARTS,
    PAPER_TABLE3,
    PARTS,
    TABLE2,
    TARGET_TEXT,
    TARGETS,
    UNIFORM_TEMPERATURE,
    RunSpec,
    build_plan,
    check_uniform_control,
    target_options,
)
from benchmarks.ablation_plot import plot_sweep
from benchmarks.ablation_report import LOC_COLUMNS, TABLE2_TEXT, write_report
from benchmarks.ablation_run import PROVENANCE_FILES, budget_id, device_name, run_one, run_provenance, train_config
from benchmarks.ablation_stats import METRICS, build_tables, paired_difference, summarise
from benchmarks.channel_stats import channel_stats
from benchmarks.common import command_line, format_value, machine_info
from benchmarks.pool import Outcome, exit_with_parent, run_pool

__all__ = [
    'PAPER_TABLE3', 'TARGETS', 'TARGET_TEXT', 'UNIFORM_TEMPERATURE', 'target_options', 'PARTS', 'TABLE2',
    'TABLE2_TEXT', 'IMAGENET',
    'PROVENANCE_FILES', 'METRICS', 'LOC_COLUMNS', 'Budget', 'BUDGETS', 'RunSpec', 'build_plan', 'train_config',
    'run_one', 'channel_stats', 'summarise', 'paired_difference', 'build_tables', 'write_report', 'plot_sweep', 'main',
]

# the watchdog of the pool's workers, under the name it had here (tests/test_ablation_script.py)
_exit_with_parent = exit_with_parent


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='tiny budget: a smoke test of every code path')
    p.add_argument('--parts', nargs='+', choices=PARTS, default=list(DEFAULT_PARTS),
                   help='parts of the study (default: all but variants, which runs when named)')
    p.add_argument('--seeds', nargs='+', type=int, default=None, help='training seeds (default 0 1 2)')
    p.add_argument('--epochs', type=int, default=None)
    p.add_argument('--backbone', default=None)
    p.add_argument('--output-stride', type=int, default=None, help='0 for the backbone\'s own')
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--train-per-class', type=int, default=None)
    p.add_argument('--test-per-class', type=int, default=None)
    p.add_argument('--difficulty', type=float, default=None)
    p.add_argument('--lr', type=float, default=None)
    p.add_argument('--lam', type=float, default=None, help='lambda of the ablation rows with the loss (default 1)')
    p.add_argument('--ablation-target', choices=tuple(TARGETS), default=None,
                   help='target of the ablation and the sweep (default literal, the paper as written)')
    p.add_argument('--lambdas', nargs='+', type=float, default=None, help='lambdas of the sweep (default 1..9)')
    p.add_argument('--target-lambdas', nargs='+', type=float, default=None, help='lambdas of the target part')
    p.add_argument('--targets', nargs='+', choices=tuple(TARGETS), default=None, help='targets of the target part')
    p.add_argument('--budget', choices=tuple(BUDGETS), default=None,
                   help='a named budget (default: "default", or "quick" with --quick); the options below override it')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (bf16 autocast, on-device data path)")
    p.add_argument('--data-path', choices=('auto', 'loader', 'device'), default='auto',
                   help="the engine's data path ('device' runs the GPU path's data code on the CPU: a dry run)")
    p.add_argument('--jobs', '--parallel', dest='jobs', type=int, default=None,
                   help='runs in parallel, side by side on the CPU cores or on one GPU (default: 2, 1 with --quick)')
    p.add_argument('--threads', type=int, default=1, help='torch threads per run')
    p.add_argument('--work-dir', default=None,
                   help='keep the runs here; finished runs found here are reused (default: a temporary folder)')
    p.add_argument('--keep-runs', action='store_true', help='keep weights and metrics of every run in --work-dir')
    p.add_argument('--report-only', action='store_true',
                   help='train nothing: report the runs finished in --work-dir (e.g. after a time limit stopped it)')
    p.add_argument('--out-dir', default='benchmarks/results')
    p.add_argument('--name', default=None, help='result file stem (default ablation, or ablation_quick)')
    args = p.parse_args(argv)
    if args.report_only and not args.work_dir:
        p.error('--report-only needs --work-dir, the folder of the finished runs')

    if args.device.startswith('cuda') and not torch.cuda.is_available():
        p.error(f'--device {args.device}: no CUDA device is available')
    budget = BUDGETS[args.budget or ('quick' if args.quick else 'default')]
    overrides = {k: getattr(args, k) for k in ('epochs', 'backbone', 'img_size', 'num_classes', 'train_per_class',
                                               'test_per_class', 'difficulty', 'lr', 'lam', 'ablation_target')
                 if getattr(args, k) is not None}
    for k in ('seeds', 'lambdas', 'target_lambdas', 'targets'):
        if getattr(args, k) is not None:
            overrides[k] = tuple(getattr(args, k))
    if args.output_stride is not None:
        overrides['output_stride'] = args.output_stride or None
    budget = dataclasses.replace(budget, **overrides)
    name = args.name or ('ablation_quick' if args.quick else 'ablation')
    jobs = args.jobs or (1 if args.quick else 2)
    plan = build_plan(budget, args.parts)
    check_uniform_control()
    provenance = run_provenance()  # before any run: the files the workers import now

    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
    else:
        tmp = work = Path(tempfile.mkdtemp(prefix='ggam-ablation-'))
    tasks, rows = [], []
    for seed in budget.seeds:  # seed-major: an interrupted run has whole seeds done (rerun with --work-dir resumes)
        for spec in plan['specs']:
            run_dir = work / f'{spec.key}-s{seed}'
            done = run_dir / 'ablation_row.json'
            if args.work_dir and done.is_file():
                row = json.loads(done.read_text())
                if (row.get('key') == spec.key and row.get('seed') == seed and row.get('budget') == budget_id(budget)
                        and row.get('device', 'cpu') == device_name(args.device)):
                    rows.append(row)
                    continue
            if args.report_only:
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            tasks.append((spec, seed, str(run_dir)))
    reused = len(rows)
    print(f'{len(plan["specs"])} configurations x {len(budget.seeds)} seeds: {len(tasks)} runs to train, {reused} '
          f'reused; {jobs} job(s) x {args.threads} thread(s); {budget.describe()}', flush=True)

    t0 = time.perf_counter()
    try:
        def done_row(row: Dict[str, Any]) -> None:
            rows.append(row)
            print(f'[{len(rows) - reused}/{len(tasks)}] {row["key"]} seed {row["seed"]}: top-1 '
                  f'{100 * row["test_top1"]:.2f}%, H(S) {format_value(row["entropy_S"])}, {row["cpu_s"]:.0f} CPU s, '
                  f'{row["wall_s"]:.0f} s', flush=True)

        if jobs <= 1:
            torch.set_num_threads(args.threads)
            for spec, seed, run_dir in tasks:
                done_row(run_one(spec, budget, seed, run_dir, args.threads, args.keep_runs, args.device,
                                 args.data_path))
        else:  # spawned workers, reused: each keeps the generated data between its runs (`benchmarks.pool`)
            errors: List[str] = []

            def arrived(out: Outcome) -> None:
                if out.error is None:
                    done_row(out.value)
                else:
                    errors.append(f'{out.key[0]} seed {out.key[1]}: {out.error}')

            run_pool(run_one, [((spec.key, seed), (spec, budget, seed, run_dir, args.threads, args.keep_runs,
                                                   args.device, args.data_path)) for spec, seed, run_dir in tasks],
                     jobs, start_method='spawn', on_outcome=arrived)
            if errors:  # every other run is finished and kept (a rerun with --work-dir reuses them)
                raise RuntimeError(f'{len(errors)} of {len(tasks)} runs failed; the first: {errors[0]}')
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    rows.sort(key=lambda r: ([s.key for s in plan['specs']].index(r['key']), r['seed']))
    this = {'wall_s': wall, 'cpu_s': cpu, 'runs_trained': len(tasks), 'jobs': jobs, 'threads': args.threads,
            'load_average': os.getloadavg(), 'ended': time.strftime('%Y-%m-%d %H:%M:%S')}
    invocations = [this]
    if args.work_dir:  # the time of every invocation that trained runs in this folder (a resumed run adds up)
        log = work / 'invocations.json'
        invocations = (json.loads(log.read_text()) if log.is_file() else []) + ([this] if tasks else [])
        log.write_text(json.dumps(invocations, indent=1))
        invocations = invocations or [this]
    meta = {
        'machine': machine_info(),
        'command': command_line('ablation', argv),
        'wall_s': _wall_union(invocations), 'cpu_s': sum(i['cpu_s'] for i in invocations),
        'cpu_s_runs': sum(r['cpu_s'] for r in rows), 'jobs': jobs, 'threads': args.threads,
        'runs_trained': len(tasks), 'runs_reused': reused, 'runs': len(rows), 'invocations': invocations,
        'parts': list(args.parts), 'provenance': provenance,
    }
    for path in write_report(name, Path(args.out_dir), rows, plan, budget, meta):
        print(f'wrote {path}')
    return 0


def _wall_union(invocations: Sequence[Dict[str, Any]]) -> float:
    """Seconds during which at least one invocation ran (invocations run side by side overlap; their sum overstates)."""
    spans = []
    for inv in invocations:
        try:
            end = time.mktime(time.strptime(inv['ended'], '%Y-%m-%d %H:%M:%S'))
        except (KeyError, ValueError):
            return float(sum(i['wall_s'] for i in invocations))
        spans.append((end - inv['wall_s'], end))
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(spans):
        if cur_end is None or start > cur_end:
            total += 0.0 if cur_end is None else cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


if __name__ == '__main__':
    raise SystemExit(main())

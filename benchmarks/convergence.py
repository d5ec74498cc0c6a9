"""Is a study budget long enough to converge? Test top-1 after every epoch, at the budget's epochs and at twice
as many, for the plain head and GGAM (the paper's target, lambda 1), one seed.

    python -m benchmarks.convergence --budget imagenet7 --seed 0 --jobs 2

Each run is the ablation's run (`benchmarks.ablation_run.train_config`: the same data, backbone, recipe and seed)
with the evaluation after every epoch; the cosine schedule spans the run's own epochs, so the longer run is the
recipe stretched, not continued. Writes `convergence_<budget>.json` / `.md` to benchmarks/results.
"""
import argparse
import dataclasses
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.ablation_budgets import BUDGETS
from benchmarks.ablation_plan import make_spec
from benchmarks.ablation_run import study_datasets, train_config
from benchmarks.common import command_line, git_provenance, machine_info, write_results
from benchmarks.pool import run_pool

__all__ = ['ROWS', 'curve', 'main']

ROWS = {'plain': make_spec(False, False, 0.0), 'ggam': make_spec(True, True, 1.0, 'literal')}


def curve(budget_name: str, row: str, epochs: int, seed: int, threads: int = 1) -> Dict[str, Any]:
    """Train one row of a budget for `epochs` epochs with a test evaluation after each; the per-epoch curve."""
    import torch

    from ggam_layers.train import train

    torch.set_num_threads(threads)
    budget = BUDGETS[budget_name]
    train_ds, test_ds = study_datasets(budget)
    t0 = time.process_time()
    with tempfile.TemporaryDirectory(prefix='convergence-') as out:
        cfg = dataclasses.replace(train_config(ROWS[row], budget, seed, out, threads), epochs=epochs, eval_every=1)
        res = train(cfg, train_ds, test_ds)
    hist = res['history']
    return {'row': row, 'epochs': epochs, 'seed': seed, 'test_top1': [h.get('test_top1') for h in hist],
            'train_top1': [h.get('train_top1') for h in hist], 'final_test_top1': res['test_top1'],
            'cpu_s': time.process_time() - t0}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--budget', default='imagenet7', choices=sorted(BUDGETS))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS))
    p.add_argument('--factors', nargs='+', type=float, default=[1.0, 2.0], help='epochs as multiples of the budget')
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out-dir', default='benchmarks/results')
    args = p.parse_args(argv)
    budget = BUDGETS[args.budget]
    tasks = [((row, f), (args.budget, row, max(1, round(budget.epochs * f)), args.seed, args.threads))
             for row in args.rows for f in args.factors]
    t0 = time.perf_counter()
    outcomes = run_pool(curve, tasks, args.jobs)
    failed = [o for o in outcomes.values() if o.error]
    if failed:
        raise SystemExit(f'{len(failed)} run(s) failed: {failed[0].error}')
    rows: List[Dict[str, Any]] = [outcomes[key].value for key, _ in tasks]
    table = [{'row': r['row'], 'epochs': r['epochs'],
              'test top-1 per epoch (%)': ' '.join(f'{100 * v:.1f}' if v is not None else '–' for v in r['test_top1']),
              'final train top-1 (%)': f'{100 * r["train_top1"][-1]:.1f}',
              'final test top-1 (%)': f'{100 * r["final_test_top1"]:.2f}', 'CPU s': f'{r["cpu_s"]:.0f}'}
             for r in rows]
    meta = {'machine': machine_info(), 'command': command_line('convergence', argv), 'budget': budget.describe(),
            'seed': args.seed, 'wall_s': round(time.perf_counter() - t0, 1), 'provenance': git_provenance()}
    write_results(f'convergence_{args.budget}', rows, meta, out_dir=args.out_dir, table_rows=table,
                  title=f'Convergence of the {args.budget} budget (test top-1 after every epoch, seed {args.seed})',
                  notes=['Each run is the ablation\'s run with a test evaluation after every epoch; the cosine '
                         'schedule spans the run\'s epochs, so the longer run stretches the recipe. The budget has '
                         'converged when doubling its epochs moves the final test top-1 by less than the seed spread '
                         'of the study.'],
                  settings=['budget', 'seed', 'wall_s'])
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

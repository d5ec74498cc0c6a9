"""Calibrate the synthetic fine-grained dataset against a plain timm backbone trained from scratch.

Trains the plain timm model (``plain=True``: no attention module, no pretrained weights, cross-entropy) on
``SyntheticFineGrained`` through the package's training API, `ggam_layers.train.train` with the 'synthetic' preset
and this command's backbone, size and recipe (AdamW, weight decay 0.05, half an epoch of warm-up then cosine, flip and
normalisation only), and reports the engine's test top-1 after the last epoch, as JSON and a Markdown table. The
images are generated once per difficulty (timed apart from training); `--seed` seeds both the data and the training.

Rows measured before the script trained through the engine (with a loop of its own: the same optimiser, schedule and
augmentation, its own initialisation, data order and flips) stay in the results, marked `own loop`.

Example::

    python -m benchmarks.synthetic_calibration                      # defaults: resnet10t, 8 epochs, default difficulty
    python -m benchmarks.synthetic_calibration --difficulty 0.4 0.7 1.0 --append
    # the 7 x 7 regime of the evidence study and of the 'synthetic' preset (benchmarks/ablation.py --budget map7)
    python -m benchmarks.synthetic_calibration --model test_resnet --output-stride 16 --img-size 112 \
        --difficulty 0.7 1.0 --epochs 12 --lr 5e-3 --threads 1 --append
"""
import argparse
import dataclasses
import inspect
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch

from benchmarks.common import command_line, git_provenance, machine_info, print_training_log, source_md5, write_results
from ggam_layers.data.synthetic import SyntheticFineGrained
from ggam_layers.train.stats import fmt_pct

__all__ = ['ENGINE', 'OWN_LOOP', 'train_config', 'train_eval', 'main']

ENGINE = 'ggam_layers.train'  # the `trainer` of rows trained through the engine
OWN_LOOP = 'own loop'  # of rows from the script's former loop of its own
COLUMNS = ['model', 'trainer', 'difficulty', 'classes', 'img', 'final map', 'train / test imgs', 'epochs', 'lr',
           'test top-1', 'final train top-1', 's / epoch', 'threads', 'load avg', 'data gen s']


def train_config(args: argparse.Namespace, difficulty: float, output: str):
    """The `TrainConfig` of one run: the 'synthetic' preset, the plain backbone, this command's recipe."""
    from ggam_layers.train import TrainConfig

    cfg = TrainConfig.from_preset(
        'synthetic', model=args.model, plain=True, img_size=args.img_size, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        eval_every=args.eval_every or args.epochs, threads=args.threads, device='cpu', progress=False, output=output,
        overwrite=True)
    # exactly this command's backbone and data arguments (the preset's would otherwise be merged in)
    return dataclasses.replace(
        cfg, dataset_kwargs=dict(num_classes=args.num_classes, samples_per_class=args.train_per_class,
                                 image_size=args.img_size, seed=args.seed, difficulty=difficulty),
        model_kwargs={'output_stride': args.output_stride} if args.output_stride else {})


def _feature_map(args: argparse.Namespace) -> str:
    """'HxW' of the backbone's final feature map at the input size (a fresh model in eval mode, on the meta device)."""
    extra = {'output_stride': args.output_stride} if args.output_stride else {}
    with torch.device('meta'):
        model = timm.create_model(args.model, num_classes=args.num_classes, pretrained=False, **extra).eval()
        shape = model.forward_features(torch.zeros(1, 3, args.img_size, args.img_size)).shape
    return 'x'.join(str(v) for v in shape[-2:])


def train_eval(args: argparse.Namespace, difficulty: float, command: str) -> Dict[str, Any]:
    """Generate the data at one difficulty, train the plain backbone through the engine and report its evaluation.

    Args:
        args: Parsed command line.
        difficulty: Generator difficulty.
        command: The command line, recorded with the row.

    Returns:
        Result row (accuracies, timings, settings, the engine's per-epoch history).
    """
    from ggam_layers.train import train

    ds_kwargs = dict(num_classes=args.num_classes, image_size=args.img_size, seed=args.seed, difficulty=difficulty)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    train_ds = SyntheticFineGrained('train', samples_per_class=args.train_per_class, **ds_kwargs)
    test_ds = SyntheticFineGrained('test', samples_per_class=args.test_per_class, **ds_kwargs)
    train_ds.materialize()  # cached in the datasets: the engine trains on these images
    test_ds.materialize()
    gen_s = time.perf_counter() - t0

    run_dir = tempfile.mkdtemp(prefix='ggam-calibration-')
    try:
        res = train(train_config(args, difficulty, run_dir), train_ds, test_ds, command=command)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    history = res['history']
    epoch_s = [h['epoch_time_s'] for h in history]
    result = {
        'model': args.model,
        'trainer': ENGINE,
        'difficulty': difficulty,
        'num_classes': args.num_classes,
        'img_size': args.img_size,
        'output_stride': args.output_stride or None,
        'feature_map': _feature_map(args),
        'train_images': len(train_ds),
        'test_images': len(test_ds),
        'epochs': args.epochs,
        'batch_size': args.batch_size,
        'lr': args.lr,
        'optimizer': f'AdamW(lr={args.lr}, wd={args.weight_decay}), half-epoch warmup + cosine',
        'augmentation': 'hflip + normalise',
        'seed': args.seed,
        'threads': torch.get_num_threads(),
        'test_top1': res['test_top1'],
        'final_train_top1': res['train_top1'],
        'chance': 1.0 / args.num_classes,
        'seconds_per_epoch': sum(epoch_s) / len(epoch_s),
        'train_seconds': sum(epoch_s),
        'data_generation_seconds': gen_s,
        'eval_seconds': history[-1].get('eval_time_s'),
        'load_avg_1m': [load_start, os.getloadavg()[0]],
        'command': command,
        'machine': machine_info(),
        'history': history,
    }
    print(f'[difficulty {difficulty}] test top-1 {fmt_pct(res["test_top1"])}% '
          f'({result["seconds_per_epoch"]:.1f} s/epoch, data {gen_s:.1f} s)', flush=True)
    return result


def _key(r: Dict[str, Any], trainer: bool = True) -> Tuple[Any, ...]:
    """What makes two rows the same measurement (a new one replaces an old one with `--append`)."""
    recipe = (r['model'], r['difficulty'], r['img_size'], r.get('output_stride') or 0, r['epochs'], r.get('lr'))
    return (r.get('trainer', OWN_LOOP), *recipe) if trainer else recipe


def _cells(r: Dict[str, Any]) -> Dict[str, Any]:
    lr = r.get('lr') or r['optimizer'].split('lr=')[1].split(',')[0]
    return {
        'model': r['model'] + (f' os{r["output_stride"]}' if r.get('output_stride') else ''),
        'trainer': r.get('trainer', OWN_LOOP), 'difficulty': str(r['difficulty']), 'classes': r['num_classes'],
        'img': r['img_size'], 'final map': r.get('feature_map'),
        'train / test imgs': f'{r["train_images"]} / {r["test_images"]}', 'epochs': r['epochs'], 'lr': lr,
        'test top-1': fmt_pct(r['test_top1']) + '%', 'final train top-1': fmt_pct(r['final_train_top1']) + '%',
        's / epoch': f'{r["seconds_per_epoch"]:.1f}', 'threads': r.get('threads', '?'),
        'load avg': '-'.join(f'{v:.1f}' for v in r.get('load_avg_1m', [])),
        'data gen s': f'{r["data_generation_seconds"]:.1f}',
    }


def _notes(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> List[str]:
    r0 = rows[0]
    notes = [
        f'Chance is {fmt_pct(r0["chance"])}%. Trainer `{ENGINE}`: `TrainConfig.from_preset("synthetic", plain=True, '
        '...)` with the table\'s backbone, size, epochs and lr: the plain timm model, cross-entropy, AdamW (weight '
        'decay 0.05), half an epoch of warm-up then cosine, flip and normalisation only, full batches '
        f'(batch {r0["batch_size"]}); test top-1 is the engine\'s evaluation after the last epoch. Trainer '
        f'`{OWN_LOOP}`: the loop this script had before it trained through the engine: the same optimiser, schedule '
        'and augmentation, its own initialisation, data order and flip stream, the last partial batch kept.',
        's / epoch is the wall-clock time of the training steps only; "load avg" is the 1-minute load average at the '
        'start and end of the run (the machine may be shared: a load above the core count slows the run). Each row\'s '
        'machine, command and per-epoch history are in the JSON.',
    ]
    own = {_key(r, trainer=False): r for r in rows if r.get('trainer', OWN_LOOP) == OWN_LOOP}
    both = [(own[_key(r, trainer=False)], r) for r in rows
            if r.get('trainer') == ENGINE and _key(r, trainer=False) in own]
    if both:
        notes.append('The same recipe with both trainers (test top-1, own loop -> engine): ' + '; '.join(
            f'{_cells(e)["model"]}, {e["img_size"]} px, difficulty {e["difficulty"]}: {fmt_pct(o["test_top1"])}% -> '
            f'{fmt_pct(e["test_top1"])}% ({100 * (e["test_top1"] - o["test_top1"]):+.1f} points)'
            for o, e in both) + '. One seed each.')
    notes.append('Commands, in the order they ran (each row comes from the last one that measured it):\n\n'
                 + '\n'.join(f'    {c}' for c in meta['commands']))
    git = meta.get('provenance') or {}
    if git.get('commit'):
        dirty = git.get('uncommitted')
        notes.append(f'Code of the last command: commit {git["commit"][:10]}'
                     + (f', uncommitted changes in {len(dirty)} files under ggam_layers/ (listed in the JSON)'
                        if dirty else '') + f'; md5 of the synthetic generator {meta["synthetic_py_md5"]}.')
    return notes


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Run the calibration and write JSON + Markdown results."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='resnet10t')
    default_difficulty = inspect.signature(SyntheticFineGrained).parameters['difficulty'].default
    parser.add_argument('--difficulty', type=float, nargs='+', default=[default_difficulty])
    parser.add_argument('--num-classes', type=int, default=20)
    parser.add_argument('--img-size', type=int, default=64)
    parser.add_argument('--output-stride', type=int, default=0, help="backbone output stride (0: the model's own)")
    parser.add_argument('--train-per-class', type=int, default=100)
    parser.add_argument('--test-per-class', type=int, default=50)
    parser.add_argument('--epochs', type=int, default=8)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--weight-decay', type=float, default=0.05)
    parser.add_argument('--seed', type=int, default=0, help='seed of the synthetic images and of the training')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--eval-every', type=int, default=0, help='also evaluate every N epochs (0: only at the end)')
    parser.add_argument(
        '--append', action='store_true', help='merge into existing results (the same measurement is replaced)')
    parser.add_argument('--output', default='benchmarks/results/synthetic_calibration',
                        help='result path without suffix (.json and .md are written)')
    parser.add_argument('--note', action='append', default=[],
                        help='a paragraph for the Markdown notes (repeatable; kept by later --append runs)')
    parser.add_argument('--report-only', action='store_true',
                        help='train nothing: rewrite the report of the existing results (e.g. with a --note)')
    args = parser.parse_args(argv)
    out = Path(args.output)
    old = json.loads(out.with_suffix('.json').read_text()) if out.with_suffix('.json').exists() else None
    if args.report_only and old is None:
        parser.error(f'--report-only needs existing results in {out.with_suffix(".json")}')
    if args.report_only:  # the measurements and the machine and command that made them stay as they are
        results, rows, meta = [], old['rows'], dict(old['meta'], notes=old['meta'].get('notes', []) + args.note)
    else:
        torch.set_num_threads(args.threads)
        print_training_log()
        command = command_line('synthetic_calibration', argv)
        results = [train_eval(args, d, command) for d in args.difficulty]
        rows, commands, notes = results, [command], args.note
        if args.append and old is not None:
            new_keys = {_key(r) for r in results}
            rows = [r for r in old['rows'] if _key(r) not in new_keys] + results
            rows.sort(key=lambda r: (r['model'], r['img_size'], r['difficulty'], r.get('trainer', OWN_LOOP) == ENGINE))
            commands = old['meta'].get('commands', []) + commands
            notes = old['meta'].get('notes', []) + notes
        meta = {'machine': machine_info(), 'command': command, 'commands': commands, 'notes': notes,
                'provenance': git_provenance(), 'synthetic_py_md5': source_md5(SyntheticFineGrained)}
    notes = _notes(rows, meta) + meta['notes']
    paths = write_results(out.name, rows, meta, out_dir=str(out.parent), columns=COLUMNS, notes=notes,
                          title='Synthetic fine-grained calibration (plain backbone, from scratch)',
                          table_rows=[_cells(r) for r in rows], settings=[])
    print('wrote', ' and '.join(map(str, paths)))
    return results


if __name__ == '__main__':
    main()

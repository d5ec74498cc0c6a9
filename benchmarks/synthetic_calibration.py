"""Calibrate the synthetic fine-grained dataset against a plain timm backbone trained from scratch.

Trains ``timm.create_model(model, num_classes=...)`` (no attention module, no pretrained weights) on
``SyntheticFineGrained`` under the package's default CPU budget and reports test top-1, as JSON and a Markdown table.
Augmentation is only a random horizontal flip and normalisation (no random-resized crop). The images are generated
once and kept as a uint8 tensor; flip and normalisation are applied per batch.

Example::

    python benchmarks/synthetic_calibration.py                      # defaults: resnet10t, 8 epochs, default difficulty
    python benchmarks/synthetic_calibration.py --difficulty 0.4 0.7 1.0 --append
    # the 7 x 7 regime of the evidence study and of the 'synthetic' preset (benchmarks/ablation.py --budget map7)
    python benchmarks/synthetic_calibration.py --model test_resnet --output-stride 16 --img-size 112 \
        --difficulty 0.7 1.0 --epochs 12 --lr 5e-3 --threads 1 --append
"""

import argparse
import inspect
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ggam_layers.data.synthetic import SyntheticFineGrained  # noqa: E402
from ggam_layers.engine.loop import lr_factor  # noqa: E402

__all__ = ['main', 'train_eval']

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Dict[str, Any]:
    """CPU model, core count and library versions."""
    return {
        'cpu': _cpu_model(),
        'cores': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'numpy': np.__version__,
        'platform': platform.platform(),
    }


def _load(ds: SyntheticFineGrained) -> Tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(ds.materialize()).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(ds.targets, dtype=torch.long)
    return x, y


def _prep(x: torch.Tensor, train: bool, generator: torch.Generator) -> torch.Tensor:
    x = x.float()
    if train:
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    return ((x - _MEAN) / _STD).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        logits = model(_prep(x[i : i + batch_size], False, None))
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum().item()
    return correct / x.shape[0]


def train_eval(args: argparse.Namespace, difficulty: float) -> Dict[str, Any]:
    """Generate the data at one difficulty, train the plain backbone and evaluate it.

    Args:
        args: Parsed command line.
        difficulty: Generator difficulty.

    Returns:
        Result row (accuracies, timings, settings).
    """
    ds_kwargs = dict(
        num_classes=args.num_classes,
        image_size=args.img_size,
        seed=args.seed,
        difficulty=difficulty,
    )
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    train_ds = SyntheticFineGrained('train', samples_per_class=args.train_per_class, **ds_kwargs)
    test_ds = SyntheticFineGrained('test', samples_per_class=args.test_per_class, **ds_kwargs)
    x_tr, y_tr = _load(train_ds)
    x_te, y_te = _load(test_ds)
    gen_s = time.perf_counter() - t0

    torch.manual_seed(args.seed)
    extra = {'output_stride': args.output_stride} if args.output_stride else {}
    model = timm.create_model(args.model, num_classes=args.num_classes, pretrained=False, **extra)
    with torch.no_grad():  # eval mode: the probe must not touch BatchNorm statistics
        feature_map = 'x'.join(str(v) for v in model.eval().forward_features(x_te[:1].float()).shape[-2:])
    model.train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(x_tr.shape[0] / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = steps_per_epoch // 2

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup))
    g = torch.Generator().manual_seed(args.seed)
    epoch_times: List[float] = []
    history = []
    for epoch in range(args.epochs):
        model.train()
        t_ep = time.perf_counter()
        perm = torch.randperm(x_tr.shape[0], generator=g)
        loss_sum, correct = 0.0, 0
        for i in range(0, x_tr.shape[0], args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb, yb = _prep(x_tr[idx], True, g), y_tr[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * idx.numel()
            correct += (logits.argmax(1) == yb).sum().item()
        epoch_times.append(time.perf_counter() - t_ep)
        row = {
            'epoch': epoch + 1,
            'train_loss': loss_sum / x_tr.shape[0],
            'train_top1': correct / x_tr.shape[0],
            'seconds': epoch_times[-1],
        }
        if args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs:
            row['test_top1'] = _evaluate(model, x_te, y_te, 256)
        history.append(row)
        print(f'[difficulty {difficulty}] ' + ', '.join(f'{k}={v:.4g}' for k, v in row.items()), flush=True)
    t_eval = time.perf_counter()
    test_top1 = _evaluate(model, x_te, y_te, 256)
    eval_s = time.perf_counter() - t_eval
    result = {
        'model': args.model,
        'difficulty': difficulty,
        'num_classes': args.num_classes,
        'img_size': args.img_size,
        'output_stride': args.output_stride or None,
        'feature_map': feature_map,
        'train_images': int(x_tr.shape[0]),
        'test_images': int(x_te.shape[0]),
        'epochs': args.epochs,
        'batch_size': args.batch_size,
        'lr': args.lr,
        'optimizer': f'AdamW(lr={args.lr}, wd={args.weight_decay}), half-epoch warmup + cosine',
        'augmentation': 'hflip + normalise',
        'seed': args.seed,
        'threads': torch.get_num_threads(),
        'test_top1': test_top1,
        'final_train_top1': history[-1]['train_top1'],
        'chance': 1.0 / args.num_classes,
        'seconds_per_epoch': float(np.mean(epoch_times)),
        'train_seconds': float(np.sum(epoch_times)),
        'data_generation_seconds': gen_s,
        'eval_seconds': eval_s,
        'load_avg_1m': [load_start, os.getloadavg()[0]],
        'history': history,
    }
    print(
        f'[difficulty {difficulty}] test top-1 {100 * test_top1:.1f}% '
        f'({np.mean(epoch_times):.1f} s/epoch, data {gen_s:.1f} s)',
        flush=True,
    )
    return result


def _markdown(results: List[Dict[str, Any]], info: Dict[str, Any], commands: List[str]) -> str:
    lines = [
        '# Synthetic fine-grained calibration (plain backbone, from scratch)',
        '',
        'Commands:',
        '',
        *[f'    {c}' for c in commands],
        '',
        f'Machine: {info["cpu"]}, {info["cores"]} cores, '
        f'torch {info["torch"]}, timm {info["timm"]}, Python {info["python"]}.',
        '',
        '| model | difficulty | classes | img | final map | train / test imgs | epochs | lr | test top-1 '
        '| final train top-1 | s / epoch | threads | load avg | data gen s |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in results:
        lines.append(
            f'| {r["model"]}{" os" + str(r["output_stride"]) if r.get("output_stride") else ""} | {r["difficulty"]} '
            f'| {r["num_classes"]} | {r["img_size"]} | {r.get("feature_map", "")} '
            f'| {r["train_images"]} / {r["test_images"]} | {r["epochs"]} '
            f'| {r.get("lr") or r["optimizer"].split("lr=")[1].split(",")[0]} | {100 * r["test_top1"]:.1f}% '
            f'| {100 * r["final_train_top1"]:.1f}% | {r["seconds_per_epoch"]:.1f} | {r.get("threads", "?")} '
            f'| {"-".join(f"{v:.1f}" for v in r.get("load_avg_1m", []))} '
            f'| {r["data_generation_seconds"]:.1f} |'
        )
    r0 = results[0]
    lines += [
        '',
        f'Chance is {100 * r0["chance"]:.1f}%. Optimiser: AdamW (weight decay 0.05, lr as in the table), half-epoch '
        f'warm-up + cosine; batch {r0["batch_size"]}; '
        f'augmentation: {r0["augmentation"]}; seed {r0["seed"]}.',
        's / epoch is the wall-clock time of the training steps only; "load avg" is the 1-minute load average at the '
        'start and end of the run (the machine may be shared: a load above the core count slows the run).',
        '',
    ]
    return '\n'.join(lines)


def main(argv: List[str] = None) -> List[Dict[str, Any]]:
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
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--eval-every', type=int, default=0, help='also evaluate every N epochs (0: only at the end)')
    parser.add_argument(
        '--append', action='store_true', help='merge into existing results (same model + difficulty is replaced)'
    )
    parser.add_argument('--output', default=str(Path(__file__).resolve().parent / 'results' / 'synthetic_calibration'))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    info = machine_info()
    results = [train_eval(args, d) for d in args.difficulty]
    command = 'python benchmarks/synthetic_calibration.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    commands = [command.strip()]
    rows = results
    if args.append and out.with_suffix('.json').exists():
        with open(out.with_suffix('.json')) as f:
            old = json.load(f)
        def key(r: Dict[str, Any]) -> Tuple[Any, ...]:
            return r['model'], r['difficulty'], r['img_size'], r.get('output_stride') or 0, r['epochs'], r.get('lr')

        new_keys = {key(r) for r in results}
        rows = [r for r in old['results'] if key(r) not in new_keys] + results
        rows.sort(key=lambda r: (r['model'], r['img_size'], r['difficulty']))
        commands = old.get('commands', [old.get('command', '')]) + commands
    with open(out.with_suffix('.json'), 'w') as f:
        json.dump({'commands': commands, 'machine': info, 'results': rows}, f, indent=2)
    with open(out.with_suffix('.md'), 'w') as f:
        f.write(_markdown(rows, info, commands))
    print(f'wrote {out.with_suffix(".json")} and {out.with_suffix(".md")}')
    return results


if __name__ == '__main__':
    main()

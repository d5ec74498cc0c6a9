"""Evaluate a run directory's model with the preprocessing it was trained with (`ggam-layers eval`).

`evaluate` is re-exported by `ggam_layers.train`; the training loop uses the same evaluation loader.
"""
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .._files import WEIGHTS_NAME, check_safetensors, load_weights
from ..data.loader import SeededTransformDataset, ShardSampler, build_loader, build_transform
from .build import build_dataset, build_model, num_classes_of, prepare_generated, scan_data, usable_cores
from .config import TrainConfig
from .distributed import DistInfo, cleanup_distributed, init_distributed
from .loop import amp_dtype_for, evaluate_model
from .report import write_report
from .run_dir import RESULTS_NAME, read_run_config

__all__ = ['evaluate', 'build_eval_loader', 'loader_workers']


def loader_workers(cfg: TrainConfig, ds: Any, info: DistInfo) -> int:
    """DataLoader workers: `cfg.workers`, or when None 0 for in-memory data (the synthetic set: worker processes only
    add overhead) and for image files the usable cores divided by the processes on this node, at most 8."""
    if cfg.workers is not None:
        return cfg.workers
    if callable(getattr(ds, 'generate', None)):
        return 0
    return min(8, max(1, usable_cores() // info.local_world_size))


def build_eval_loader(eval_ds: Any, transform: Any, cfg: TrainConfig, info: DistInfo, pin: bool) -> Any:
    """The evaluation DataLoader: `eval_ds` with `transform` (unseeded), this rank's shard, `cfg.eval_batch_size`."""
    wrapped = SeededTransformDataset(eval_ds, transform, seed=cfg.seed, seeded=False)
    return build_loader(wrapped, cfg.eval_batch_size, ShardSampler(len(wrapped), info.rank, info.world_size),
                        num_workers=loader_workers(cfg, eval_ds, info), pin_memory=pin)


def evaluate(
        checkpoint: str,
        split: Optional[str] = None,
        data_root: Optional[str] = None,
        batch_size: Optional[int] = None,
        device: str = 'auto',
        workers: Optional[int] = None,
        progress: bool = True,
        eval_dataset: Any = None,
        tta: str = 'none',
        report_dir: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate a run directory's model with the preprocessing it was trained with.

    Args:
        checkpoint: Run directory (config.json + model.safetensors).
        split: Split to evaluate (default: the run's `eval_split`).
        data_root: Dataset folder if it moved since training.
        batch_size: Per-process batch size (default: the run's `eval_batch_size`, which reproduces its numbers).
        device: 'auto', 'cpu', 'cuda', ...
        workers: DataLoader workers (default: the run's).
        progress: Show a progress bar.
        eval_dataset: Use this dataset instead of building it from the run's config.
        tta: Test-time augmentation: 'none', 'flip' (the softmax averaged over the image and its horizontal flip) or
            'flip-crops' (and over four corner crops of 87.5%, each flipped too: 10 views).
        report_dir: Also write `per_class.csv`, `confusion.csv` and `confusion.png` (the viz extra) there.

    Returns:
        {'top1', 'top5', 'loss', 'count', 'tta', 'mean_per_class_top1', 'per_class_top1', 'per_class_count',
        'confusion', 'class_names', 'split', 'recorded_top1' (the run's final test top-1 when `split` is its eval
        split and no TTA is used), 'matches_recorded', 'report_files'}.
    """
    out = Path(checkpoint)
    if out.is_file():
        out = out.parent
    config = read_run_config(out)
    info_cfg = config['ggam_layers']
    cfg = TrainConfig.from_dict(info_cfg['train_config'])
    overrides = {'device': device}
    if data_root is not None:
        overrides['data_root'] = data_root
    if batch_size is not None:
        overrides['eval_batch_size'] = batch_size
    if workers is not None:
        overrides['workers'] = workers
    cfg = dataclasses.replace(cfg, **overrides)
    split = split or cfg.eval_split
    dist_info = init_distributed(cfg.device)
    try:
        torch.set_num_threads(cfg.threads or max(1, usable_cores() // dist_info.local_world_size))
        weights = out / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f'{weights} is missing: the run has not finished an epoch yet')
        check_safetensors(weights)  # a damaged file stops here, before the data is read
        if eval_dataset is None:
            eval_dataset = build_dataset(cfg, split)
        scanned, skipped = scan_data(dataclasses.replace(cfg, eval_split=split), {'eval': eval_dataset}, dist_info,
                                     progress and dist_info.is_main)
        eval_dataset = scanned['eval']
        num_classes = config.get('num_classes') or num_classes_of(eval_dataset)
        model = build_model(cfg, num_classes, pretrained=False)
        load_weights(model, weights)
        model.to(dist_info.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        transform = build_transform(info_cfg['data_config'], is_training=False)
        prepare_generated(eval_dataset, progress and dist_info.is_main, f'generating {split} images')
        loader = build_eval_loader(eval_dataset, transform, cfg, dist_info, dist_info.device.type == 'cuda')
        amp_dtype = amp_dtype_for(cfg.amp, cfg.amp_dtype, dist_info.device)
        res = evaluate_model(model, loader, dist_info.device, amp_dtype, cfg.channels_last, dist_info,
                             progress and dist_info.is_main, desc=f'eval {split}', tta=tta)
        is_main = dist_info.is_main
    finally:
        cleanup_distributed(dist_info)
    res['class_names'] = config.get('label_names')
    res['report_files'] = [str(p) for p in write_report(res, Path(report_dir), res['class_names'])] if (
        report_dir is not None and is_main) else []
    res['split'] = split
    res['skipped_images'] = skipped['eval']
    res['skipped_files'] = skipped['files']
    recorded = None
    results_file = out / RESULTS_NAME
    if split == cfg.eval_split and tta == 'none' and results_file.is_file():
        recorded = json.loads(results_file.read_text(encoding='utf-8')).get('test_top1')
    res['recorded_top1'] = recorded
    res['matches_recorded'] = None if recorded is None else recorded == res['top1']
    return res

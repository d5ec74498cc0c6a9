"""Train and evaluate GGAM models, and the plain timm backbone as the baseline, on fine-grained datasets.

Python::

    from ggam_layers.train import TrainConfig, train, evaluate
    cfg = TrainConfig.from_preset('synthetic', output='runs/ggam', lam=1.0)
    result = train(cfg)                       # dict of final metrics (test_top1, test_top5, ...)
    evaluate('runs/ggam')['top1'] == result['test_top1']

Command line (`ggam-layers train --help`)::

    ggam-layers train --compare-plain                    # GGAM and the plain backbone on the synthetic set
    ggam-layers train --preset paper --data-root CUB_200_2011 --output runs/cub
    torchrun --nproc-per-node 4 -m ggam_layers train --preset paper --data-root CUB_200_2011
    ggam-layers eval --checkpoint runs/cub

A run directory holds `config.json` (timm model config; the run's settings under `ggam_layers`), the latest
`model.safetensors`, `metrics.csv` / `metrics.jsonl` (one row per epoch), `results.json` (final metrics) and
`checkpoints/epoch-NNNN/` (weights + optimizer, schedule and RNG state) for `--resume`. The data order and every
random augmentation depend only on (seed, epoch, sample index), so a resumed run ends with the same weights as an
uninterrupted one, and `--batch-size` is the global batch whatever the number of processes.
"""
import dataclasses
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .engine.checkpoint import (
    CONFIG_NAME,
    TMP_PREFIX,
    WEIGHTS_NAME,
    CheckpointError,
    CheckpointWriteError,
    atomic_write_json,
    check_safetensors,
    clean_partial,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .engine.data import (
    EpochSampler,
    SeededTransformDataset,
    ShardSampler,
    build_loader,
    build_transform,
    derive_seed,
)
from .engine.device_data import device_loaders, wants_device_data
from .engine.distributed import (
    DistInfo,
    barrier,
    broadcast_buffers,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    replica_max_abs_diff,
)
from .engine.loop import StepOptions, TrainForward, amp_dtype_for, evaluate_model, lr_factor, train_one_epoch
from .engine.metrics import METRIC_COLUMNS, MetricsWriter
from .engine.progress import progress
from .engine.signals import InterruptGuard, TrainingInterrupted
from .loss import GGAMLoss
from .model import GGAMModel
from .run_dir import RESULTS_NAME, clear_run_dir, config_differences, default_output, is_nonempty_dir, read_run_config
from .train_cli import add_train_args, compare_requested, config_from_args, register_cli
from .train_config import AMP_DTYPES, CAM_CLASSES, OPTIMIZERS, PRESETS, RESUME_MUTABLE_FIELDS, SCHEDULES, TrainConfig

__all__ = [
    'TrainConfig', 'PRESETS', 'RESUME_MUTABLE_FIELDS', 'train', 'train_compare', 'evaluate', 'evaluate_model',
    'build_model', 'build_datasets', 'resolve_data_config', 'lr_factor', 'register_cli', 'format_comparison',
    'add_train_args', 'config_from_args', 'compare_requested', 'OPTIMIZERS', 'SCHEDULES', 'AMP_DTYPES', 'CAM_CLASSES',
    'RESULTS_NAME',
]

_logger = logging.getLogger(__name__)

_STATE_VERSION = 1



# --- building blocks -------------------------------------------------------------------------------------------------
def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _create_dataset(cfg: TrainConfig, split: str) -> Any:
    from .data.builder import create_dataset
    kw = dict(cfg.dataset_kwargs)
    if cfg.dataset == 'synthetic':
        kw.setdefault('image_size', cfg.img_size)  # render at the input size
    return create_dataset(cfg.dataset, root=cfg.data_root, split=split, **kw)


def build_datasets(cfg: TrainConfig) -> Tuple[Any, Any]:
    """The training and evaluation datasets of `cfg` (without transforms: they return PIL images)."""
    return _create_dataset(cfg, cfg.train_split), _create_dataset(cfg, cfg.eval_split)


def _num_classes(ds: Any) -> int:
    n = getattr(ds, 'num_classes', None)
    if n is None:
        names = getattr(ds, 'class_names', None) or getattr(ds, 'classes', None)
        if names is None:
            raise ValueError(f'dataset {type(ds).__name__} has no num_classes or class_names attribute')
        n = len(names)
    return int(n)


def _class_names(ds: Any) -> Optional[List[str]]:
    names = getattr(ds, 'class_names', None) or getattr(ds, 'classes', None)
    return [str(n) for n in names] if names is not None else None


def _fixed_input_size(name: str) -> bool:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # hf-hub: names and unknown tags
        cfg = None
    return bool(cfg is not None and cfg.fixed_input_size)


def build_model(cfg: TrainConfig, num_classes: int, pretrained: Optional[bool] = None) -> nn.Module:
    """The model of `cfg`: `timm.create_model('ggam', backbone=cfg.model, ...)` (what `wrap_timm_model` builds,
    plus timm's record of the arguments, so the saved config.json reloads with `local-dir:`), or the plain timm
    model with `cfg.plain`.

    Args:
        cfg: Run config.
        num_classes: Classes of the classifier.
        pretrained: Override `cfg.pretrained` / `cfg.pretrained_file` (False when weights are loaded afterwards).
    """
    kwargs = dict(cfg.model_kwargs)
    if cfg.drop_path_rate is not None:
        kwargs['drop_path_rate'] = cfg.drop_path_rate
    if _fixed_input_size(cfg.model) and 'img_size' not in kwargs:
        kwargs['img_size'] = cfg.img_size
    use_pretrained = (cfg.pretrained or bool(cfg.pretrained_file)) if pretrained is None else pretrained
    if use_pretrained and cfg.pretrained_file:
        kwargs['pretrained_cfg_overlay'] = dict(file=str(cfg.pretrained_file))
    try:
        if cfg.plain:
            return timm.create_model(cfg.model, pretrained=use_pretrained, num_classes=num_classes,
                                     drop_rate=cfg.drop_rate, **kwargs)
        return timm.create_model(
            'ggam', backbone=cfg.model, pretrained=use_pretrained, num_classes=num_classes,
            channel_attn=cfg.channel_attn, spatial_attn=cfg.spatial_attn, spatial_norm=cfg.spatial_norm,
            temperature=cfg.attn_temperature, pool_type=cfg.pool_type, cam_layer=cfg.cam_layer, rd_ratio=cfg.rd_ratio,
            drop_rate=cfg.drop_rate, **({'channel_rescale': True} if cfg.channel_rescale else {}), **kwargs)
    except (KeyError, RuntimeError) as e:
        if not (use_pretrained and cfg.pretrained_file):
            raise
        reason = ' '.join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())[:400]
        raise CheckpointError(
            f'--pretrained-file {cfg.pretrained_file} does not fit backbone {cfg.model!r} ({reason}): pass the '
            f'weights of {cfg.model} itself (a timm checkpoint of that backbone, or a ggam-layers model.safetensors '
            'trained on it), or change --model to the backbone the file was saved from') from e


def resolve_data_config(cfg: TrainConfig, model: nn.Module) -> Dict[str, Any]:
    """timm's data config of the backbone (mean, std, interpolation, crop) with the run's overrides applied."""
    from timm.data import resolve_data_config as timm_resolve
    src = model.backbone if isinstance(model, GGAMModel) else model
    dc = dict(timm_resolve({}, model=src))
    dc['input_size'] = (3, cfg.img_size, cfg.img_size)
    for key in ('crop_pct', 'crop_mode', 'interpolation', 'mean', 'std'):
        if getattr(cfg, key) is not None:
            dc[key] = getattr(cfg, key)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dc.items()}


def _param_groups(model: nn.Module, cfg: TrainConfig) -> List[Dict[str, Any]]:
    if isinstance(model, GGAMModel):
        head_modules = [model.head]
    else:  # the plain model's classifier; timm's get_classifier() may give a tuple of modules
        clf = model.get_classifier()
        head_modules = [m for m in (clf if isinstance(clf, (tuple, list)) else (clf,)) if isinstance(m, nn.Module)]
    head = [p for m in head_modules for p in m.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [
        {'params': backbone, 'lr': cfg.lr * cfg.backbone_lr_scale, 'name': 'backbone'},
        {'params': head, 'lr': cfg.lr, 'name': 'head'},
    ]
    for g in groups:
        g['initial_lr'] = g['lr']
        g['weight_decay'] = cfg.weight_decay
    return [g for g in groups if g['params']]


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    if cfg.opt == 'sgd':
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'python': [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _prepare_generated(ds: Any, show: bool, desc: str) -> None:
    """Generate an on-demand dataset (one with `generate(i)` and a `cache`) once, up front."""
    gen = getattr(ds, 'generate', None)
    if callable(gen) and getattr(ds, 'cache', False):
        for i in progress(range(len(ds)), desc=desc, disable=not show):
            gen(i)



def _model_config(model: nn.Module, cfg: TrainConfig, data_config: Dict[str, Any], class_names, num_classes: int,
                  command: Optional[str], tmp_parent: Optional[Path] = None) -> Dict[str, Any]:
    """timm's config.json of the model (what `local-dir:` reads) with the run under the `ggam_layers` key."""
    from timm.models import save_for_hf

    from . import __version__
    model_args: Dict[str, Any] = {}
    if isinstance(model, GGAMModel):
        from .hub import ggam_model_args
        model_args = ggam_model_args(model)
    info = {
        'version': __version__,
        'paper': 'arXiv:2101.09666',
        'dataset': {'name': cfg.dataset, 'train_split': cfg.train_split, 'eval_split': cfg.eval_split,
                    'num_classes': num_classes, **({'kwargs': cfg.dataset_kwargs} if cfg.dataset_kwargs else {})},
        'recipe': command or _recipe(cfg),
        'kind': 'plain' if cfg.plain else 'ggam',
        'data_config': data_config,
        'train_config': asdict(cfg),
    }
    model_config: Dict[str, Any] = {'ggam_layers': info}
    if class_names and len(class_names) == num_classes:
        model_config['label_names'] = list(class_names)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + 'config.', dir=tmp_parent))
    try:
        save_for_hf(model, tmp, model_config=model_config, model_args=model_args, safe_serialization=True,
                    data_config={k: v for k, v in data_config.items()
                                 if k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')})
        config = json.loads((tmp / CONFIG_NAME).read_text(encoding='utf-8'))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(model, GGAMModel):  # the GGAM head pools D itself (pool_type); timm's global_pool does not apply
        config.pop('global_pool', None)
        config.get('model_args', {}).pop('global_pool', None)
    config['pretrained_cfg'] = {k: v for k, v in config['pretrained_cfg'].items() if v is not None}
    return config


def _recipe(cfg: TrainConfig) -> Dict[str, Any]:
    d = asdict(cfg)
    return {k: v for k, v in d.items() if k not in RESUME_MUTABLE_FIELDS}


def _fmt_pct(v: Optional[float]) -> str:
    return '-' if v is None else f'{100 * v:.2f}%'


# --- evaluation ------------------------------------------------------------------------------------------------------
def _num_workers(cfg: TrainConfig, ds: Any, info: DistInfo) -> int:
    """DataLoader workers: `cfg.workers`, or when None 0 for in-memory data (the synthetic set: worker processes only
    add overhead) and for image files the usable cores divided by the processes on this node, at most 8."""
    if cfg.workers is not None:
        return cfg.workers
    if callable(getattr(ds, 'generate', None)):
        return 0
    return min(8, max(1, _usable_cores() // info.local_world_size))


def _eval_loader(eval_ds: Any, transform, cfg: TrainConfig, info: DistInfo, pin: bool):
    wrapped = SeededTransformDataset(eval_ds, transform, seed=cfg.seed, seeded=False)
    return build_loader(wrapped, cfg.eval_batch_size, ShardSampler(len(wrapped), info.rank, info.world_size),
                        num_workers=_num_workers(cfg, eval_ds, info), pin_memory=pin)


def evaluate(
        checkpoint: str,
        split: Optional[str] = None,
        data_root: Optional[str] = None,
        batch_size: Optional[int] = None,
        device: str = 'auto',
        workers: Optional[int] = None,
        progress: bool = True,
        eval_dataset: Any = None,
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

    Returns:
        {'top1', 'top5', 'loss', 'count', 'split', 'recorded_top1' (the run's final test top-1 when `split` is its
        eval split), 'matches_recorded'}.
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
        torch.set_num_threads(cfg.threads or max(1, _usable_cores() // dist_info.local_world_size))
        weights = out / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f'{weights} is missing: the run has not finished an epoch yet')
        check_safetensors(weights)  # a damaged file stops here, before the data is read
        if eval_dataset is None:
            eval_dataset = _create_dataset(cfg, split)
        scanned, skipped = _scan_data(dataclasses.replace(cfg, eval_split=split), {'eval': eval_dataset}, dist_info,
                                      progress and dist_info.is_main)
        eval_dataset = scanned['eval']
        num_classes = config.get('num_classes') or _num_classes(eval_dataset)
        model = build_model(cfg, num_classes, pretrained=False)
        load_weights(model, weights)
        model.to(dist_info.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        transform = build_transform(info_cfg['data_config'], is_training=False)
        _prepare_generated(eval_dataset, progress and dist_info.is_main, f'generating {split} images')
        loader = _eval_loader(eval_dataset, transform, cfg, dist_info, dist_info.device.type == 'cuda')
        amp_dtype = amp_dtype_for(cfg.amp, cfg.amp_dtype, dist_info.device)
        res = evaluate_model(model, loader, dist_info.device, amp_dtype, cfg.channels_last, dist_info,
                             progress and dist_info.is_main, desc=f'eval {split}')
    finally:
        cleanup_distributed(dist_info)
    res['split'] = split
    res['skipped_images'] = skipped['eval']
    res['skipped_files'] = skipped['files']
    recorded = None
    results_file = out / RESULTS_NAME
    if split == cfg.eval_split and results_file.is_file():
        recorded = json.loads(results_file.read_text(encoding='utf-8')).get('test_top1')
    res['recorded_top1'] = recorded
    res['matches_recorded'] = None if recorded is None else recorded == res['top1']
    return res


# --- training --------------------------------------------------------------------------------------------------------
def _check_output(cfg: TrainConfig, info: DistInfo) -> Tuple[TrainConfig, Path]:
    """Resolve the run directory and check overwrite / resume; reads only, writes nothing."""
    out = Path(broadcast_object(cfg.output or default_output(cfg, '-plain' if cfg.plain else ''), info))
    cfg = dataclasses.replace(cfg, output=str(out))
    if cfg.resume:
        saved = TrainConfig.from_dict(read_run_config(out)['ggam_layers']['train_config'])
        diff = config_differences(saved, cfg)
        if diff:
            raise ValueError(
                f'resume: {", ".join(f"{k}={getattr(cfg, k)!r} (saved {getattr(saved, k)!r})" for k in diff)} '
                f'differ from the run in {out}; only {sorted(RESUME_MUTABLE_FIELDS)} may change on resume')
    elif is_nonempty_dir(out) and not cfg.overwrite:
        raise FileExistsError(f'output directory {out} is not empty; pass --overwrite (overwrite=True) to replace '
                              'its run files, or --resume to continue it')
    return cfg, out


def _init_output(cfg: TrainConfig, out: Path, info: DistInfo) -> None:
    """Create (or clear, with overwrite) the run directory: the first write of a run, after every check."""
    barrier(info)  # every rank has checked before rank 0 touches the folder
    if info.is_main:
        if cfg.overwrite and not cfg.resume and out.is_dir():
            clear_run_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        clean_partial(out)
    barrier(info)


def _check_batch_size(cfg: TrainConfig, n: int, skipped: int = 0) -> None:
    if n < cfg.batch_size:
        extra = f' after skipping {skipped} unreadable images' if skipped else ''
        raise ValueError(f'batch_size {cfg.batch_size} is larger than the training set ({n} images{extra}); pass '
                         f'--batch-size {_pow2_floor(n)} or less')


def _pow2_floor(n: int) -> int:
    """The largest power of two not above n (a batch size to suggest)."""
    return 1 << (max(n, 1).bit_length() - 1)


def _scan_data(cfg: TrainConfig, datasets: Dict[str, Any], info: DistInfo, show: bool) -> Tuple[Dict[str, Any],
                                                                                                  Dict[str, Any]]:
    """Check the image files of each split once (`data.integrity.scan_images`); returns the datasets without the
    unreadable files and a report {'train': n, 'eval': n, 'files': [{'split', 'path', 'reason'}, ...]}."""
    from .data.integrity import scan_images
    report: Dict[str, Any] = {'files': []}
    out = {}
    for split, ds in datasets.items():
        name = f'{cfg.dataset} {getattr(cfg, f"{split}_split")}'

        def bar(indices, desc=f'checking {name} images'):
            return tqdm(indices, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
        out[split], rep = scan_images(ds, strict=cfg.strict_data, max_bad_fraction=cfg.max_bad_fraction, name=name,
                                      progress=bar, log=info.is_main)
        report[split] = rep.skipped
        report['files'] += [{'split': split, 'path': b.path, 'reason': b.reason} for b in rep.bad]
    return out, report


def _resume_state(out: Path, model: nn.Module, label: str, main: bool) -> Tuple[Optional[Path], Dict[str, Any]]:
    """Load the newest intact checkpoint of `out` into `model`; a damaged newer one is reported and passed over."""
    ckpts = list_checkpoints(out)
    damaged = []
    for ckpt in reversed(ckpts):
        try:
            state = load_checkpoint(ckpt, model, map_location='cpu')
        except CheckpointError as e:
            damaged.append(f'{ckpt.name}: {e}')
            if main:
                _logger.warning('[%s] checkpoint %s is damaged (%s); falling back to the previous one', label, ckpt, e)
            continue
        if state.get('format_version') != _STATE_VERSION:
            raise ValueError(f'{ckpt}: training state format {state.get("format_version")} is not supported')
        if damaged and main:
            msg = (f'[{label}] resuming from {ckpt.name}, the newest intact checkpoint: '
                   f'{", ".join(d.split(":")[0] for d in damaged)} damaged (see the warning above)')
            print(msg, file=sys.stderr, flush=True)
        return ckpt, state
    if damaged:
        raise CheckpointError(f'every checkpoint of {out} is damaged, nothing to resume from: ' + ' | '.join(damaged))
    return None, {}


def _stopped_message(out: Path, label: str, exc: BaseException) -> str:
    last = list_checkpoints(out)
    kept = (f'the last complete checkpoint is {last[-1]} (epoch {int(last[-1].name.split("-")[1])})' if last
            else 'no epoch had finished, so there is no checkpoint yet')
    if isinstance(exc, TrainingInterrupted):
        why = f'interrupted by {exc.name}'
    else:  # under DDP, typically another process of the job died
        why = f'stopped by {type(exc).__name__} ({" ".join(str(exc).split())[:160]})'
    run = out
    if out.name in ('ggam', 'plain') and (out.parent / 'ggam').is_dir() and not (out.parent / CONFIG_NAME).is_file():
        run = out.parent  # a --compare-plain run: resuming the parent continues both models
    return (f'[{label}] {why}: {kept}. Continue with: ggam-layers train --resume {run} (under torchrun, the same '
            'torchrun command with --resume); it ends with the weights of an uninterrupted run')


def train(
        cfg: TrainConfig,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        command: Optional[str] = None,
) -> Dict[str, Any]:
    """Train one model (GGAM, or the plain backbone with `cfg.plain`) and evaluate it.

    Runs under DDP when launched by `torchrun` (or inside an initialised process group); only rank 0 writes files.

    Args:
        cfg: The run.
        train_dataset: Use this training dataset (PIL images, no transform) instead of building it from `cfg`.
        eval_dataset: Likewise for evaluation.
        command: Command line to record as the recipe in config.json.

    Returns:
        Final metrics: test_top1, test_top5, test_loss, train_loss, train_ce, train_ggam, train_top1, best_test_top1,
        best_epoch, epochs_done, finished, train_time_s, images_per_s, output, num_classes, world_size,
        replica_max_abs_diff, history (the per-epoch rows).
    """
    cfg = dataclasses.replace(cfg).validate()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, train_dataset, eval_dataset, command)
    finally:
        cleanup_distributed(info)


def _train(cfg: TrainConfig, info: DistInfo, train_ds: Any, eval_ds: Any, command: Optional[str]) -> Dict[str, Any]:
    device = info.device
    main = info.is_main
    show = cfg.progress and main
    if cfg.batch_size % info.world_size:
        raise ValueError(f'batch_size {cfg.batch_size} (the global batch) must be divisible by the number of '
                         f'processes {info.world_size}')
    torch.set_num_threads(cfg.threads or max(1, _usable_cores() // info.local_world_size))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    # every check first (settings, run directory, data layout, batch size, image files, model, checkpoint): a refused
    # run writes nothing
    cfg, out = _check_output(cfg, info)
    kind = 'plain' if cfg.plain else 'GGAM'
    label = f'{kind} {cfg.model}'

    # data
    if train_ds is None or eval_ds is None:
        built = build_datasets(cfg)
        train_ds = train_ds if train_ds is not None else built[0]
        eval_ds = eval_ds if eval_ds is not None else built[1]
    num_classes = _num_classes(train_ds)
    if _num_classes(eval_ds) != num_classes:
        raise ValueError(f'the training split has {num_classes} classes but the evaluation split has '
                         f'{_num_classes(eval_ds)}')
    _check_batch_size(cfg, len(train_ds))
    scanned, skipped = _scan_data(cfg, {'train': train_ds, 'eval': eval_ds}, info, show)
    train_ds, eval_ds = scanned['train'], scanned['eval']
    _check_batch_size(cfg, len(train_ds), skipped['train'])

    # model
    torch.manual_seed(derive_seed(cfg.seed, 0x313D))
    model = build_model(cfg, num_classes)
    data_config = resolve_data_config(cfg, model)
    config = None  # timm's config.json, made now (save_for_hf wants contiguous weights) and written with the run
    if main and (not cfg.resume or not (out / CONFIG_NAME).is_file()):
        config = _model_config(model, cfg, data_config, _class_names(train_ds), num_classes, command, None)
    if cfg.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    optimizer = _optimizer(model, cfg)
    amp_dtype = amp_dtype_for(cfg.amp, cfg.amp_dtype, device)
    scaler = torch.amp.GradScaler('cuda') if amp_dtype == torch.float16 else None
    loss_fn = GGAMLoss(lam=cfg.lam, squash=cfg.squash, kl=cfg.kl, target_norm=cfg.target_norm,
                       temperature=cfg.cam_temperature, label_smoothing=cfg.label_smoothing)

    start_epoch, history = 0, []
    ckpt, state = _resume_state(out, model, label, main) if cfg.resume else (None, {})
    if ckpt is not None:
        optimizer.load_state_dict(state['optimizer'])
        if scaler is not None and state.get('scaler'):
            scaler.load_state_dict(state['scaler'])
        _set_rng_state(state['rng'])
        start_epoch, history = int(state['epoch']), list(state['history'])
        if show:
            tqdm.write(f'[{label}] resumed from {ckpt} after epoch {start_epoch}', file=sys.stdout)

    # the run directory, then the data
    _init_output(cfg, out, info)
    if config is not None:
        atomic_write_json(out / CONFIG_NAME, config)
    _prepare_generated(train_ds, show, f'generating {cfg.train_split} images')
    _prepare_generated(eval_ds, show, f'generating {cfg.eval_split} images')

    pin = device.type == 'cuda'
    train_set = SeededTransformDataset(
        train_ds, build_transform(data_config, True, cfg.train_aug, cfg.hflip), seed=cfg.seed, seeded=True)
    sampler = EpochSampler(len(train_set), seed=cfg.seed, rank=info.rank, world_size=info.world_size, shuffle=True)
    if wants_device_data(cfg.data_path, device, train_ds, train_set.transform):
        train_loader, eval_loader = device_loaders(
            train_ds, eval_ds, train_set.transform, build_transform(data_config, False),
            cfg.batch_size // info.world_size, cfg.eval_batch_size, sampler,
            ShardSampler(len(eval_ds), info.rank, info.world_size), device, cfg.seed)
    else:
        train_loader = build_loader(train_set, cfg.batch_size // info.world_size, sampler,
                                    num_workers=_num_workers(cfg, train_ds, info),
                                    drop_last=True, pin_memory=pin)
        eval_loader = _eval_loader(eval_ds, build_transform(data_config, False), cfg, info, pin)
    steps_per_epoch = len(train_loader)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))

    fwd = TrainForward(model, ggam=not cfg.plain)
    opts = StepOptions(
        ggam=not cfg.plain, cam_class=cfg.cam_class, label_smoothing=cfg.label_smoothing, grad_clip=cfg.grad_clip,
        channels_last=cfg.channels_last, amp_dtype=amp_dtype, seed=cfg.seed, epochs=cfg.epochs, sched=cfg.sched,
        warmup_steps=warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
    if info.distributed:
        fwd = DistributedDataParallel(fwd, device_ids=[device.index] if device.type == 'cuda' else None)
    metrics_writer = MetricsWriter(str(out), cfg.tensorboard) if main else None
    if metrics_writer is not None and history:
        metrics_writer.write(history)  # drop rows of epochs after the checkpoint a killed run had logged

    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    t_run = time.perf_counter()
    guard = InterruptGuard()
    try:
        guard.__enter__()
        for epoch in range(start_epoch, end_epoch):
            row = train_one_epoch(fwd, model, loss_fn, optimizer, scaler, train_loader, epoch, opts, info, show,
                                  f'[{label}]')
            broadcast_buffers(model, info)  # every rank evaluates (and rank 0 saves) the same running statistics
            is_last = epoch + 1 == end_epoch
            if (epoch + 1) % cfg.eval_every == 0 or is_last:
                t0 = time.perf_counter()
                res = evaluate_model(model, eval_loader, device, amp_dtype, cfg.channels_last, info, show,
                                     desc=f'[{label}] eval')
                row.update(test_loss=res['loss'], test_top1=res['top1'], test_top5=res['top5'],
                           eval_time_s=time.perf_counter() - t0)
            else:
                row.update(test_loss=None, test_top1=None, test_top5=None, eval_time_s=None)
            history.append({k: row.get(k) for k in METRIC_COLUMNS})
            if main:
                state = {
                    'format_version': _STATE_VERSION, 'epoch': epoch + 1, 'global_step': (epoch + 1) * steps_per_epoch,
                    'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict() if scaler is not None else {},
                    'rng': _rng_state(), 'history': history, 'train_config': asdict(cfg),
                }
                with guard.critical():  # a signal now waits until the checkpoint is complete
                    save_checkpoint(out, epoch + 1, model, state, keep=cfg.keep_checkpoints)
                    metrics_writer.write(history)
            barrier(info)
            if show:
                tqdm.write(_epoch_line(label, history[-1], cfg.epochs), file=sys.stdout)
            elif main:
                _logger.info(_epoch_line(label, history[-1], cfg.epochs))
    except (KeyboardInterrupt, RuntimeError) as e:  # a signal, or (DDP) a peer process that died
        if main and not isinstance(e, CheckpointWriteError):
            print(_stopped_message(out, label, e), file=sys.stderr, flush=True)
        raise
    finally:
        guard.__exit__(None, None, None)
        if metrics_writer is not None:
            metrics_writer.close()

    replica_diff = replica_max_abs_diff(model, info)
    result = _final_result(cfg, history, out, num_classes, info, time.perf_counter() - t_run, replica_diff, label)
    result.update(skipped_train_images=skipped['train'], skipped_eval_images=skipped['eval'],
                  skipped_files=skipped['files'])
    if main and history:
        atomic_write_json(out / RESULTS_NAME, {k: v for k, v in result.items() if k != 'history'})
        config = json.loads((out / CONFIG_NAME).read_text(encoding='utf-8'))
        config['ggam_layers']['metrics'] = {k: result[k] for k in ('test_top1', 'test_top5', 'epochs_done')
                                            if result.get(k) is not None}
        atomic_write_json(out / CONFIG_NAME, config)
    barrier(info)
    return result


def _epoch_line(label: str, row: Dict[str, Any], epochs: int) -> str:
    parts = [f'[{label}] epoch {row["epoch"]}/{epochs}', f'train loss {row["train_loss"]:.4f}']
    if row.get('train_ggam') is not None:
        parts[-1] += f' (ce {row["train_ce"]:.4f}, ggam {row["train_ggam"]:.4f})'
    parts.append(f'train top-1 {_fmt_pct(row["train_top1"])}')
    if row.get('test_top1') is not None:
        parts.append(f'test top-1 {_fmt_pct(row["test_top1"])} top-5 {_fmt_pct(row["test_top5"])}')
    parts.append(f'{row["images_per_s"]:.0f} img/s, {row["epoch_time_s"]:.1f} s')
    return ' | '.join(parts)


def _final_result(cfg: TrainConfig, history: List[Dict[str, Any]], out: Path, num_classes: int, info: DistInfo,
                  run_time: float, replica_diff: float, label: str) -> Dict[str, Any]:
    evaluated = [r for r in history if r.get('test_top1') is not None]
    last = history[-1] if history else {}
    last_eval = evaluated[-1] if evaluated else {}
    best = max(evaluated, key=lambda r: r['test_top1']) if evaluated else {}
    return {
        'model': 'plain' if cfg.plain else 'ggam',
        'label': label,
        'backbone': cfg.model,
        'test_top1': last_eval.get('test_top1'),
        'test_top5': last_eval.get('test_top5'),
        'test_loss': last_eval.get('test_loss'),
        'train_loss': last.get('train_loss'),
        'train_ce': last.get('train_ce'),
        'train_ggam': last.get('train_ggam'),
        'train_top1': last.get('train_top1'),
        'best_test_top1': best.get('test_top1'),
        'best_epoch': best.get('epoch'),
        'epochs_done': len(history),
        'finished': len(history) == cfg.epochs,
        'train_time_s': sum(r['epoch_time_s'] + (r.get('eval_time_s') or 0.0) for r in history),
        'wall_time_s': run_time,
        'images_per_s': float(np.mean([r['images_per_s'] for r in history])) if history else None,
        'output': str(out),
        'num_classes': num_classes,
        'world_size': info.world_size,
        'replica_max_abs_diff': replica_diff,
        'history': history,
    }


# --- GGAM vs plain ---------------------------------------------------------------------------------------------------
def format_comparison(ggam: Dict[str, Any], plain: Dict[str, Any]) -> str:
    """A side-by-side table of two `train` results."""
    rows = [
        ('test top-1', _fmt_pct(ggam.get('test_top1')), _fmt_pct(plain.get('test_top1'))),
        ('test top-5', _fmt_pct(ggam.get('test_top5')), _fmt_pct(plain.get('test_top5'))),
        ('train top-1', _fmt_pct(ggam.get('train_top1')), _fmt_pct(plain.get('train_top1'))),
        ('epochs', str(ggam.get('epochs_done')), str(plain.get('epochs_done'))),
        ('train time', f'{ggam.get("train_time_s", 0):.0f} s', f'{plain.get("train_time_s", 0):.0f} s'),
    ]
    h1, h2 = f'GGAM + {ggam.get("backbone")}', f'plain {plain.get("backbone")}'
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(h1), *(len(r[1]) for r in rows))
    w2 = max(len(h2), *(len(r[2]) for r in rows))
    lines = [f'{"":<{w0}}  {h1:>{w1}}  {h2:>{w2}}']
    lines += [f'{a:<{w0}}  {b:>{w1}}  {c:>{w2}}' for a, b, c in rows]
    return '\n'.join(lines)


def train_compare(
        cfg: TrainConfig,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        command: Optional[str] = None,
) -> Dict[str, Dict[str, Any]]:
    """Train GGAM and the plain backbone with the same data, seed and recipe; OUT/ggam and OUT/plain.

    Returns:
        {'ggam': result, 'plain': result} (see `train`); rank 0 also writes OUT/comparison.json and prints the table.
    """
    cfg = cfg.validate()
    t0 = time.perf_counter()
    info = init_distributed(cfg.device)
    try:
        out = Path(broadcast_object(cfg.output or default_output(cfg, '-compare'), info))
        if train_dataset is None or eval_dataset is None:
            built = build_datasets(cfg)
            train_dataset = train_dataset if train_dataset is not None else built[0]
            eval_dataset = eval_dataset if eval_dataset is not None else built[1]
        scanned, _ = _scan_data(cfg, {'train': train_dataset, 'eval': eval_dataset}, info,
                                cfg.progress and info.is_main)  # once: both models skip the same files
        train_dataset, eval_dataset = scanned['train'], scanned['eval']
        results = {}
        for name, plain in (('ggam', False), ('plain', True)):
            sub = dataclasses.replace(cfg, plain=plain, output=str(out / name))
            if cfg.resume and not (out / name / CONFIG_NAME).is_file():
                sub = dataclasses.replace(sub, resume=False)  # killed before this model started
            results[name] = train(sub, train_dataset, eval_dataset, command)
        if info.is_main:
            table = format_comparison(results['ggam'], results['plain'])
            atomic_write_json(out / 'comparison.json', {
                k: {m: v for m, v in r.items() if m != 'history'} for k, r in results.items()})
            print(f'\n{table}\n\nruns: {out / "ggam"} and {out / "plain"} '
                  f'({time.perf_counter() - t0:.0f} s in all)', flush=True)
        return results
    finally:
        cleanup_distributed(info)


# --- command line ----------------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m ggam_layers.train ...`, the same as `ggam-layers train ...`."""
    from .cli import main as cli_main
    return cli_main(['train', *(sys.argv[1:] if argv is None else argv)])


if __name__ == '__main__':
    raise SystemExit(main())

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
import argparse
import ast
import dataclasses
import json
import logging
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .engine.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_NAME,
    TMP_PREFIX,
    WEIGHTS_NAME,
    atomic_write_json,
    clean_partial,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .engine.data import (
    TRAIN_AUGS,
    EpochSampler,
    SeededTransformDataset,
    ShardSampler,
    build_loader,
    build_transform,
    derive_seed,
)
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
from .loss import GGAMLoss
from .model import GGAMModel

__all__ = [
    'TrainConfig', 'PRESETS', 'RESUME_MUTABLE_FIELDS', 'train', 'train_compare', 'evaluate', 'evaluate_model',
    'build_model', 'build_datasets', 'resolve_data_config', 'lr_factor', 'register_cli', 'format_comparison',
    'add_train_args', 'config_from_args', 'compare_requested',
]

_logger = logging.getLogger(__name__)

OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('cosine', 'none')
AMP_DTYPES = ('auto', 'bfloat16', 'float16')
CAM_CLASSES = ('pred', 'label')
RESULTS_NAME = 'results.json'
_RUN_ARTEFACTS = (CONFIG_NAME, WEIGHTS_NAME, CHECKPOINT_DIR, 'metrics.csv', 'metrics.jsonl', RESULTS_NAME,
                  'tensorboard')
_STATE_VERSION = 1


@dataclass
class TrainConfig:
    """Everything that defines a training run. The field defaults are the 'synthetic' preset.

    Data:
        dataset: `ggam_layers.data.create_dataset` name ('synthetic', 'cub', 'aircraft', 'cars', 'flowers', 'pets',
            'folder', 'hfds/...').
        data_root: Dataset folder (not needed for 'synthetic').
        train_split / eval_split: Splits to train on and to evaluate on.
        dataset_kwargs: Extra `create_dataset` arguments (e.g. {'samples_per_class': 20} for 'synthetic').
        img_size: Input height and width.
        crop_pct: Evaluation centre crop fraction (and 'paper' training: resize to img_size / crop_pct, random crop
            img_size); None takes the backbone's.
        crop_mode: timm's evaluation crop mode ('center', 'squash', 'border'); None takes the backbone's.
        train_aug: 'flip', 'paper', 'timm' or 'none' (see `engine.data.build_transform`).
        hflip: Horizontal flip probability.
        interpolation / mean / std: Override the backbone's data config.

    Model:
        model: timm backbone name (`timm.list_models()`).
        plain: Train the plain timm model with cross-entropy (the baseline) instead of GGAM.
        pretrained: Load the backbone's pretrained weights through timm.
        pretrained_file: Local weights file for the backbone (`pretrained_cfg_overlay=dict(file=...)`).
        channel_attn / spatial_attn / spatial_norm / attn_temperature / pool_type / cam_layer / rd_ratio: GGAM head
            options (`GGAMModel`; attn_temperature is its `temperature`, the softmax temperature of S).
        drop_rate / drop_path_rate: Dropout before the classifier, stochastic depth of the backbone.
        model_kwargs: Extra `timm.create_model` arguments.

    Loss (`GGAMLoss`):
        lam: Weight of L_GGAM (0 trains the attention with cross-entropy only).
        squash / kl / target_norm / cam_temperature: Target options of `GGAMLoss` (cam_temperature is its
            `temperature`).
        cam_class: Explain the 'pred'icted class (paper) or the 'label' with Grad-CAM.
        label_smoothing: Of the cross-entropy.

    Optimisation:
        opt: 'sgd' (momentum, nesterov off) or 'adamw'.
        lr: Learning rate of the head (GGAM attention + classifier, or the plain model's classifier).
        backbone_lr_scale: Backbone learning rate relative to `lr` (paper: 0.1).
        momentum / weight_decay: Of the optimizer (weight decay on every parameter, as the paper).
        sched: 'cosine' (per step, after a linear warm-up) or 'none'.
        warmup_epochs: Linear warm-up length (may be fractional).
        min_lr_ratio: Final learning rate of the cosine, relative to the base.
        epochs: Total epochs (defines the schedule).
        batch_size: Global batch size (split evenly over DDP processes).
        eval_batch_size: Batch size per process for evaluation.
        grad_clip: Clip the gradient norm to this value (None: no clipping).

    Runtime:
        amp: Mixed precision (bfloat16 on the CPU; bfloat16 or float16 on CUDA, see amp_dtype).
        amp_dtype: 'auto' (bfloat16 where supported, else float16), 'bfloat16' or 'float16' (CUDA only).
        channels_last: Use the channels-last memory format.
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        sync_bn: Convert BatchNorm to SyncBatchNorm under DDP.
        deterministic: `torch.use_deterministic_algorithms(True)` (and cuDNN benchmark off).
        seed: Seed of the model initialisation, the data order and the augmentation.
        workers: DataLoader worker processes.
        threads: CPU threads per process (None: the usable cores divided by the processes on this node).

    Output:
        output: Run directory (None: output/train/<time>-<dataset>-<model>).
        overwrite: Replace the run files in a non-empty output directory.
        resume: Continue from the newest checkpoint in `output`.
        stop_after: End this invocation after this many epochs (the schedule still spans `epochs`); resume later.
        eval_every: Evaluate every N epochs (the last epoch is always evaluated).
        keep_checkpoints: Checkpoints to keep.
        tensorboard: Also log to OUT/tensorboard.
        progress: Show tqdm progress bars and a line per epoch.
        preset: The preset these values came from (recorded only).
    """
    # data
    dataset: str = 'synthetic'
    data_root: Optional[str] = None
    train_split: str = 'train'
    eval_split: str = 'test'
    dataset_kwargs: Dict[str, Any] = field(default_factory=dict)
    img_size: int = 64
    crop_pct: Optional[float] = 1.0
    crop_mode: Optional[str] = None
    train_aug: str = 'flip'
    hflip: float = 0.5
    interpolation: Optional[str] = None
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None
    # model
    model: str = 'resnet10t'
    plain: bool = False
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    channel_attn: bool = True
    spatial_attn: bool = True
    spatial_norm: str = 'softmax'
    attn_temperature: float = 1.0
    pool_type: str = 'auto'
    cam_layer: str = 'features'
    rd_ratio: float = 1. / 16
    drop_rate: float = 0.
    drop_path_rate: Optional[float] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # loss
    lam: float = 1.0
    squash: str = 'sigmoid'
    kl: str = 'symmetric'
    target_norm: str = 'standardize'  # 'none' is the paper as written (benchmarks/ablation.py: it acts as a uniform KL)
    cam_temperature: float = 1.0
    cam_class: str = 'pred'
    label_smoothing: float = 0.
    # optimisation
    opt: str = 'adamw'
    lr: float = 2e-3
    backbone_lr_scale: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 0.05
    sched: str = 'cosine'
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.
    epochs: int = 8
    batch_size: int = 64
    eval_batch_size: int = 250
    grad_clip: Optional[float] = None
    # runtime
    amp: bool = False
    amp_dtype: str = 'auto'
    channels_last: bool = True
    device: str = 'auto'
    sync_bn: bool = False
    deterministic: bool = False
    seed: int = 0
    workers: int = 0
    threads: Optional[int] = None
    # output
    output: Optional[str] = None
    overwrite: bool = False
    resume: bool = False
    stop_after: Optional[int] = None
    eval_every: int = 1
    keep_checkpoints: int = 1
    tensorboard: bool = False
    progress: bool = True
    preset: str = 'synthetic'

    @classmethod
    def from_preset(cls, preset: str = 'synthetic', **overrides) -> 'TrainConfig':
        """The preset's values, then `overrides` on top.

        Args:
            preset: 'synthetic' (the default: fast CPU run on the built-in synthetic set) or 'paper' (the paper's
                CUB-200-2011 recipe).
            **overrides: Any `TrainConfig` field.
        """
        if preset not in PRESETS:
            raise ValueError(f'preset must be one of {tuple(PRESETS)}, got {preset!r}')
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f'unknown TrainConfig fields {unknown}; fields are {sorted(names)}')
        return cls(**{**PRESETS[preset], **overrides, 'preset': preset})

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'TrainConfig':
        """Rebuild from `asdict` output (as stored in config.json); unknown keys are ignored with a warning."""
        names = {f.name for f in fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            _logger.warning('ignoring unknown TrainConfig keys %s', extra)
        kw = {k: v for k, v in d.items() if k in names}
        for k in ('mean', 'std'):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def validate(self) -> 'TrainConfig':
        """Raise ValueError naming the field for a value out of range; returns self."""
        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f'{name} must be one of {options}, got {getattr(self, name)!r}')
        choice('opt', OPTIMIZERS)
        choice('sched', SCHEDULES)
        choice('amp_dtype', AMP_DTYPES)
        choice('cam_class', CAM_CLASSES)
        choice('train_aug', TRAIN_AUGS)
        for name in ('epochs', 'batch_size', 'eval_batch_size', 'img_size', 'eval_every', 'keep_checkpoints'):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f'{name} must be an int >= 1, got {getattr(self, name)!r}')
        for name in ('lr',):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)!r}')
        for name in ('lam', 'weight_decay', 'warmup_epochs', 'backbone_lr_scale', 'momentum', 'min_lr_ratio',
                     'drop_rate', 'label_smoothing'):
            if not getattr(self, name) >= 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)!r}')
        if not 0 <= self.hflip <= 1:
            raise ValueError(f'hflip must be in [0, 1], got {self.hflip!r}')
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f'crop_pct must be in (0, 1], got {self.crop_pct!r}')
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f'stop_after must be >= 1, got {self.stop_after!r}')
        if self.workers < 0:
            raise ValueError(f'workers must be >= 0, got {self.workers!r}')
        if self.resume and not self.output:
            raise ValueError('resume=True needs output, the run directory to resume')
        if self.pretrained_file and not Path(self.pretrained_file).is_file():
            raise ValueError(f'pretrained_file {self.pretrained_file!r} does not exist')
        return self


PRESETS: Dict[str, Dict[str, Any]] = {
    # Calibrated with benchmarks/synthetic_calibration.py: resnet10t from scratch, 64 px, 2000 training images,
    # AdamW 2e-3 / wd 0.05, half an epoch of warm-up then cosine, batch 64, flip only, 8 epochs.
    'synthetic': {},
    # Xu et al. 2021, section 3.2: 448 x 448, SGD momentum 0.9, weight decay 5e-4, 100 epochs, cosine annealing,
    # lr 0.1 for the new layers and 0.01 for the pretrained backbone; resize, random crop and flip as the authors'
    # code does; batch 16; torchvision's ImageNet ResNet-50 weights, as the authors' code loads; the GGAM target as
    # the paper writes it (sigmoid of the raw beta, target_norm='none').
    'paper': dict(
        dataset='cub', model='resnet50.tv_in1k', pretrained=True, img_size=448, crop_pct=0.875, crop_mode='squash',
        train_aug='paper', opt='sgd', lr=0.1, backbone_lr_scale=0.1, momentum=0.9, weight_decay=5e-4,
        sched='cosine', warmup_epochs=0., epochs=100, batch_size=16, eval_batch_size=64, amp=True,
        channels_last=True, workers=8, target_norm='none'),
}

# fields that may differ when a run is resumed (they do not change the trained weights)
RESUME_MUTABLE_FIELDS = frozenset({
    'output', 'overwrite', 'resume', 'stop_after', 'workers', 'threads', 'tensorboard', 'progress', 'data_root',
    'eval_batch_size', 'eval_every', 'keep_checkpoints', 'device'})


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
    if cfg.plain:
        return timm.create_model(cfg.model, pretrained=use_pretrained, num_classes=num_classes,
                                 drop_rate=cfg.drop_rate, **kwargs)
    return timm.create_model(
        'ggam', backbone=cfg.model, pretrained=use_pretrained, num_classes=num_classes,
        channel_attn=cfg.channel_attn, spatial_attn=cfg.spatial_attn, spatial_norm=cfg.spatial_norm,
        temperature=cfg.attn_temperature, pool_type=cfg.pool_type, cam_layer=cfg.cam_layer, rd_ratio=cfg.rd_ratio,
        drop_rate=cfg.drop_rate, **kwargs)


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
        for i in tqdm(range(len(ds)), desc=desc, disable=not show, leave=False, dynamic_ncols=True):
            gen(i)


def _default_output(cfg: TrainConfig, suffix: str = '') -> str:
    stamp = time.strftime('%Y%m%d-%H%M%S')
    model = cfg.model.replace('/', '_').replace(':', '_')
    dataset = cfg.dataset.replace('/', '_').replace(':', '_')
    return str(Path('output') / 'train' / f'{stamp}-{dataset}-{model}{suffix}')


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _clear_run_dir(path: Path) -> None:
    """Remove the files a run writes (and leftovers of killed writes); anything else in the folder stays."""
    for name in _RUN_ARTEFACTS:
        p = path / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    clean_partial(path)


def _config_differences(saved: TrainConfig, new: TrainConfig) -> List[str]:
    a, b = asdict(saved), asdict(new)
    return [k for k in a if k not in RESUME_MUTABLE_FIELDS and k != 'preset' and _norm(a[k]) != _norm(b[k])]


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v))


def _read_run_config(out: Path) -> Dict[str, Any]:
    path = out / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f'{path} is missing: {out} is not a ggam-layers run directory')
    config = json.loads(path.read_text(encoding='utf-8'))
    info = config.get('ggam_layers') or {}
    if 'train_config' not in info:
        raise ValueError(f'{path} has no ggam_layers.train_config: it was not written by ggam-layers train')
    return config


def _model_config(model: nn.Module, cfg: TrainConfig, data_config: Dict[str, Any], class_names, num_classes: int,
                  command: Optional[str], tmp_parent: Path) -> Dict[str, Any]:
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
def _eval_loader(eval_ds: Any, transform, cfg: TrainConfig, info: DistInfo, pin: bool):
    wrapped = SeededTransformDataset(eval_ds, transform, seed=cfg.seed, seeded=False)
    return build_loader(wrapped, cfg.eval_batch_size, ShardSampler(len(wrapped), info.rank, info.world_size),
                        num_workers=cfg.workers, pin_memory=pin)


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
    config = _read_run_config(out)
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
        if eval_dataset is None:
            eval_dataset = _create_dataset(cfg, split)
        num_classes = config.get('num_classes') or _num_classes(eval_dataset)
        model = build_model(cfg, num_classes, pretrained=False)
        weights = out / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f'{weights} is missing: the run has not finished an epoch yet')
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
    recorded = None
    results_file = out / RESULTS_NAME
    if split == cfg.eval_split and results_file.is_file():
        recorded = json.loads(results_file.read_text(encoding='utf-8')).get('test_top1')
    res['recorded_top1'] = recorded
    res['matches_recorded'] = None if recorded is None else recorded == res['top1']
    return res


# --- training --------------------------------------------------------------------------------------------------------
def _prepare_output(cfg: TrainConfig, info: DistInfo) -> Tuple[TrainConfig, Path, Optional[Path]]:
    """Resolve the run directory, check overwrite / resume, and return (config, directory, checkpoint)."""
    out = Path(broadcast_object(cfg.output or _default_output(cfg, '-plain' if cfg.plain else ''), info))
    cfg = dataclasses.replace(cfg, output=str(out))
    ckpt = None
    if cfg.resume:
        saved = TrainConfig.from_dict(_read_run_config(out)['ggam_layers']['train_config'])
        diff = _config_differences(saved, cfg)
        if diff:
            raise ValueError(
                f'resume: {", ".join(f"{k}={getattr(cfg, k)!r} (saved {getattr(saved, k)!r})" for k in diff)} '
                f'differ from the run in {out}; only {sorted(RESUME_MUTABLE_FIELDS)} may change on resume')
        ckpt = latest_checkpoint(out)
    elif _is_nonempty_dir(out) and not cfg.overwrite:
        raise FileExistsError(f'output directory {out} is not empty; pass --overwrite (overwrite=True) to replace '
                              'its run files, or --resume to continue it')
    barrier(info)  # every rank has checked before rank 0 touches the folder
    if info.is_main:
        if cfg.overwrite and not cfg.resume and out.is_dir():
            _clear_run_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        clean_partial(out)
    barrier(info)
    return cfg, out, ckpt


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
    cfg, out, ckpt = _prepare_output(cfg, info)
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
    _prepare_generated(train_ds, show, f'generating {cfg.train_split} images')
    _prepare_generated(eval_ds, show, f'generating {cfg.eval_split} images')

    # model
    torch.manual_seed(derive_seed(cfg.seed, 0x313D))
    model = build_model(cfg, num_classes)
    data_config = resolve_data_config(cfg, model)
    if main and (not cfg.resume or not (out / CONFIG_NAME).is_file()):
        config = _model_config(model, cfg, data_config, _class_names(train_ds), num_classes, command, out)
        atomic_write_json(out / CONFIG_NAME, config)
    if cfg.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    pin = device.type == 'cuda'
    train_set = SeededTransformDataset(
        train_ds, build_transform(data_config, True, cfg.train_aug, cfg.hflip), seed=cfg.seed, seeded=True)
    if len(train_set) < cfg.batch_size:
        raise ValueError(f'batch_size {cfg.batch_size} is larger than the training set ({len(train_set)} images)')
    sampler = EpochSampler(len(train_set), seed=cfg.seed, rank=info.rank, world_size=info.world_size, shuffle=True)
    train_loader = build_loader(train_set, cfg.batch_size // info.world_size, sampler, num_workers=cfg.workers,
                                drop_last=True, pin_memory=pin)
    eval_loader = _eval_loader(eval_ds, build_transform(data_config, False), cfg, info, pin)
    steps_per_epoch = len(train_loader)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))

    optimizer = _optimizer(model, cfg)
    amp_dtype = amp_dtype_for(cfg.amp, cfg.amp_dtype, device)
    scaler = torch.amp.GradScaler('cuda') if amp_dtype == torch.float16 else None
    loss_fn = GGAMLoss(lam=cfg.lam, squash=cfg.squash, kl=cfg.kl, target_norm=cfg.target_norm,
                       temperature=cfg.cam_temperature, label_smoothing=cfg.label_smoothing)

    start_epoch, history = 0, []
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, map_location='cpu')
        if state.get('format_version') != _STATE_VERSION:
            raise ValueError(f'{ckpt}: training state format {state.get("format_version")} is not supported')
        optimizer.load_state_dict(state['optimizer'])
        if scaler is not None and state.get('scaler'):
            scaler.load_state_dict(state['scaler'])
        _set_rng_state(state['rng'])
        start_epoch, history = int(state['epoch']), list(state['history'])
        if show:
            tqdm.write(f'[{label}] resumed from {ckpt} after epoch {start_epoch}', file=sys.stdout)

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
    try:
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
                save_checkpoint(out, epoch + 1, model, state, keep=cfg.keep_checkpoints)
                metrics_writer.write(history)
            barrier(info)
            if show:
                tqdm.write(_epoch_line(label, history[-1], cfg.epochs), file=sys.stdout)
            elif main:
                _logger.info(_epoch_line(label, history[-1], cfg.epochs))
    finally:
        if metrics_writer is not None:
            metrics_writer.close()

    replica_diff = replica_max_abs_diff(model, info)
    result = _final_result(cfg, history, out, num_classes, info, time.perf_counter() - t_run, replica_diff, label)
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
        out = Path(broadcast_object(cfg.output or _default_output(cfg, '-compare'), info))
        if train_dataset is None or eval_dataset is None:
            built = build_datasets(cfg)
            train_dataset = train_dataset if train_dataset is not None else built[0]
            eval_dataset = eval_dataset if eval_dataset is not None else built[1]
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
def _preset_help(name: str, text: str) -> str:
    default = {f.name: f.default for f in fields(TrainConfig) if f.default is not dataclasses.MISSING}
    if name not in default:
        return text
    paper = PRESETS['paper'].get(name, default[name])
    if paper == default[name]:
        return f'{text} (default {default[name]})'
    return f'{text} (synthetic: {default[name]}; paper: {paper})'


def _parse_kv(text: str) -> Tuple[str, Any]:
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _floats3(text: str) -> Tuple[float, float, float]:
    vals = tuple(float(v) for v in text.replace(',', ' ').split())
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f'expected three numbers, got {text!r}')
    return vals


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Add the `train` options; every default is SUPPRESS so that only explicit flags override the preset."""
    h = _preset_help
    p.add_argument('--preset', choices=tuple(PRESETS), default='synthetic',
                   help='recipe to start from: synthetic (fast CPU run on the built-in data set, the default) or '
                        "paper (the paper's CUB-200-2011 recipe); every option below overrides it")
    p.add_argument('--compare-plain', action=argparse.BooleanOptionalAction,
                   help='train GGAM and then the plain backbone the same way and print both test accuracies '
                        '(default: on when `train` gets no option at all)')
    g = p.add_argument_group('data')
    g.add_argument('--dataset', help=h('dataset', 'synthetic, cub, aircraft, cars, flowers, pets, folder or hfds/NAME'))
    g.add_argument('--data-root', help='dataset folder (not needed for synthetic)')
    g.add_argument('--train-split', help=h('train_split', 'split to train on'))
    g.add_argument('--eval-split', help=h('eval_split', 'split to evaluate on'))
    g.add_argument('--data-arg', dest='dataset_kwargs', action='append', type=_parse_kv, metavar='KEY=VALUE',
                   help='extra dataset argument, repeatable (synthetic: samples_per_class=20, num_classes=10, ...)')
    g.add_argument('--img-size', type=int, help=h('img_size', 'input size'))
    g.add_argument('--crop-pct', type=float, help=h('crop_pct', 'evaluation crop fraction (paper aug: resize to '
                                                    'img-size / crop-pct, then crop)'))
    g.add_argument('--crop-mode', choices=('center', 'squash', 'border'), help=h('crop_mode', 'evaluation crop mode'))
    g.add_argument('--train-aug', choices=TRAIN_AUGS, help=h('train_aug', 'training augmentation'))
    g.add_argument('--hflip', type=float, help=h('hflip', 'horizontal flip probability'))
    g.add_argument('--interpolation', help="resize interpolation (default: the backbone's)")
    g.add_argument('--mean', type=_floats3, help="normalisation mean, three numbers (default: the backbone's)")
    g.add_argument('--std', type=_floats3, help="normalisation std, three numbers (default: the backbone's)")
    g = p.add_argument_group('model')
    g.add_argument('--model', help=h('model', 'timm backbone'))
    g.add_argument('--plain', action='store_true', help='train the plain timm backbone with cross-entropy (baseline)')
    g.add_argument('--pretrained', action=argparse.BooleanOptionalAction,
                   help=h('pretrained', "load the backbone's pretrained weights through timm"))
    g.add_argument('--pretrained-file', metavar='PATH', help='local backbone weights (timm pretrained_cfg_overlay)')
    g.add_argument('--no-channel-attn', dest='channel_attn', action='store_false',
                   help='ablation: no channel attention')
    g.add_argument('--no-spatial-attn', dest='spatial_attn', action='store_false',
                   help='ablation: no spatial attention')
    g.add_argument('--spatial-norm', choices=('softmax', 'sum', 'sigmoid'),
                   help=h('spatial_norm', 'normalisation of T'))
    g.add_argument('--attn-temperature', type=float, help=h('attn_temperature', 'softmax temperature of S'))
    g.add_argument('--pool-type', choices=('auto', 'avg', 'sum'), help=h('pool_type', 'pooling of D'))
    g.add_argument('--cam-layer', choices=('features', 'attended'), help=h('cam_layer', 'Grad-CAM gradient at A or D'))
    g.add_argument('--rd-ratio', type=float, help=h('rd_ratio', 'channel attention reduction ratio'))
    g.add_argument('--drop-rate', type=float, help=h('drop_rate', 'dropout before the classifier'))
    g.add_argument('--drop-path-rate', type=float, help='stochastic depth of the backbone')
    g.add_argument('--model-arg', dest='model_kwargs', action='append', type=_parse_kv, metavar='KEY=VALUE',
                   help='extra timm.create_model argument, repeatable')
    g = p.add_argument_group('GGAM loss')
    g.add_argument('--lam', type=float, help=h('lam', 'weight lambda of L_GGAM'))
    g.add_argument('--no-ggam-loss', dest='lam', action='store_const', const=0.0, help='ablation: lambda = 0')
    g.add_argument('--squash', choices=('sigmoid', 'softmax'), help=h('squash', 'squashing of beta'))
    g.add_argument('--kl', choices=('symmetric', 'forward', 'reverse'), help=h('kl', 'KL direction'))
    g.add_argument('--target-norm', choices=('none', 'standardize'), help=h('target_norm', 'normalisation of beta'))
    g.add_argument('--cam-temperature', type=float, help=h('cam_temperature', 'beta is divided by it'))
    g.add_argument('--cam-class', choices=CAM_CLASSES, help=h('cam_class', 'class explained by Grad-CAM'))
    g.add_argument('--label-smoothing', type=float, help=h('label_smoothing', 'of the cross-entropy'))
    g = p.add_argument_group('optimisation')
    g.add_argument('--opt', choices=OPTIMIZERS, help=h('opt', 'optimizer'))
    g.add_argument('--lr', type=float, help=h('lr', 'learning rate of the head'))
    g.add_argument('--backbone-lr-scale', type=float, help=h('backbone_lr_scale', 'backbone lr / head lr'))
    g.add_argument('--momentum', type=float, help=h('momentum', 'SGD momentum'))
    g.add_argument('--weight-decay', type=float, help=h('weight_decay', 'weight decay'))
    g.add_argument('--sched', choices=SCHEDULES, help=h('sched', 'learning rate schedule'))
    g.add_argument('--warmup-epochs', type=float, help=h('warmup_epochs', 'linear warm-up epochs'))
    g.add_argument('--min-lr-ratio', type=float, help=h('min_lr_ratio', 'final lr / base lr'))
    g.add_argument('--epochs', type=int, help=h('epochs', 'epochs'))
    g.add_argument('--batch-size', type=int, help=h('batch_size', 'global batch size (over all processes)'))
    g.add_argument('--eval-batch-size', type=int, help=h('eval_batch_size', 'evaluation batch per process'))
    g.add_argument('--grad-clip', type=float, help='clip the gradient norm')
    g = p.add_argument_group('runtime')
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, help=h('amp', 'mixed precision'))
    g.add_argument('--amp-dtype', choices=AMP_DTYPES, help=h('amp_dtype', 'autocast dtype'))
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, help=h('channels_last', 'NHWC memory'))
    g.add_argument('--device', help=h('device', 'auto, cpu, cuda or cuda:N'))
    g.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under DDP')
    g.add_argument('--deterministic', action='store_true', help='torch.use_deterministic_algorithms')
    g.add_argument('--seed', type=int, help=h('seed', 'seed'))
    g.add_argument('--workers', type=int, help=h('workers', 'DataLoader workers'))
    g.add_argument('--threads', type=int, help='CPU threads per process (default: cores / processes per node)')
    g = p.add_argument_group('output')
    g.add_argument('--output', metavar='DIR', help='run directory (default: output/train/<time>-<dataset>-<model>)')
    g.add_argument('--overwrite', action='store_true', help='replace the run files of a non-empty output directory')
    g.add_argument('--resume', nargs='?', const=True, metavar='DIR',
                   help='continue the run in DIR (or --output) from its newest checkpoint')
    g.add_argument('--stop-after', type=int, metavar='N', help='stop after N epochs (the schedule keeps --epochs)')
    g.add_argument('--eval-every', type=int, help=h('eval_every', 'evaluate every N epochs'))
    g.add_argument('--keep-checkpoints', type=int, help=h('keep_checkpoints', 'checkpoints to keep'))
    g.add_argument('--tensorboard', action='store_true', help='log to OUT/tensorboard')
    g.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars or epoch lines')


def config_from_args(args: argparse.Namespace) -> Tuple[TrainConfig, Optional[bool]]:
    """The `TrainConfig` of parsed `train` arguments and `--compare-plain` (None when not given).

    Flags given on the command line override the preset; with `--resume` they override the saved run's config
    (only `RESUME_MUTABLE_FIELDS` may change).
    """
    ns = dict(vars(args))
    for key in ('command', 'func', '_argv'):
        ns.pop(key, None)
    preset = ns.pop('preset', 'synthetic')
    compare = ns.pop('compare_plain', None)
    for key in ('dataset_kwargs', 'model_kwargs'):
        if key in ns:
            ns[key] = dict(ns[key])
    resume = ns.get('resume')
    if isinstance(resume, str):
        if ns.get('output') not in (None, resume):
            raise ValueError(f'--resume {resume} and --output {ns["output"]} name different directories')
        ns['output'], ns['resume'] = resume, True
    if ns.get('plain') and compare:
        raise ValueError('--plain and --compare-plain exclude each other (--compare-plain trains both)')
    if ns.get('resume'):
        out = Path(ns['output']) if ns.get('output') else None
        if out is None:
            raise ValueError('--resume needs the run directory: --resume DIR')
        compare_run = not (out / CONFIG_NAME).is_file() and (out / 'ggam' / CONFIG_NAME).is_file()
        saved_dir = out / 'ggam' if compare_run else out
        saved = asdict(TrainConfig.from_dict(_read_run_config(saved_dir)['ggam_layers']['train_config']))
        saved.update(stop_after=None, overwrite=False)  # settings of the interrupted invocation, not of the run
        saved.update(ns)
        if compare_run:
            saved.update(plain=False, output=str(out))
        cfg = TrainConfig.from_dict(saved)
        return cfg, compare_run if compare is None else compare
    cfg = TrainConfig.from_preset(preset, **ns)
    return cfg, compare


def compare_requested(flag: Optional[bool], train_argv: Optional[Sequence[str]]) -> bool:
    """Whether `ggam-layers train` trains GGAM and the plain backbone: `--compare-plain`, or no option at all."""
    if flag is not None:
        return flag
    return train_argv is not None and len(train_argv) == 0


def _run_train(args: argparse.Namespace) -> int:
    cfg, compare = config_from_args(args)
    argv = getattr(args, '_argv', None)
    compare = compare_requested(compare, argv)
    command = 'ggam-layers train' + ('' if not argv else ' ' + shlex.join(argv))
    if compare:
        train_compare(cfg, command=command)
        return 0
    result = train(cfg, command=command)
    if int(os.environ.get('RANK', '0')) == 0:
        print(f'\n{result["label"]}: test top-1 {_fmt_pct(result["test_top1"])}, top-5 {_fmt_pct(result["test_top5"])}'
              f' after {result["epochs_done"]}/{cfg.epochs} epochs ({result["train_time_s"]:.0f} s); '
              f'run: {result["output"]}', flush=True)
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    res = evaluate(args.checkpoint, split=args.split, data_root=args.data_root, batch_size=args.batch_size,
                   device=args.device, workers=args.workers, progress=args.progress)
    if int(os.environ.get('RANK', '0')) == 0:
        line = (f'{args.checkpoint} [{res["split"]}, {res["count"]} images]: top-1 {_fmt_pct(res["top1"])}, '
                f'top-5 {_fmt_pct(res["top5"])}, loss {res["loss"]:.4f}')
        if res['recorded_top1'] is not None:
            same = 'the same' if res['matches_recorded'] else 'DIFFERENT'
            line += f' ({same} as recorded at the end of training: {_fmt_pct(res["recorded_top1"])})'
        print(line, flush=True)
        if args.json:
            atomic_write_json(args.json, res)
    return 0


def register_cli(subparsers: Any) -> List[argparse.ArgumentParser]:
    """Add the `train` and `eval` subcommands to the `ggam-layers` command line.

    Args:
        subparsers: The object returned by `ArgumentParser.add_subparsers()`.

    Returns:
        The added parsers.
    """
    p = subparsers.add_parser(
        'train', help='train GGAM (or the plain backbone) and evaluate it',
        description='Train a GGAM model on a fine-grained dataset. Without any option: GGAM and the plain resnet10t '
                    'from scratch on the built-in synthetic set, then both test accuracies side by side (a few '
                    'minutes on a laptop CPU). Under torchrun it trains with DDP.',
        argument_default=argparse.SUPPRESS, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_args(p)
    p.set_defaults(func=_run_train)
    e = subparsers.add_parser(
        'eval', help='evaluate a trained run directory',
        description='Evaluate the model of a run directory with the preprocessing it was trained with; on the run\'s '
                    'evaluation split this reproduces the test accuracy recorded at the end of training.')
    e.add_argument('--checkpoint', required=True, metavar='DIR', help='run directory (config.json + model.safetensors)')
    e.add_argument('--split', default=None, help="split to evaluate (default: the run's evaluation split)")
    e.add_argument('--data-root', default=None, help='dataset folder, if it moved since training')
    e.add_argument('--batch-size', type=int, default=None, help="batch size per process (default: the run's)")
    e.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    e.add_argument('--workers', type=int, default=None, help="DataLoader workers (default: the run's)")
    e.add_argument('--json', default=None, metavar='FILE', help='also write the result to FILE')
    e.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    e.set_defaults(func=_run_eval)
    return [p, e]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m ggam_layers.train ...`, the same as `ggam-layers train ...`."""
    from .cli import main as cli_main
    return cli_main(['train', *(sys.argv[1:] if argv is None else argv)])


if __name__ == '__main__':
    raise SystemExit(main())

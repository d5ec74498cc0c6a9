"""`TrainConfig`: every setting of a training run, its presets and its checks (`validate`)."""
import difflib
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .._files import check_safetensors
from ..data.device import DATA_PATHS
from ..data.loader import TRAIN_AUGS
from .loop import AMP_DTYPE_ALIASES

__all__ = ['TrainConfig', 'PRESETS', 'RESUME_MUTABLE_FIELDS', 'OPTIMIZERS', 'SCHEDULES', 'AMP_DTYPES', 'CAM_CLASSES']

_logger = logging.getLogger('ggam_layers.train')

OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('cosine', 'none')
AMP_DTYPES = tuple(AMP_DTYPE_ALIASES)  # auto, bfloat16 / bf16, float16 / fp16 / half (amp_dtype_for normalises)
CAM_CLASSES = ('pred', 'label')


@dataclass
class TrainConfig:
    """Everything that defines a training run. `TrainConfig.from_preset('synthetic')` is what `ggam-layers train` runs
    by default; the field defaults are the generic values the presets start from.

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
        strict_data: Stop at the first unreadable image file (default: skip it with a warning, and count it).
        max_bad_fraction: Stop when more than this fraction of a split's image files is unreadable (a broken copy).

    Model:
        model: timm backbone name (`timm.list_models()`).
        plain: Train the plain timm model with cross-entropy (the baseline) instead of GGAM.
        pretrained: Load the backbone's pretrained weights through timm.
        pretrained_file: Local weights file for the backbone (`pretrained_cfg_overlay=dict(file=...)`).
        channel_attn / spatial_attn / spatial_norm / attn_temperature / pool_type / cam_layer / rd_ratio: GGAM head
            options (`GGAMModel`; attn_temperature is its `temperature`, the softmax temperature of S).
        channel_rescale: With spatial_attn=False, hand the classifier C * S * A instead of eq. 1's S * A.
        spatial_gate: Blend T in through a learned gate g from 0: D = A * (1 - g + g * N T) (the head starts as GAP).
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
        workers: DataLoader worker processes (None: 0 for the in-memory synthetic set, else the usable cores divided
            by the processes on this node, at most 8).
        data_path: 'auto' (on CUDA the synthetic set is cached as a uint8 tensor and augmented on the device,
            `engine.device_data`; everything else takes the DataLoader), 'device' or 'loader' (force either).
        threads: CPU threads per process (None: the usable cores divided by the processes on this node).

    Output:
        output: Run directory (None: output/train/<time>-<dataset>-<model>).
        overwrite: Replace the run files in a non-empty output directory.
        resume: Continue from the newest checkpoint in `output`.
        stop_after: End this invocation after this many epochs (the schedule still spans `epochs`); resume later.
        eval_every: Evaluate every N epochs (the last epoch is always evaluated).
        keep_checkpoints: Checkpoints to keep (2: `resume` falls back to the previous one if the newest is damaged).
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
    strict_data: bool = False
    max_bad_fraction: float = 0.05
    # model
    model: str = 'resnet10t'
    plain: bool = False
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    channel_attn: bool = True
    spatial_attn: bool = True
    channel_rescale: bool = False
    spatial_gate: bool = False
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
    target_norm: str = 'none'  # the paper as written; 'standardize' lost 7.4 points at a 7 x 7 map (ablation_map7)
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
    workers: Optional[int] = None
    data_path: str = 'auto'
    threads: Optional[int] = None
    # output
    output: Optional[str] = None
    overwrite: bool = False
    resume: bool = False
    stop_after: Optional[int] = None
    eval_every: int = 1
    keep_checkpoints: int = 2
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
        base = dict(PRESETS[preset])
        defaults = cls()
        # the preset's backbone and dataset arguments go with its backbone and dataset: another --model or
        # --dataset starts from none of them; otherwise --model-arg / --data-arg add to them
        for owner, kwargs in (('model', 'model_kwargs'), ('dataset', 'dataset_kwargs')):
            preset_value = base.get(owner, getattr(defaults, owner))
            if overrides.get(owner, preset_value) != preset_value:
                base.pop(kwargs, None)
            elif kwargs in overrides and kwargs in base:
                overrides = {**overrides, kwargs: {**base[kwargs], **overrides[kwargs]}}
        return cls(**{**base, **overrides, 'preset': preset})

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
        choice('data_path', DATA_PATHS)
        if self.channel_rescale and self.spatial_attn:
            raise ValueError('channel_rescale=True (--channel-rescale) scales eq. 1 and needs spatial_attn=False '
                             '(--no-spatial-attn)')
        if self.spatial_gate and not self.spatial_attn:
            raise ValueError('spatial_gate=True (--spatial-gate) gates the spatial map and needs spatial_attn=True '
                             '(drop --no-spatial-attn)')
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
        if self.workers is not None and self.workers < 0:
            raise ValueError(f'workers must be >= 0, got {self.workers!r}')
        if self.resume and not self.output:
            raise ValueError('resume=True needs output, the run directory to resume')
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f'max_bad_fraction must be in [0, 1], got {self.max_bad_fraction!r}')
        if self.pretrained_file:
            if not Path(self.pretrained_file).is_file():
                raise ValueError(f'pretrained_file {self.pretrained_file!r} does not exist')
            check_safetensors(self.pretrained_file, what='--pretrained-file')
        _check_model_name(self.model)
        return self


def _check_model_name(name: str) -> None:
    """Refuse a backbone name timm does not know, with the closest names, before any data is touched."""
    import timm
    if not isinstance(name, str) or not name:
        raise ValueError(f'model must be a timm backbone name, got {name!r}')
    if name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split('.')[0], timm.list_models(), n=5)
    raise ValueError(f'model {name!r} is not a timm backbone' + (f'; did you mean one of {close}?' if close else '')
                     + ' (timm.list_models() lists them all)')


PRESETS: Dict[str, Dict[str, Any]] = {
    # The regime where attention has room (benchmarks/ablation.py --budget map7, README "Evidence"): timm's tiny
    # test_resnet from scratch at output stride 16, 112 px, so the last stage is a 7 x 7 map; the synthetic set at
    # its full nuisance range (difficulty 1.0: the plain backbone lands near 68%, not at the ceiling), 2000 training
    # and 1000 test images, AdamW 5e-3 / wd 0.05, half an epoch of warm-up then cosine, batch 64, flip only, 12 epochs.
    'synthetic': dict(model='test_resnet', model_kwargs={'output_stride': 16}, img_size=112,
                      dataset_kwargs={'difficulty': 1.0}, epochs=12, lr=5e-3),
    # Xu et al. 2021, section 3.2: 448 x 448, SGD momentum 0.9, weight decay 5e-4, 100 epochs, cosine annealing,
    # lr 0.1 for the new layers and 0.01 for the pretrained backbone; resize, random crop and flip as the authors'
    # code does; batch 16; torchvision's ImageNet ResNet-50 weights, as the authors' code loads; the GGAM target as
    # the paper writes it (sigmoid of the raw beta, target_norm='none').
    'paper': dict(
        dataset='cub', model='resnet50.tv_in1k', pretrained=True, img_size=448, crop_pct=0.875, crop_mode='squash',
        train_aug='paper', opt='sgd', lr=0.1, backbone_lr_scale=0.1, momentum=0.9, weight_decay=5e-4,
        sched='cosine', warmup_epochs=0., epochs=100, batch_size=16, eval_batch_size=64, amp=True,
        channels_last=True, target_norm='none'),
}

# fields that may differ when a run is resumed (they do not change the trained weights)
RESUME_MUTABLE_FIELDS = frozenset({
    'output', 'overwrite', 'resume', 'stop_after', 'workers', 'threads', 'tensorboard', 'progress', 'data_root',
    'eval_batch_size', 'eval_every', 'keep_checkpoints', 'device', 'data_path', 'strict_data', 'max_bad_fraction'})

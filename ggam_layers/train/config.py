"""`TrainConfig`: every setting of a training run, its presets and its checks (`validate`)."""
import difflib
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .._files import PRETRAINED_DIR, check_safetensors
from ..data.device import DATA_PATHS
from ..data.loader import TRAIN_AUGS
from ..loss import CAM_TARGETS, CamTarget
from ..model import ATTENTIONS, check_backbone_name
from .implied import apply_implications, flag
from .loop import AMP_DTYPE_ALIASES

__all__ = ['TrainConfig', 'PRESETS', 'RESUME_MUTABLE_FIELDS', 'OPTIMIZERS', 'SCHEDULES', 'AMP_DTYPES', 'CAM_CLASSES',
           'MIXUP_MODES']

_logger = logging.getLogger('ggam_layers.train')

# the paper's two optimizers; `opt` takes every name of timm's registry (`timm.optim.list_optimizers()`), and 'sgd'
# keeps the paper's meaning (momentum, no Nesterov: timm's 'momentum'; timm's Nesterov SGD is 'nesterov')
OPTIMIZERS = ('sgd', 'adamw')
# 'cosine' and 'none': the package's per-step schedule (linear warm-up, cosine to min_lr_ratio, or constant); the
# others are timm's `create_scheduler_v2`, stepped per optimizer update with the same warm-up
SCHEDULES = ('cosine', 'none', 'tanh', 'step', 'multistep', 'poly', 'constant')
MIXUP_MODES = ('batch', 'pair', 'elem')
AMP_DTYPES = tuple(AMP_DTYPE_ALIASES)  # auto, bfloat16 / bf16, float16 / fp16 / half (amp_dtype_for normalises)
CAM_CLASSES = ('pred', 'label')


@dataclass
class TrainConfig:
    """Everything that defines a training run. `TrainConfig.from_preset('synthetic_finetune')` is what
    `ggam-layers train` runs by default (`from_preset()` alone gives 'synthetic', from scratch); the field defaults
    are the generic values the presets start from.

    Data:
        dataset: `ggam_layers.data.create_dataset` name ('synthetic', 'cub', 'aircraft', 'cars', 'flowers', 'pets',
            'folder', 'hfds/...').
        data_root: Dataset folder (not needed for 'synthetic').
        train_split / eval_split: Splits to train on and to evaluate on.
        dataset_kwargs: Extra `create_dataset` arguments (e.g. {'samples_per_class': 20} for 'synthetic';
            'train_samples_per_class' sets the synthetic training split's size alone).
        img_size: Input height and width.
        crop_pct: Evaluation centre crop fraction (and 'paper' training: resize to img_size / crop_pct, random crop
            img_size); None takes the backbone's.
        crop_mode: timm's evaluation crop mode ('center', 'squash', 'border'); None takes the backbone's.
        train_aug: 'flip', 'paper', 'timm' or 'none' (see `data.loader.build_transform`).
        hflip: Horizontal flip probability.
        aa: timm's auto-augment policy string, e.g. 'rand-m9-mstd0.5-inc1' (RandAugment) or 'original'
            (AutoAugment); with train_aug='timm', which an explicit `aa` selects (`from_preset`, the command line).
        reprob: Random erasing probability (timm's RandomErasing); with train_aug='timm', which an explicit `reprob`
            selects.
        color_jitter: Colour jitter strength of timm's transform (off under a RandAugment / AugMix `aa`); an explicit
            non-zero value selects train_aug='timm'.
        mixup / cutmix: Alpha of timm's `Mixup` (0: off); targets become soft, label smoothing moves into Mixup.
        mixup_prob / mixup_switch_prob / mixup_mode: timm's `Mixup` prob, switch_prob and mode.
        interpolation / mean / std: Override the backbone's data config.
        strict_data: Stop at the first unreadable image file (default: skip it with a warning, and count it).
        max_bad_fraction: Stop when more than this fraction of a split's image files is unreadable (a broken copy).

    Model:
        model: timm backbone name (`timm.list_models()`).
        plain: Train the plain timm model with cross-entropy (the baseline) instead of GGAM.
        attention: The head's attention: 'ggam' (the paper's method), or a comparator of the paper's Table 2 at the
            same place, 'se' or 'cbam' (timm.layers' SEModule / CbamModule, then global average pooling; trained
            with cross-entropy alone, as the plain model).
        pretrained: Load the backbone's pretrained weights through timm. Given explicitly as False
            (`--no-pretrained`, or `from_preset(..., pretrained=False)`), it also drops the preset's
            `pretrained_file`: the backbone starts from random initialisation.
        pretrained_file: Local weights file for the backbone (`pretrained_cfg_overlay=dict(file=...)`).
        channel_attn / spatial_attn / spatial_norm / attn_temperature / pool_type / cam_layer / rd_ratio: GGAM head
            options (`GGAMModel`; attn_temperature is its `temperature`, the softmax temperature of S).
        channel_rescale: With spatial_attn=False (which an explicit channel_rescale=True selects), hand the
            classifier C * S * A instead of eq. 1's S * A.
        spatial_gate: Blend T in through a learned gate g from 0: D = A * (1 - g + g * N T) (the head starts as GAP).
        drop_rate / drop_path_rate: Dropout before the classifier, stochastic depth of the backbone.
        model_kwargs: Extra `timm.create_model` arguments.

    Loss (`GGAMLoss`):
        lam: Weight of L_GGAM (0 trains the attention with cross-entropy only).
        cam_target: A named Grad-CAM target of `GGAMLoss` ('paper', 'authors', 'standardized', 'uniform': the
            control without Grad-CAM); None builds it from the four options below.
        squash / kl / target_norm / cam_temperature: The target's parts (`loss.CamTarget`: squash, kl, norm,
            temperature), for combinations without a name.
        cam_class: Explain the 'pred'icted class (paper) or the 'label' with Grad-CAM; under mixup / cutmix,
            'label' is the label with the larger weight in the mixed target.
        label_smoothing: Of the cross-entropy.

    Optimisation:
        opt: A name of timm's optimizer registry (`timm.optim.list_optimizers()`, built by `create_optimizer_v2`):
            'adamw', 'lamb', 'nesterov', ...; 'sgd' is SGD with momentum and no Nesterov, as in the paper (timm's
            'momentum').
        lr: Learning rate of the head (GGAM attention + classifier, or the plain model's classifier).
        backbone_lr_scale: Backbone learning rate relative to `lr` (paper: 0.1).
        momentum / weight_decay: Of the optimizer (weight decay on every parameter, as the paper).
        sched: 'cosine' (per step, after a linear warm-up) or 'none' (constant after the warm-up); or one of timm's
            `create_scheduler_v2` names ('tanh', 'step', 'multistep', 'poly', 'constant'), stepped per update.
        decay_epochs / decay_rate: Of timm's 'step' / 'multistep' schedules.
        layer_decay: timm's layer-wise learning rate decay (`param_groups_layer_decay`): the backbone's layer l of
            L gets lr * backbone_lr_scale * layer_decay ** (L - l); None: off.
        model_ema / model_ema_decay: Keep timm's `ModelEmaV3` of the weights; it is what is evaluated and saved.
        grad_accum_steps: Accumulate the gradients of this many batches per update (the update of a batch this
            many times larger, BatchNorm statistics aside).
        max_nonfinite_steps: Stop the run after more than this many updates in a row with a non-finite loss or
            gradient (each is skipped, as GradScaler skips an fp16 overflow).
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
        grad_checkpointing: Recompute the backbone's activations in the backward (timm's set_grad_checkpointing).
        compile: `torch.compile` the training forward (the GGAM head stays one graph).
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        sync_bn: Convert BatchNorm to SyncBatchNorm under DDP.
        deterministic: `torch.use_deterministic_algorithms(True)` (and cuDNN benchmark off).
        seed: Seed of the model initialisation, the data order and the augmentation.
        workers: DataLoader worker processes (None: 0 for the in-memory synthetic set, else the usable cores divided
            by the processes on this node, at most 8).
        data_path: 'auto' (on CUDA the synthetic set is cached as a uint8 tensor and augmented on the device,
            `data.device`; everything else takes the DataLoader), 'device' or 'loader' (force either).
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
        preset: The preset these values came from (recorded only); None for a `TrainConfig(...)` built from the
            field defaults (which are no preset's: `from_preset` applies one).
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
    aa: Optional[str] = None
    reprob: float = 0.
    color_jitter: Optional[float] = 0.4
    mixup: float = 0.
    cutmix: float = 0.
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = 'batch'
    interpolation: Optional[str] = None
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None
    strict_data: bool = False
    max_bad_fraction: float = 0.05
    # model
    model: str = 'resnet10t'
    plain: bool = False
    attention: str = 'ggam'
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
    cam_target: Optional[str] = None
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
    decay_epochs: float = 30.
    decay_rate: float = 0.1
    layer_decay: Optional[float] = None
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    grad_accum_steps: int = 1
    max_nonfinite_steps: int = 5
    # runtime
    amp: bool = False
    amp_dtype: str = 'auto'
    channels_last: bool = True
    grad_checkpointing: bool = False
    compile: bool = False
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
    preset: Optional[str] = None

    @classmethod
    def from_preset(cls, preset: str = 'synthetic', **overrides) -> 'TrainConfig':
        """The preset's values, then `overrides` on top.

        Args:
            preset: 'synthetic' (the default: fast CPU run on the built-in synthetic set, from scratch),
                'synthetic_finetune' (the shipped pretrained backbone fine-tuned on it), 'paper' (the paper's
                CUB-200-2011 recipe) or 'fgvc' (a modern fine-tune: ConvNeXt-S at 384 px, EMA, mixup / cutmix,
                RandAugment, layer decay).
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
                if owner == 'model':
                    base.pop('pretrained_file', None)  # the preset's weights are its backbone's
            elif kwargs in overrides and kwargs in base:
                merged = {**base[kwargs], **overrides[kwargs]}
                if 'samples_per_class' in overrides[kwargs] and 'train_samples_per_class' not in overrides[kwargs]:
                    merged.pop('train_samples_per_class', None)  # samples_per_class sizes every split
                overrides = {**overrides, kwargs: merged}
        # a flag that only makes sense beside another setting selects it (`--aa` selects `--train-aug timm`)
        overrides = apply_implications({**asdict(defaults), **base}, overrides)
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

    def loss_target(self) -> CamTarget:
        """The `GGAMLoss` target of this run: `cam_target` by name, else built from its four parts."""
        if self.cam_target is not None:
            return CAM_TARGETS[self.cam_target]
        return CamTarget(squash=self.squash, kl=self.kl, norm=self.target_norm, temperature=self.cam_temperature)

    @property
    def arm(self) -> str:
        """What this run trains: 'ggam', 'se', 'cbam' (`attention`) or 'plain' (the timm model, `plain`)."""
        return 'plain' if self.plain else self.attention

    def validate(self) -> 'TrainConfig':
        """Raise ValueError naming the field for a value out of range; returns self."""
        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f'{name} must be one of {options}, got {getattr(self, name)!r}')
        _check_optimizer(self.opt)
        choice('sched', SCHEDULES)
        choice('mixup_mode', MIXUP_MODES)
        choice('amp_dtype', AMP_DTYPES)
        choice('cam_class', CAM_CLASSES)
        choice('train_aug', TRAIN_AUGS)
        choice('data_path', DATA_PATHS)
        choice('attention', ATTENTIONS)
        if self.cam_target is not None:
            choice('cam_target', tuple(CAM_TARGETS))
            parts = {k: getattr(self, k) for k in ('squash', 'kl', 'target_norm', 'cam_temperature')}
            changed = {k: v for k, v in parts.items() if v != _FIELD_DEFAULTS[k]}
            if changed:
                raise ValueError(f'--cam-target {self.cam_target} (cam_target) names the whole target, and '
                                 f'{", ".join(flag(k, v) for k, v in changed.items())} sets a part of it: drop one '
                                 'of the two')
        if self.plain and self.attention != 'ggam':
            raise ValueError(f'--plain (plain) trains the timm model without a head attention, and --attention '
                             f'{self.attention} (attention) puts one there: drop one of the two')
        if self.channel_rescale and self.spatial_attn:
            raise ValueError('channel_rescale=True (--channel-rescale) scales eq. 1 and needs spatial_attn=False '
                             '(--no-spatial-attn)')
        if self.spatial_gate and not self.spatial_attn:
            raise ValueError('spatial_gate=True (--spatial-gate) gates the spatial map and needs spatial_attn=True '
                             '(drop --no-spatial-attn)')
        for name in ('epochs', 'batch_size', 'eval_batch_size', 'img_size', 'eval_every', 'keep_checkpoints',
                     'grad_accum_steps', 'max_nonfinite_steps'):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f'{name} must be an int >= 1, got {getattr(self, name)!r}')
        for name in ('lr',):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)!r}')
        for name in ('lam', 'weight_decay', 'warmup_epochs', 'backbone_lr_scale', 'momentum', 'min_lr_ratio',
                     'drop_rate', 'label_smoothing', 'mixup', 'cutmix', 'decay_rate', 'decay_epochs'):
            if not getattr(self, name) >= 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)!r}')
        for name in ('reprob', 'mixup_prob', 'mixup_switch_prob'):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f'{name} must be in [0, 1], got {getattr(self, name)!r}')
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f'layer_decay must be in (0, 1] (or None for off), got {self.layer_decay!r}')
        if not 0 < self.model_ema_decay < 1:
            raise ValueError(f'model_ema_decay must be in (0, 1), got {self.model_ema_decay!r}')
        if (self.aa or self.reprob) and self.train_aug != 'timm':
            on = [k for k in ('aa', 'reprob') if getattr(self, k)]
            raise ValueError(f"{' '.join(flag(k, getattr(self, k)) for k in on)} ({' / '.join(on)}): applied by "
                             f"timm's training transform only, and --train-aug {self.train_aug} (train_aug) "
                             "contradicts it: drop one of the two (or pass --train-aug timm)")
        if self.data_path == 'device':
            refused = [flag for flag, on in (('--aa', self.aa), ('--reprob', self.reprob),
                                             ('--train-aug timm', self.train_aug == 'timm')) if on]
            if refused:
                raise ValueError(f"data_path='device' (--data-path device) cannot apply {', '.join(refused)} (timm's "
                                 'PIL transforms): use --data-path auto, which takes the DataLoader for them')
        if (self.mixup or self.cutmix) and self.batch_size % 2:  # timm's Mixup pairs each image with another
            on = [k for k in ('mixup', 'cutmix') if getattr(self, k)]
            raise ValueError(f"{' '.join(flag(k, getattr(self, k)) for k in on)} ({' / '.join(on)}) pair each image "
                             f'with another and need an even --batch-size (batch_size), got --batch-size '
                             f'{self.batch_size}: change one of the two')
        if self.data_path == 'device' and self.dataset not in ('synthetic', 'synthetic_pretrain'):
            raise ValueError(f"--data-path device (data_path='device') caches the built-in synthetic data sets on the "
                             f'device, and --dataset {self.dataset} (dataset) is not one: drop one of the two')
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
        check_backbone_name(self.model, 'model')
        return self


_FIELD_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}

def _check_optimizer(name: str) -> None:
    """Refuse an optimizer name timm's registry does not know, with the closest names."""
    from timm.optim import list_optimizers
    known = set(list_optimizers()) | {'sgd'}
    if not isinstance(name, str) or name.lower() not in known:
        close = difflib.get_close_matches(str(name).lower(), sorted(known), n=5)
        raise ValueError(f'opt {name!r} is not an optimizer of timm' + (f'; did you mean one of {close}?' if close
                                                                       else '') + ' (timm.optim.list_optimizers())')


PRESETS: Dict[str, Dict[str, Any]] = {
    # The regime where attention has room (benchmarks/ablation.py --budget map7, README "Evidence"): timm's tiny
    # test_resnet from scratch at output stride 16, 112 px, so the last stage is a 7 x 7 map; the synthetic set at
    # its full nuisance range (difficulty 1.0: the plain backbone lands near 68%, not at the ceiling), 2000 training
    # and 1000 test images, AdamW 5e-3 / wd 0.05, half an epoch of warm-up then cosine, batch 64, flip only, 12 epochs.
    'synthetic': dict(model='test_resnet', model_kwargs={'output_stride': 16}, img_size=112,
                      dataset_kwargs={'difficulty': 1.0}, epochs=12, lr=5e-3),
    # The paper's setting on the synthetic set (benchmarks/ablation.py --budget finetune7): the backbone the package
    # ships, pretrained by `ggam-layers train --plain` on the disjoint synthetic_pretrain corpus (docs/pretraining.md),
    # fine-tuned at a 7 x 7 map on 30 training images per class (about CUB-200-2011's; the test split keeps its 50),
    # difficulty 0.7, the head at 10x the backbone's lr (AdamW 0.05 / 0.005), batch 32, 12 epochs.
    'synthetic_finetune': dict(model='test_resnet', model_kwargs={'output_stride': 16}, img_size=112,
                               pretrained_file=os.path.join(PRETRAINED_DIR,
                                                            'test_resnet.synthetic_pretrain.safetensors'),
                               dataset_kwargs={'difficulty': 0.7, 'train_samples_per_class': 30}, epochs=12,
                               batch_size=32, lr=0.05, backbone_lr_scale=0.1),
    # Xu et al. 2021, section 3.2: 448 x 448, SGD momentum 0.9, weight decay 5e-4, 100 epochs, cosine annealing,
    # lr 0.1 for the new layers and 0.01 for the pretrained backbone; resize, random crop and flip as the authors'
    # code does; batch 16; torchvision's ImageNet ResNet-50 weights, as the authors' code loads; the GGAM target as
    # the paper writes it (sigmoid of the raw beta, target_norm='none').
    'paper': dict(
        dataset='cub', model='resnet50.tv_in1k', pretrained=True, img_size=448, crop_pct=0.875, crop_mode='squash',
        train_aug='paper', opt='sgd', lr=0.1, backbone_lr_scale=0.1, momentum=0.9, weight_decay=5e-4,
        sched='cosine', warmup_epochs=0., epochs=100, batch_size=16, eval_batch_size=64, amp=True,
        channels_last=True, target_norm='none'),
    # A modern fine-grained fine-tune (docs/training.md, "The fgvc preset", gives each value's source): an ImageNet-22k
    # ConvNeXt-S fine-tuned at 384 px, AdamW with layer-wise lr decay 0.8, RandAugment (9, 0.5), random erasing 0.25,
    # label smoothing 0.1 and an EMA of the weights (the ConvNeXt paper's fine-tuning settings), mixup / cutmix on
    # half of the batches, 30 epochs of cosine after one warm-up epoch, batch 32 with bf16 autocast.
    'fgvc': dict(
        dataset='cub', model='convnext_small.fb_in22k_ft_in1k_384', pretrained=True, img_size=384, crop_pct=1.0,
        crop_mode='squash', train_aug='timm', aa='rand-m9-mstd0.5-inc1', reprob=0.25, label_smoothing=0.1,
        mixup=0.8, cutmix=1.0, mixup_prob=0.5, opt='adamw', lr=1e-4, backbone_lr_scale=1.0, layer_decay=0.8,
        weight_decay=0.05, sched='cosine', warmup_epochs=1., epochs=30, batch_size=32, eval_batch_size=64,
        model_ema=True, model_ema_decay=0.999, drop_path_rate=0.2, amp=True, channels_last=True),
}

# fields that may differ when a run is resumed (they do not change the trained weights)
RESUME_MUTABLE_FIELDS = frozenset({
    'output', 'overwrite', 'resume', 'stop_after', 'workers', 'threads', 'tensorboard', 'progress', 'data_root',
    'eval_batch_size', 'eval_every', 'keep_checkpoints', 'device', 'data_path', 'strict_data', 'max_bad_fraction',
    'max_nonfinite_steps', 'compile'})

"""`TrainConfig`: every setting of a training run, its presets and its checks (`validate`).

Each field is declared once, with `option()` (`train/options.py`): its help text, choices, range check, command-line
form and the value each preset sets. The class docstring, `PRESETS`, `validate`'s generic checks, the options of
`ggam-layers train` and docs/options.md (`python -m ggam_layers.train.options_doc`) are made from the declarations.
"""
import difflib
import functools
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .._files import PRETRAINED_DIR, check_safetensors
from ..attention import SPATIAL_NORMS
from ..data.device import DATA_PATHS
from ..data.loader import TRAIN_AUGS
from ..head import CAM_LAYERS, POOL_TYPES
from ..loss import CAM_TARGETS, DEFAULT_CAM_TARGET, KL_MODES, SQUASHES, TARGET_NORMS, CamTarget, target_from_parts
from ..model import ATTENTIONS, check_backbone_name
from .implied import apply_implications, flag
from .loop import AMP_DTYPE_ALIASES
from .options import build_presets, check_value, config_doc, is_optional, option, option_spec

__all__ = ['TrainConfig', 'PRESETS', 'PRESET_NOTES', 'RESUME_MUTABLE_FIELDS', 'OPTIMIZERS', 'SCHEDULES', 'AMP_DTYPES',
           'CAM_CLASSES', 'MIXUP_MODES', 'CROP_MODES', 'GUIDES', 'TARGET_PARTS', 'BACKBONE_TARGET_PRESETS']

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
GUIDES = ('channel', 'spatial')  # `guide`: GGAMLoss (the paper) or SpatialGuidanceLoss (a package variant)
TARGET_PARTS = ('squash', 'kl', 'target_norm', 'cam_temperature')  # the parts of a target `cam_target` names at once
# presets whose named target was chosen for their own backbone: another --model drops it (the paper preset's is its
# recipe, the synthetic preset's the from-scratch regime's: they stay)
BACKBONE_TARGET_PRESETS = ('synthetic_finetune',)
CROP_MODES = ('center', 'squash', 'border')  # timm's evaluation crop modes (`timm.data.transforms_factory`)

# preset name -> what it is and where each value comes from; the presets' values are in the field declarations
PRESET_NOTES: Dict[str, str] = {
    'synthetic': (
        'The regime where attention has room (benchmarks/ablation.py --budget map7, README "Evidence"): timm\'s tiny '
        'test_resnet from scratch at output stride 16, 112 px, so the last stage is a 7 x 7 map; the synthetic set at '
        'its full nuisance range (difficulty 1.0: the plain backbone lands near 68%, not at the ceiling), 2000 '
        'training and 1000 test images, AdamW 5e-3 / wd 0.05, half an epoch of warm-up then cosine, batch 64, flip '
        'only, 12 epochs.'),
    'synthetic_finetune': (
        'The paper\'s setting on the synthetic set (benchmarks/ablation.py --budget finetune7): the backbone the '
        'package ships, pretrained by `ggam-layers train --plain` on the disjoint synthetic_pretrain corpus '
        '(docs/pretraining.md), fine-tuned at a 7 x 7 map on 30 training images per class (about CUB-200-2011\'s; the '
        'test split keeps its 50), difficulty 0.7, the head at 10x the backbone\'s lr (AdamW 0.05 / 0.005), batch 32, '
        '12 epochs.'),
    'paper': (
        'Xu et al. 2021, section 3.2: 448 x 448, SGD momentum 0.9, weight decay 5e-4, 100 epochs, cosine annealing, '
        'lr 0.1 for the new layers and 0.01 for the pretrained backbone; resize, random crop and flip as the authors\' '
        'code does; batch 16; torchvision\'s ImageNet ResNet-50 weights, as the authors\' code loads; the GGAM target '
        'as the paper writes it (sigmoid of the raw beta, cam_target=\'paper\').'),
    'fgvc': (
        'A modern fine-grained fine-tune (docs/training.md, "The fgvc preset", gives each value\'s source): an '
        'ImageNet-22k ConvNeXt-S fine-tuned at 384 px, AdamW with layer-wise lr decay 0.8, RandAugment (9, 0.5), '
        'random erasing 0.25, label smoothing 0.1 and an EMA of the weights (the ConvNeXt paper\'s fine-tuning '
        'settings), mixup / cutmix on half of the batches, 30 epochs of cosine after one warm-up epoch, batch 32 with '
        'bf16 autocast.'),
}

# one declaration per field, by group (the argparse group of `ggam-layers train`, the docstring's section)
_data = functools.partial(option, group='data')
_model = functools.partial(option, group='model')
_loss = functools.partial(option, group='GGAM loss')
_optim = functools.partial(option, group='optimisation')
_runtime = functools.partial(option, group='runtime')
_output = functools.partial(option, group='output')
_BOTH_CUB = {'paper': 'cub', 'fgvc': 'cub'}


@dataclass
class TrainConfig:
    """Everything that defines a training run. `TrainConfig.from_preset('synthetic_finetune')` is what
    `ggam-layers train` runs by default (`from_preset()` alone gives 'synthetic', from scratch); the field defaults
    are the generic values the presets start from.

    Each field is declared once, with `option()`: the entries below, `PRESETS`, the checks of `validate` and the
    options of `ggam-layers train` are made from the declarations (docs/options.md has the table).
    """
    dataset: str = _data(
        'synthetic', 'Dataset name of `ggam_layers.data.create_dataset`: synthetic, synthetic_pretrain, cub, nabirds, '
        'dogs, inat, aircraft, cars, flowers, pets, folder or hfds/NAME.', presets=_BOTH_CUB)
    data_root: Optional[str] = _data(None, 'Dataset folder (not needed for synthetic).', resume_mutable=True)
    train_split: str = _data('train', 'Split to train on.')
    eval_split: str = _data('test', 'Split to evaluate on.')
    dataset_kwargs: Dict[str, Any] = _data(
        {}, 'Extra `create_dataset` arguments, on the command line one KEY=VALUE per --data-arg (synthetic: '
        'samples_per_class=20, num_classes=10, difficulty=0.7, ...; train_samples_per_class sizes the training split '
        "alone). They add to the preset's, which another --dataset drops.",
        cli='append_kv', flag='--data-arg', metavar='KEY=VALUE',
        presets={'synthetic': {'difficulty': 1.0},
                 'synthetic_finetune': {'difficulty': 0.7, 'train_samples_per_class': 30}})
    img_size: int = _data(64, 'Input height and width.', check='int>=1',
                          presets={'synthetic': 112, 'synthetic_finetune': 112, 'paper': 448, 'fgvc': 384})
    crop_pct: Optional[float] = _data(
        1.0, 'Evaluation centre crop fraction (and the paper training augmentation\'s: resize to img_size / '
        "crop_pct, then a random crop of img_size); None takes the backbone's.", check='(0,1]',
        presets={'paper': 0.875, 'fgvc': 1.0})
    crop_mode: Optional[str] = _data(None, "timm's evaluation crop mode; None takes the backbone's.",
                                     choices=CROP_MODES, presets={'paper': 'squash', 'fgvc': 'squash'})
    train_aug: str = _data(
        'flip', 'Training augmentation (`data.loader.build_transform`): flip (resize, horizontal flip), paper (resize '
        "to img_size / crop_pct, random crop, flip: the paper's code), timm (timm's training transform, which applies "
        '--aa, --reprob and --color-jitter) or none.', choices=TRAIN_AUGS, presets={'paper': 'paper', 'fgvc': 'timm'})
    hflip: float = _data(0.5, 'Horizontal flip probability.', check='[0,1]')
    aa: Optional[str] = _data(
        None, "timm's auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment) or original (AutoAugment); applied "
        'by --train-aug timm, which an explicit --aa selects.', metavar='POLICY',
        presets={'fgvc': 'rand-m9-mstd0.5-inc1'})
    reprob: float = _data(
        0., "Random erasing probability (timm's RandomErasing); applied by --train-aug timm, which an explicit "
        '--reprob selects.', check='[0,1]', presets={'fgvc': 0.25})
    color_jitter: Optional[float] = _data(
        0.4, "Colour jitter strength of timm's training transform (off under a RandAugment / AugMix --aa); an explicit "
        'non-zero value selects --train-aug timm.')
    mixup: float = _data(
        0., "Mixup alpha of timm's Mixup (0: off); the targets become soft, and label smoothing moves into Mixup.",
        metavar='ALPHA', check='>=0', presets={'fgvc': 0.8})
    cutmix: float = _data(0., "CutMix alpha of timm's Mixup (0: off).", metavar='ALPHA', check='>=0',
                          presets={'fgvc': 1.0})
    mixup_prob: float = _data(1.0, "Probability of mixing a batch (timm's Mixup prob).", check='[0,1]',
                              presets={'fgvc': 0.5})
    mixup_switch_prob: float = _data(
        0.5, "Probability of CutMix instead of mixup when both are on (timm's Mixup switch_prob).", check='[0,1]')
    mixup_mode: str = _data('batch', "Mix per batch, pair or element (timm's Mixup mode).", choices=MIXUP_MODES)
    interpolation: Optional[str] = _data(None, "Resize interpolation; None takes the backbone's.")
    mean: Optional[Tuple[float, float, float]] = _data(None, "Normalisation mean, three numbers; None takes the "
                                                             "backbone's.")
    std: Optional[Tuple[float, float, float]] = _data(None, "Normalisation std, three numbers; None takes the "
                                                            "backbone's.")
    strict_data: bool = _data(False, 'Stop at the first unreadable image file, instead of skipping it with a warning '
                                     '(and counting it).', cli='store_true', resume_mutable=True)
    max_bad_fraction: float = _data(
        0.05, "Stop when more than this fraction of a split's image files is unreadable (a broken copy).",
        metavar='F', check='[0,1]', resume_mutable=True)

    model: str = _model(
        'resnet10t', 'timm backbone name (`timm.list_models()`).',
        presets={'synthetic': 'test_resnet', 'synthetic_finetune': 'test_resnet', 'paper': 'resnet50.tv_in1k',
                 'fgvc': 'convnext_small.fb_in22k_ft_in1k_384'})
    plain: bool = _model(False, 'Train the plain timm model with cross-entropy (the baseline) instead of GGAM.',
                         cli='store_true')
    attention: str = _model(
        'ggam', "The head's attention: ggam (the paper's method), or a comparator of the paper's Table 2 at the same "
        "place, se or cbam (timm.layers' SEModule / CbamModule, then global average pooling; trained with "
        'cross-entropy alone, as the plain model).', choices=ATTENTIONS)
    pretrained: bool = _model(
        False, "Load the backbone's pretrained weights through timm. Given explicitly as off (--no-pretrained, or "
        "`from_preset(..., pretrained=False)`), it also drops the preset's pretrained_file: the backbone starts from "
        'random initialisation.', cli='bool', presets={'paper': True, 'fgvc': True})
    pretrained_file: Optional[str] = _model(
        None, "Local weights file of the backbone (timm's `pretrained_cfg_overlay=dict(file=...)`); another --model "
        "drops the preset's.", metavar='PATH',
        presets={'synthetic_finetune': os.path.join(PRETRAINED_DIR, 'test_resnet.synthetic_pretrain.safetensors')})
    channel_attn: bool = _model(True, 'The channel attention C of the GGAM head (--no-channel-attn: the ablation '
                                      'without it).', cli='store_false')
    spatial_attn: bool = _model(True, 'The spatial attention S of the GGAM head (--no-spatial-attn: the ablation '
                                      'without it).', cli='store_false')
    channel_rescale: bool = _model(
        False, "Without spatial attention (which an explicit --channel-rescale selects), hand the classifier C * S * A "
        "instead of eq. 1's S * A (ours).", cli='store_true')
    spatial_gate: bool = _model(
        False, 'Blend T in through a learned gate g from 0: D = A * (1 - g + g * N T), so the head starts as the plain '
        'global average pool (ours).', cli='store_true')
    spatial_norm: str = _model('softmax', 'Normalisation of the spatial map T.', choices=SPATIAL_NORMS)
    attn_temperature: float = _model(1.0, 'Softmax temperature of S (`GGAMModel`\'s temperature).')
    pool_type: str = _model(
        'auto', 'Pooling of D: avg (global average, the paper\'s pipeline), sum (attention pooling with a normalised '
        'T) or auto (sum for the softmax and sum norms, avg otherwise and for the gate).', choices=POOL_TYPES)
    cam_layer: str = _model('features', "Where Grad-CAM takes the gradient: at A (features, the paper) or at D "
                                        "(attended, the authors' code).", choices=CAM_LAYERS)
    rd_ratio: float = _model(1. / 16, 'Reduction ratio of the channel attention.')
    drop_rate: float = _model(0., 'Dropout before the classifier.', check='>=0')
    drop_path_rate: Optional[float] = _model(None, "Stochastic depth of the backbone; None keeps timm's default.",
                                             presets={'fgvc': 0.2})
    model_kwargs: Dict[str, Any] = _model(
        {}, 'Extra `timm.create_model` arguments, on the command line one KEY=VALUE per --model-arg. They add to the '
        "preset's, which another --model drops.", cli='append_kv', flag='--model-arg', metavar='KEY=VALUE',
        presets={'synthetic': {'output_stride': 16}, 'synthetic_finetune': {'output_stride': 16}})

    lam: float = _loss(1.0, 'Weight lambda of L_GGAM (0: the attention is trained with cross-entropy only).',
                       check='>=0', shortcuts={'--no-ggam-loss': (0.0, 'Ablation: lambda = 0 (the same as --lam 0).')})
    guide: str = _loss(
        'channel', "What the Grad-CAM guidance supervises: channel (the paper: S towards the target of --cam-target, "
        '`GGAMLoss`) or spatial (a package variant: T towards the normalised Grad-CAM map relu(sum_c beta_c A_c), '
        '`SpatialGuidanceLoss`; free of the scale of beta; measured in benchmarks/README.md, "Beyond the paper").',
        choices=GUIDES)
    cam_target: Optional[str] = _loss(
        None, 'The Grad-CAM target of `GGAMLoss` by name: paper (eq. 5 as written), authors (their code), '
        'standardized (beta standardised per sample), uniform (the control: KL towards 1/C, no Grad-CAM). None: '
        f'{DEFAULT_CAM_TARGET} (`GGAMLoss`\'s default: ahead of paper on fine-tuned ImageNet features), '
        'or, when a part below is given, those parts on top of paper. The paper preset names paper (as written), '
        'the synthetic presets paper too (7.4 points ahead of standardized from scratch; the main job\'s numbers), a '
        'choice that goes, for synthetic_finetune, with its backbone (another --model drops it); fgvc names the '
        'default. A part below and --guide spatial drop any preset\'s.',
        choices=tuple(CAM_TARGETS),
        presets={'synthetic': 'paper', 'synthetic_finetune': 'paper', 'paper': 'paper', 'fgvc': DEFAULT_CAM_TARGET})
    squash: Optional[str] = _loss(None, 'Squashing of beta (a part of the target, `loss.CamTarget`\'s squash; '
                                  'None: sigmoid, the paper\'s).', choices=SQUASHES)
    kl: Optional[str] = _loss(None, 'KL direction (a part of the target; None: symmetric, the paper\'s).',
                              choices=KL_MODES)
    target_norm: Optional[str] = _loss(
        None, 'Normalisation of beta (a part of the target; None: none, the paper as written).', choices=TARGET_NORMS)
    cam_temperature: Optional[float] = _loss(None, 'beta is divided by it (a part of the target; None: 1).',
                                             check='>0')
    cam_class: str = _loss(
        'pred', 'Class explained by Grad-CAM: the predicted one (pred, the paper) or the label; under mixup / cutmix, '
        'the label with the larger weight in the mixed target.', choices=CAM_CLASSES)
    label_smoothing: float = _loss(0., 'Label smoothing of the cross-entropy.', check='>=0', presets={'fgvc': 0.1})

    opt: str = _optim(
        'adamw', "A name of timm's optimizer registry (`timm.optim.list_optimizers()`, built by "
        "`create_optimizer_v2`): adamw, lamb, nesterov, ...; sgd is SGD with momentum and no Nesterov, as in the "
        "paper (timm's momentum).", presets={'paper': 'sgd', 'fgvc': 'adamw'})
    lr: float = _optim(
        2e-3, "Learning rate of the head (the GGAM attention and classifier, or the plain model's classifier).",
        check='>0', presets={'synthetic': 5e-3, 'synthetic_finetune': 0.05, 'paper': 0.1, 'fgvc': 1e-4})
    backbone_lr_scale: float = _optim(1.0, 'Backbone learning rate relative to lr (the paper: 0.1).', check='>=0',
                                      presets={'synthetic_finetune': 0.1, 'paper': 0.1, 'fgvc': 1.0})
    momentum: float = _optim(0.9, 'Momentum of the optimizer (SGD).', check='>=0', presets={'paper': 0.9})
    weight_decay: float = _optim(0.05, 'Weight decay, on every parameter as in the paper.', check='>=0',
                                 presets={'paper': 5e-4, 'fgvc': 0.05})
    sched: str = _optim(
        'cosine', 'Learning rate schedule: cosine (per step after the linear warm-up, to min_lr_ratio) or none '
        "(constant after the warm-up); or one of timm's `create_scheduler_v2` names, stepped per optimizer update "
        'with the same warm-up.', choices=SCHEDULES, presets={'paper': 'cosine', 'fgvc': 'cosine'})
    warmup_epochs: float = _optim(0.5, 'Linear warm-up length in epochs (may be fractional).', check='>=0',
                                  presets={'paper': 0., 'fgvc': 1.})
    min_lr_ratio: float = _optim(0., 'Final learning rate of the cosine, relative to the base.', check='>=0')
    epochs: int = _optim(8, 'Total epochs (they define the schedule).', check='int>=1',
                         presets={'synthetic': 12, 'synthetic_finetune': 12, 'paper': 100, 'fgvc': 30})
    batch_size: int = _optim(64, 'Global batch size, split evenly over the DDP processes.', check='int>=1',
                             presets={'synthetic_finetune': 32, 'paper': 16, 'fgvc': 32})
    eval_batch_size: int = _optim(250, 'Evaluation batch size per process.', check='int>=1',
                                  presets={'paper': 64, 'fgvc': 64}, resume_mutable=True)
    grad_clip: Optional[float] = _optim(None, 'Clip the gradient norm to this value (None: no clipping).')
    decay_epochs: float = _optim(30., "Epochs between the decays of timm's step and multistep schedules.",
                                 check='>=0')
    decay_rate: float = _optim(0.1, "Decay factor of timm's step and multistep schedules.", check='>=0')
    layer_decay: Optional[float] = _optim(
        None, "timm's layer-wise learning rate decay of the backbone (`param_groups_layer_decay`), on top of "
        'backbone_lr_scale: layer l of L gets lr * backbone_lr_scale * layer_decay ** (L - l); None: off.',
        metavar='RATE', check='(0,1]', presets={'fgvc': 0.8})
    model_ema: bool = _optim(False, "Keep timm's ModelEmaV3 of the weights; it is what is evaluated and saved "
                                    '(model.safetensors).', cli='bool', presets={'fgvc': True})
    model_ema_decay: float = _optim(0.9998, 'Decay of the EMA of the weights.', check='(0,1)',
                                    presets={'fgvc': 0.999})
    grad_accum_steps: int = _optim(
        1, 'Accumulate the gradients of N batches per optimizer update (the update of a batch N times larger, '
        'BatchNorm statistics aside).', metavar='N', check='int>=1')
    max_nonfinite_steps: int = _optim(
        5, 'Stop the run after more than N updates in a row with a non-finite loss or gradient (each is skipped, as '
        'GradScaler skips an fp16 overflow).', metavar='N', check='int>=1', resume_mutable=True)

    amp: bool = _runtime(False, 'Mixed precision (bfloat16 on the CPU; bfloat16 or float16 on CUDA, see amp_dtype).',
                         cli='bool', presets={'paper': True, 'fgvc': True})
    amp_dtype: str = _runtime(
        'auto', 'Autocast dtype: auto (bfloat16 where supported, else float16), bfloat16 or float16 (CUDA only), or '
        'an alias of them.', choices=AMP_DTYPES)
    channels_last: bool = _runtime(True, 'Use the channels-last (NHWC) memory format.', cli='bool',
                                   presets={'paper': True, 'fgvc': True})
    grad_checkpointing: bool = _runtime(False, "Recompute the backbone's activations in the backward, for less memory "
                                               "(timm's set_grad_checkpointing).", cli='store_true')
    compile: bool = _runtime(False, '`torch.compile` the training forward (the GGAM head stays one graph).',
                             cli='store_true', resume_mutable=True)
    device: str = _runtime('auto', 'auto, cpu, cuda or cuda:N.', resume_mutable=True)
    sync_bn: bool = _runtime(False, 'Convert BatchNorm to SyncBatchNorm under DDP.', cli='store_true')
    deterministic: bool = _runtime(False, '`torch.use_deterministic_algorithms(True)` (and cuDNN benchmark off).',
                                   cli='store_true')
    seed: int = _runtime(0, 'Seed of the model initialisation, the data order and the augmentation.')
    workers: Optional[int] = _runtime(
        None, 'DataLoader worker processes (None: 0 for the in-memory synthetic set, else the usable cores divided by '
        'the processes on this node, at most 8).', check='>=0', resume_mutable=True)
    data_path: str = _runtime(
        'auto', 'auto: on CUDA the synthetic set is cached as a uint8 tensor and augmented on the device '
        '(`data.device`), everything else takes the DataLoader; device or loader force either.', choices=DATA_PATHS,
        resume_mutable=True)
    threads: Optional[int] = _runtime(None, 'CPU threads per process (None: the usable cores divided by the processes '
                                            'on this node).', resume_mutable=True)

    output: Optional[str] = _output(None, 'Run directory (None: output/train/<time>-<dataset>-<model>).',
                                    metavar='DIR', resume_mutable=True)
    overwrite: bool = _output(False, 'Replace the run files in a non-empty output directory.', cli='store_true',
                              resume_mutable=True)
    resume: bool = _output(
        False, 'Continue the run in output from its newest checkpoint (--resume DIR names the directory, '
        '--resume alone takes --output).', cli='optional', metavar='DIR', resume_mutable=True)
    stop_after: Optional[int] = _output(
        None, 'End this invocation after N epochs (the schedule still spans epochs); resume it later.',
        metavar='N', check='>=1', resume_mutable=True)
    eval_every: int = _output(1, 'Evaluate every N epochs (the last epoch is always evaluated).', check='int>=1',
                              resume_mutable=True)
    keep_checkpoints: int = _output(2, 'Checkpoints to keep (2: resume falls back to the previous one if the newest is '
                                       'damaged).', check='int>=1', resume_mutable=True)
    tensorboard: bool = _output(False, 'Also log to OUT/tensorboard.', cli='store_true', resume_mutable=True)
    progress: bool = _output(True, 'Show tqdm progress bars and a line per epoch (--no-progress: neither).',
                             cli='store_false', resume_mutable=True)
    preset: Optional[str] = _output(
        None, 'The preset these values came from (recorded only; --preset on the command line); None for a '
        "`TrainConfig(...)` built from the field defaults (which are no preset's: `from_preset` applies one).",
        cli=None, flag='--preset')

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
        defaults = asdict(cls())
        # the preset's backbone and dataset arguments go with its backbone and dataset: another --model or
        # --dataset starts from none of them; otherwise --model-arg / --data-arg add to them
        for owner, kwargs in (('model', 'model_kwargs'), ('dataset', 'dataset_kwargs')):
            preset_value = base.get(owner, defaults[owner])
            if overrides.get(owner, preset_value) != preset_value:
                base.pop(kwargs, None)
                if owner == 'model':
                    base.pop('pretrained_file', None)  # the preset's weights are its backbone's
                    if preset in BACKBONE_TARGET_PRESETS:
                        base.pop('cam_target', None)  # and so is a target measured on that backbone
            elif kwargs in overrides and kwargs in base:
                merged = {**base[kwargs], **overrides[kwargs]}
                if 'samples_per_class' in overrides[kwargs] and 'train_samples_per_class' not in overrides[kwargs]:
                    merged.pop('train_samples_per_class', None)  # samples_per_class sizes every split
                overrides = {**overrides, kwargs: merged}
        if any(overrides.get(k) is not None for k in TARGET_PARTS) or overrides.get('guide') == 'spatial':
            base.pop('cam_target', None)  # a target given in parts, or none (spatial guidance), replaces the preset's
        # a flag that only makes sense beside another setting selects it (`--aa` selects `--train-aug timm`)
        overrides = apply_implications({**defaults, **base}, overrides)
        values = {**defaults, **base, **overrides}
        if values['guide'] == 'channel' and all(values[k] is None for k in ('cam_target', *TARGET_PARTS)):
            # the run records the target it trains with by name, so a later default does not change it on --resume
            overrides = {**overrides, 'cam_target': DEFAULT_CAM_TARGET}
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
        if kw.get('cam_target') is not None or kw.get('guide') == 'spatial':
            # a config.json written when the target's parts defaulted to the paper's values records them beside a
            # named target (or spatial guidance): there they were not given
            t = CAM_TARGETS['paper']
            paper = dict(zip(TARGET_PARTS, (t.squash, t.kl, t.norm, t.temperature)))
            kw.update({k: None for k in TARGET_PARTS if k in kw and kw[k] == paper[k]})
        return cls(**kw)

    def loss_target(self) -> CamTarget:
        """The `GGAMLoss` target of this run: `cam_target` by name, else its parts given on top of the paper's, else
        `DEFAULT_CAM_TARGET`."""
        if self.cam_target is not None:
            return CAM_TARGETS[self.cam_target]
        if all(getattr(self, k) is None for k in TARGET_PARTS):
            return CAM_TARGETS[DEFAULT_CAM_TARGET]
        return target_from_parts(self.squash, self.kl, self.target_norm, self.cam_temperature)

    @property
    def arm(self) -> str:
        """What this run trains: 'ggam', 'se', 'cbam' (`attention`) or 'plain' (the timm model, `plain`)."""
        return 'plain' if self.plain else self.attention

    def validate(self) -> 'TrainConfig':
        """Raise ValueError naming the field for a value out of range; returns self.

        The declared choices and range checks of every field (`option()`; None passes for an Optional field) run
        first, then the checks that involve several fields.
        """
        _check_optimizer(self.opt)
        for f in fields(self):
            spec, value = option_spec(f), getattr(self, f.name)
            if spec['choices'] is not None and not (value is None and is_optional(f.type)) \
                    and value not in spec['choices']:
                raise ValueError(f'{f.name} must be one of {spec["choices"]}, got {value!r}')
            if spec['check'] is not None:
                check_value(f.name, value, spec['check'], allow_none=is_optional(f.type))
        if self.cam_target is not None:
            parts = {k: getattr(self, k) for k in TARGET_PARTS}
            changed = {k: v for k, v in parts.items() if v is not None}
            if changed:
                raise ValueError(f'--cam-target {self.cam_target} (cam_target) names the whole target, and '
                                 f'{", ".join(flag(k, v) for k, v in changed.items())} sets a part of it: drop one '
                                 'of the two')
        if self.guide == 'spatial':
            target = {k: getattr(self, k) for k in ('cam_target', *TARGET_PARTS)}
            set_ = {k: v for k, v in target.items() if v is not None}
            if set_:
                raise ValueError(f'--guide spatial (guide) pulls T towards the Grad-CAM map and has no channel target, '
                                 f'and {", ".join(flag(k, v) for k, v in set_.items())} sets one: drop one of the two')
            if not self.spatial_attn:
                raise ValueError('--guide spatial (guide) supervises the spatial map T, and --no-spatial-attn '
                                 '(spatial_attn) removes it: drop one of the two')
        if self.plain and self.attention != 'ggam':
            raise ValueError(f'--plain (plain) trains the timm model without a head attention, and --attention '
                             f'{self.attention} (attention) puts one there: drop one of the two')
        if self.channel_rescale and self.spatial_attn:
            raise ValueError('channel_rescale=True (--channel-rescale) scales eq. 1 and needs spatial_attn=False '
                             '(--no-spatial-attn)')
        if self.spatial_gate and not self.spatial_attn:
            raise ValueError('spatial_gate=True (--spatial-gate) gates the spatial map and needs spatial_attn=True '
                             '(drop --no-spatial-attn)')
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
        if self.resume and not self.output:
            raise ValueError('resume=True needs output, the run directory to resume')
        if self.pretrained_file:
            if not Path(self.pretrained_file).is_file():
                raise ValueError(f'pretrained_file {self.pretrained_file!r} does not exist')
            check_safetensors(self.pretrained_file, what='--pretrained-file')
        check_backbone_name(self.model, 'model')
        return self


if TrainConfig.__doc__:  # the field entries, after the hand-written introduction
    TrainConfig.__doc__ = TrainConfig.__doc__.rstrip() + '\n\n' + config_doc(TrainConfig) + '\n    '


def _check_optimizer(name: str) -> None:
    """Refuse an optimizer name timm's registry does not know, with the closest names."""
    from timm.optim import list_optimizers
    known = set(list_optimizers()) | {'sgd'}
    if not isinstance(name, str) or name.lower() not in known:
        close = difflib.get_close_matches(str(name).lower(), sorted(known), n=5)
        raise ValueError(f'opt {name!r} is not an optimizer of timm' + (f'; did you mean one of {close}?' if close
                                                                       else '') + ' (timm.optim.list_optimizers())')


# preset name -> {field: value}, made from the fields' declarations (their `presets`), in PRESET_NOTES' order
PRESETS: Dict[str, Dict[str, Any]] = build_presets(TrainConfig, tuple(PRESET_NOTES))

# fields that may differ when a run is resumed (they do not change the trained weights)
RESUME_MUTABLE_FIELDS = frozenset(f.name for f in fields(TrainConfig) if f.metadata['resume_mutable'])

"""The `train` and `eval` subcommands of `ggam-layers`: their options and how they become a `TrainConfig`."""
import argparse
import ast
import dataclasses
import errno
import os
import shlex
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._files import CONFIG_NAME, atomic_write_json
from ..data.device import DATA_PATHS
from ..data.loader import TRAIN_AUGS
from ..loss import CAM_TARGETS
from ..model import ATTENTIONS
from .checkpoint import CheckpointWriteError
from .compare import ARMS, check_arms, train_compare
from .config import AMP_DTYPES, CAM_CLASSES, MIXUP_MODES, PRESETS, SCHEDULES, TrainConfig
from .evaluate import evaluate
from .loop import TTA_MODES, TrainingDiverged
from .run_dir import read_run_config
from .runner import train
from .seeds import train_compare_seeds
from .signals import TrainingInterrupted, exit_code
from .stats import percent

__all__ = ['DEFAULT_PRESET', 'add_train_args', 'config_from_args', 'compare_requested', 'register_cli']

# what `ggam-layers train` runs without --preset: the paper's setting (a pretrained backbone fine-tuned), on the
# built-in synthetic set with the backbone the package ships (benchmarks/README.md, "Fine-tuning pretrained features")
DEFAULT_PRESET = 'synthetic_finetune'


def _preset_help(name: str, text: str) -> str:
    default = {f.name: f.default for f in fields(TrainConfig) if f.default is not dataclasses.MISSING}
    if name not in default:
        return text
    values = {preset: PRESETS[preset].get(name, default[name]) for preset in PRESETS}
    if len(set(map(repr, values.values()))) == 1:
        return f'{text} (default {values[DEFAULT_PRESET]})'
    return f'{text} (' + '; '.join(f'{k}: {v}' for k, v in values.items()) + ')'


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
    p.add_argument('--preset', choices=tuple(PRESETS), default=DEFAULT_PRESET,
                   help='recipe to start from: synthetic_finetune (the default: the shipped pretrained backbone '
                        'fine-tuned on the built-in data set, a fast CPU run), synthetic (the same data set, from '
                        'scratch), '
                        "paper (the paper's CUB-200-2011 recipe) or fgvc (a modern fine-tune: ConvNeXt-S at 384 px, "
                        'EMA, mixup / cutmix, RandAugment, layer decay); every option below overrides it')
    p.add_argument('--compare-plain', action=argparse.BooleanOptionalAction,
                   help='train GGAM and then the plain backbone the same way and print both test accuracies '
                        '(default: on when `train` gets no option at all)')
    p.add_argument('--compare', nargs=2, choices=ARMS, metavar=('A', 'B'),
                   help=f'train any two of {", ".join(ARMS)} the same way into OUT/A and OUT/B and print both test '
                        'accuracies (--compare-plain is --compare ggam plain, or ATTENTION plain with --attention)')
    p.add_argument('--seeds', nargs='+', type=int, metavar='S',
                   help='with --compare-plain (implied) or --compare A B: train both models once per seed into '
                        'OUT/seed<S>/ and print each pair, mean ± std and the paired difference with the seeds where '
                        'the first wins')
    g = p.add_argument_group('data')
    g.add_argument('--dataset', help=h('dataset', 'synthetic, synthetic_pretrain, cub, nabirds, dogs, inat, aircraft, '
                                                  'cars, flowers, pets, folder or hfds/NAME'))
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
    g.add_argument('--aa', metavar='POLICY', help=h('aa', "timm auto-augment policy with --train-aug timm, e.g. "
                                                     "rand-m9-mstd0.5-inc1 (RandAugment) or original (AutoAugment)"))
    g.add_argument('--reprob', type=float, help=h('reprob', 'random erasing probability (--train-aug timm)'))
    g.add_argument('--color-jitter', type=float, help=h('color_jitter', 'colour jitter strength (--train-aug timm; '
                                                                        'off under RandAugment)'))
    g.add_argument('--mixup', type=float, metavar='ALPHA', help=h('mixup', 'mixup alpha (0: off; timm Mixup)'))
    g.add_argument('--cutmix', type=float, metavar='ALPHA', help=h('cutmix', 'cutmix alpha (0: off)'))
    g.add_argument('--mixup-prob', type=float, help=h('mixup_prob', 'probability of mixing a batch'))
    g.add_argument('--mixup-switch-prob', type=float,
                   help=h('mixup_switch_prob', 'probability of cutmix instead of mixup when both are on'))
    g.add_argument('--mixup-mode', choices=MIXUP_MODES, help=h('mixup_mode', 'mix per batch, pair or element'))
    g.add_argument('--interpolation', help="resize interpolation (default: the backbone's)")
    g.add_argument('--mean', type=_floats3, help="normalisation mean, three numbers (default: the backbone's)")
    g.add_argument('--std', type=_floats3, help="normalisation std, three numbers (default: the backbone's)")
    g.add_argument('--strict-data', action='store_true',
                   help='stop at the first unreadable image (default: skip it with a warning and count it)')
    g.add_argument('--max-bad-fraction', type=float, metavar='F',
                   help=h('max_bad_fraction', 'stop when more than this fraction of the images is unreadable'))
    g = p.add_argument_group('model')
    g.add_argument('--model', help=h('model', 'timm backbone'))
    g.add_argument('--plain', action='store_true', help='train the plain timm backbone with cross-entropy (baseline)')
    g.add_argument('--attention', choices=ATTENTIONS,
                   help=h('attention', "the head's attention: ggam (the paper's method) or the paper's Table 2 "
                                       "comparators at the same place, se / cbam (timm.layers' SEModule / CbamModule, "
                                       'global average pooling, cross-entropy only)'))
    g.add_argument('--pretrained', action=argparse.BooleanOptionalAction,
                   help=h('pretrained', "load the backbone's pretrained weights through timm"))
    g.add_argument('--pretrained-file', metavar='PATH', help='local backbone weights (timm pretrained_cfg_overlay)')
    g.add_argument('--no-channel-attn', dest='channel_attn', action='store_false',
                   help='ablation: no channel attention')
    g.add_argument('--no-spatial-attn', dest='spatial_attn', action='store_false',
                   help='ablation: no spatial attention')
    g.add_argument('--channel-rescale', action='store_true',
                   help='with --no-spatial-attn: C * S * A instead of eq. 1\'s S * A (ours)')
    g.add_argument('--spatial-gate', action='store_true',
                   help='blend T in through a learned gate g from 0: D = A * (1 - g + g * N T), so the head starts '
                        'as the plain global average pool (ours)')
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
    g.add_argument('--cam-target', choices=tuple(CAM_TARGETS),
                   help='the Grad-CAM target by name: paper (eq. 5 as written), authors (their code), standardized '
                        '(beta standardised per sample), uniform (the control: KL towards 1/C, no Grad-CAM); '
                        'replaces the four options below')
    g.add_argument('--squash', choices=('sigmoid', 'softmax'), help=h('squash', 'squashing of beta'))
    g.add_argument('--kl', choices=('symmetric', 'forward', 'reverse'), help=h('kl', 'KL direction'))
    g.add_argument('--target-norm', choices=('none', 'standardize'), help=h('target_norm', 'normalisation of beta'))
    g.add_argument('--cam-temperature', type=float, help=h('cam_temperature', 'beta is divided by it'))
    g.add_argument('--cam-class', choices=CAM_CLASSES,
                   help=h('cam_class', 'class explained by Grad-CAM: the predicted one (paper) or the label (under '
                                       'mixup / cutmix the larger-weight label)'))
    g.add_argument('--label-smoothing', type=float, help=h('label_smoothing', 'of the cross-entropy'))
    g = p.add_argument_group('optimisation')
    g.add_argument('--opt', help=h('opt', "any optimizer of timm.optim.list_optimizers(); sgd: momentum without "
                                          "Nesterov, as the paper (timm's momentum)"))
    g.add_argument('--lr', type=float, help=h('lr', 'learning rate of the head'))
    g.add_argument('--backbone-lr-scale', type=float, help=h('backbone_lr_scale', 'backbone lr / head lr'))
    g.add_argument('--momentum', type=float, help=h('momentum', 'SGD momentum'))
    g.add_argument('--weight-decay', type=float, help=h('weight_decay', 'weight decay'))
    g.add_argument('--sched', choices=SCHEDULES,
                   help=h('sched', 'learning rate schedule: cosine / none per update after the linear warm-up, or '
                                   "timm's create_scheduler_v2 names"))
    g.add_argument('--decay-epochs', type=float, help=h('decay_epochs', "epochs between decays of timm's step "
                                                                        'schedules'))
    g.add_argument('--decay-rate', type=float, help=h('decay_rate', "decay factor of timm's step schedules"))
    g.add_argument('--layer-decay', type=float, metavar='RATE',
                   help='layer-wise lr decay of the backbone (timm param_groups_layer_decay), on top of '
                        '--backbone-lr-scale')
    g.add_argument('--model-ema', action=argparse.BooleanOptionalAction,
                   help=h('model_ema', "keep timm's ModelEmaV3 of the weights: evaluated and saved as "
                                       'model.safetensors'))
    g.add_argument('--model-ema-decay', type=float, help=h('model_ema_decay', 'EMA decay'))
    g.add_argument('--grad-accum-steps', type=int, metavar='N',
                   help=h('grad_accum_steps', 'batches per optimizer update (the update of a batch N times larger)'))
    g.add_argument('--max-nonfinite-steps', type=int, metavar='N',
                   help=h('max_nonfinite_steps', 'stop after more than N updates in a row with a non-finite loss or '
                                                 'gradient (each is skipped)'))
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
    g.add_argument('--grad-checkpointing', action='store_true',
                   help="recompute the backbone's activations in the backward (less memory)")
    g.add_argument('--compile', action='store_true', help='torch.compile the training forward')
    g.add_argument('--device', help=h('device', 'auto, cpu, cuda or cuda:N'))
    g.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under DDP')
    g.add_argument('--deterministic', action='store_true', help='torch.use_deterministic_algorithms')
    g.add_argument('--seed', type=int, help=h('seed', 'seed'))
    g.add_argument('--workers', type=int, help=h('workers', 'DataLoader workers'))
    g.add_argument('--data-path', choices=DATA_PATHS,
                   help=h('data_path', 'auto: on CUDA the synthetic set is a cached tensor augmented on the device'))
    g.add_argument('--threads', type=int, help='CPU threads per process (default: cores / processes per node)')
    g = p.add_argument_group('output')
    g.add_argument('--output', metavar='DIR', help='run directory (default: output/train/<time>-<dataset>-<model>)')
    g.add_argument('--overwrite', action='store_true', help='replace the run files of a non-empty output directory')
    g.add_argument('--resume', nargs='?', const=True, metavar='DIR',
                   help='continue the run in DIR (or --output) from its newest checkpoint')
    g.add_argument('--stop-after', type=int, metavar='N', help='stop after N epochs (the schedule keeps --epochs)')
    g.add_argument('--eval-every', type=int, help=h('eval_every', 'evaluate every N epochs'))
    g.add_argument('--keep-checkpoints', type=int,
                   help=h('keep_checkpoints', 'checkpoints to keep (--resume falls back to an older one if the newest '
                                              'is damaged)'))
    g.add_argument('--tensorboard', action='store_true', help='log to OUT/tensorboard')
    g.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars or epoch lines')


def config_from_args(args: argparse.Namespace) -> Tuple[TrainConfig, Optional[bool]]:
    """The `TrainConfig` of parsed `train` arguments and `--compare-plain` (None when not given).

    Flags given on the command line override the preset; with `--resume` they override the saved run's config
    (only `RESUME_MUTABLE_FIELDS` may change).
    """
    ns = dict(vars(args))
    for key in ('command', 'func', '_argv', 'seeds', 'compare'):
        ns.pop(key, None)
    preset = ns.pop('preset', DEFAULT_PRESET)
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
        arm_dirs = [out / arm for arm in ARMS if (out / arm / CONFIG_NAME).is_file()]
        compare_run = not (out / CONFIG_NAME).is_file() and bool(arm_dirs)
        saved_dir = arm_dirs[0] if compare_run else out
        saved = asdict(TrainConfig.from_dict(read_run_config(saved_dir)['ggam_layers']['train_config']))
        saved.update(stop_after=None, overwrite=False)  # settings of the interrupted invocation, not of the run
        for owner, key in (('model', 'model_kwargs'), ('dataset', 'dataset_kwargs')):
            if key in ns:  # --model-arg / --data-arg add to the preset's, as they did when the run started
                fresh = TrainConfig.from_preset(saved.get('preset') or preset,
                                                **{k: ns[k] for k in (owner, key) if k in ns})
                ns[key] = getattr(fresh, key)
        saved.update(ns)
        if compare_run:  # each model's own plain / attention are set again per arm
            saved.update(plain=False, attention='ggam', output=str(out))
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
    seeds = getattr(args, 'seeds', None)
    arms = _compare_arms(cfg, compare, getattr(args, 'compare', None))
    if getattr(args, 'compare', None) is not None:
        compare = True
    if seeds is not None:
        if compare is False or cfg.plain:
            other = '--no-compare-plain' if compare is False else '--plain'
            raise ValueError(f'--seeds trains two models (it implies --compare-plain, or takes --compare A B), and '
                             f'{other} contradicts it: drop one of the two')
        if cfg.resume:
            raise ValueError('--seeds cannot resume a run; rerun the command with a new --output (or resume one seed '
                             'with --resume OUT/seed<S>)')
        compare = True
    compare = compare_requested(compare, argv)
    command = 'ggam-layers train' + ('' if not argv else ' ' + shlex.join(argv))
    try:
        if seeds is not None:
            train_compare_seeds(cfg, seeds, command=command, arms=arms)
            return 0
        if compare:
            train_compare(cfg, command=command, arms=arms)
            return 0
        result = train(cfg, command=command)
    except TrainingInterrupted as e:  # train() said where the run stands and how to resume
        return exit_code(e)
    except TrainingDiverged:  # train() said which update, the last good checkpoint and what to try
        return 1
    except CheckpointWriteError as e:
        print(f'ggam-layers train: error: {e}', file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        where = cfg.output or 'the run directory'
        print(f'ggam-layers train: error: could not write {e.filename or "a run file"} ({e.strerror}): every '
              f'checkpoint written before is intact; free disk space, then continue with `ggam-layers train --resume '
              f'{where}`', file=sys.stderr, flush=True)
        return 1
    if int(os.environ.get('RANK', '0')) == 0:
        print(f'\n{result["label"]}: test top-1 {percent(result["test_top1"])}, top-5 {percent(result["test_top5"])}'
              f' after {result["epochs_done"]}/{cfg.epochs} epochs ({result["train_time_s"]:.0f} s); '
              f'run: {result["output"]}{_skipped_note(result)}', flush=True)
    return 0


def _compare_arms(cfg: TrainConfig, compare_plain: Optional[bool], arms: Optional[Sequence[str]]) -> Tuple[str, str]:
    """The two models a comparison trains: `--compare A B`, else the run's attention against the plain model."""
    if arms is None:
        return (cfg.attention, 'plain')
    if compare_plain is not None:
        raise ValueError(f'--compare {" ".join(arms)} names both models and --{"" if compare_plain else "no-"}'
                         'compare-plain contradicts it: drop one of the two')
    if cfg.plain or cfg.attention != 'ggam':
        other = '--plain' if cfg.plain else f'--attention {cfg.attention}'
        raise ValueError(f'--compare {" ".join(arms)} sets each model\'s head, and {other} contradicts it: drop one '
                         'of the two')
    return check_arms(arms)


def _skipped_note(result: Dict[str, Any]) -> str:
    n_train, n_eval = result.get('skipped_train_images') or 0, result.get('skipped_eval_images') or 0
    if not n_train and not n_eval:
        return ''
    return (f'; skipped {n_train} unreadable training and {n_eval} evaluation images (listed in results.json, '
            'skipped_files)')


def _run_eval(args: argparse.Namespace) -> int:
    report = args.report
    if report is None:
        run = Path(args.checkpoint).parent if Path(args.checkpoint).is_file() else Path(args.checkpoint)
        split = args.split or read_run_config(run)['ggam_layers']['train_config'].get('eval_split', 'test')
        report = str(run / 'eval' / f'{split}-{args.tta}')
    res = evaluate(args.checkpoint, split=args.split, data_root=args.data_root, batch_size=args.batch_size,
                   device=args.device, workers=args.workers, progress=args.progress, tta=args.tta,
                   report_dir=report or None)
    if int(os.environ.get('RANK', '0')) == 0:
        tta = {'none': 'no TTA', 'flip': 'TTA: flip', 'flip-crops': 'TTA: flip + 4 crops'}[res['tta']]
        line = (f'{args.checkpoint} [{res["split"]}, {res["count"]} images, {tta}]: top-1 {percent(res["top1"])}, '
                f'top-5 {percent(res["top5"])}, mean per-class {percent(res["mean_per_class_top1"])}, '
                f'loss {res["loss"]:.4f}')
        if res.get('skipped_images'):
            line += f' ({res["skipped_images"]} unreadable images skipped)'
        if res['recorded_top1'] is not None:
            same = 'the same' if res['matches_recorded'] else 'DIFFERENT'
            line += f' ({same} as recorded at the end of training: {percent(res["recorded_top1"])})'
        print(line, flush=True)
        if res['report_files']:
            print(f'report: {", ".join(res["report_files"])}', flush=True)
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
        description=f'Train a GGAM model on a fine-grained dataset. Without any option (preset {DEFAULT_PRESET}): '
                    'GGAM and the plain test_resnet, both fine-tuned from the pretrained backbone the package ships, '
                    'on the built-in synthetic set at 112 px with output stride 16 (a 7 x 7 map), then both test '
                    'accuracies side by side (about two minutes on a 2-core CPU). --preset synthetic trains the same '
                    'from scratch. Under torchrun it trains with DDP.',
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
    e.add_argument('--tta', choices=TTA_MODES, default='none',
                   help='test-time augmentation: the softmax averaged over a horizontal flip (flip), or over the flip '
                        'and four corner crops of 87.5%% (flip-crops); the line printed says which was used')
    e.add_argument('--report', default=None, metavar='DIR',
                   help='folder for per_class.csv, confusion.csv and confusion.png (default: RUN/eval/SPLIT-TTA; '
                        "'' for none)")
    e.add_argument('--json', default=None, metavar='FILE', help='also write the result to FILE')
    e.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    e.set_defaults(func=_run_eval)
    return [p, e]

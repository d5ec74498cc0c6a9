"""The `train` and `eval` subcommands of `ggam-layers`: their options and how they become a `TrainConfig`."""
import argparse
import ast
import dataclasses
import errno
import os
import shlex
import sys
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .._files import CONFIG_NAME, atomic_write_json
from .checkpoint import CheckpointWriteError
from .compare import ARMS, check_arms, train_compare
from .config import PRESET_NOTES, PRESETS, TrainConfig
from .evaluate import evaluate
from .loop import TTA_MODES, TrainingDiverged
from .options import cli_flag, is_optional, option_help, option_spec
from .run_dir import read_run_config
from .runner import train
from .seeds import train_compare_seeds
from .signals import TrainingInterrupted, exit_code
from .stats import percent

__all__ = ['DEFAULT_PRESET', 'add_train_args', 'config_from_args', 'compare_requested', 'register_cli']

# what `ggam-layers train` runs without --preset: the paper's setting (a pretrained backbone fine-tuned), on the
# built-in synthetic set with the backbone the package ships (benchmarks/README.md, "Fine-tuning pretrained features")
DEFAULT_PRESET = 'synthetic_finetune'


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
    """Add the `train` options: one per `TrainConfig` field, made from its declaration (`train/options.py`), and the
    options that are not fields (--preset, --compare-plain, --compare, --seeds). Every field's default is SUPPRESS,
    so that only explicit flags override the preset."""
    p.add_argument('--preset', choices=tuple(PRESETS), default=DEFAULT_PRESET,
                   help=_escape('recipe to start from; every option below overrides it. '
                                + ' '.join(f'{name}: {PRESET_NOTES[name]}' for name in PRESETS)))
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
    groups: Dict[str, Any] = {}
    for f in fields(TrainConfig):
        spec = option_spec(f)
        if spec['cli'] is None:  # `preset`: --preset above
            continue
        if spec['group'] not in groups:
            groups[spec['group']] = p.add_argument_group(spec['group'])
        g = groups[spec['group']]
        g.add_argument(cli_flag(f), dest=f.name, default=argparse.SUPPRESS,
                       help=_escape(option_help(f, PRESETS, DEFAULT_PRESET)), **_argparse_form(f, spec))
        for alias, (value, text) in spec['shortcuts'].items():
            g.add_argument(alias, dest=f.name, action='store_const', const=value, default=argparse.SUPPRESS,
                           help=_escape(text))


def _escape(text: str) -> str:
    return text.replace('%', '%%')  # argparse formats help with %


def _argparse_form(f: dataclasses.Field, spec: Dict[str, Any]) -> Dict[str, Any]:
    """The `add_argument` keywords of a field's command-line form (`options.CLI_FORMS`)."""
    form = spec['cli']
    if form in ('store_true', 'store_false'):
        return {'action': form}
    if form == 'bool':
        return {'action': argparse.BooleanOptionalAction}
    kwargs: Dict[str, Any] = {'metavar': spec['metavar']} if spec['metavar'] else {}
    if form == 'append_kv':
        return {**kwargs, 'action': 'append', 'type': _parse_kv}
    if form == 'optional':
        return {**kwargs, 'nargs': '?', 'const': True}
    value_type = _value_type(f.type)
    if value_type is not None:
        kwargs['type'] = value_type
    if spec['choices'] is not None:
        kwargs['choices'] = spec['choices']
    return kwargs


def _value_type(tp: Any) -> Optional[Callable[[str], Any]]:
    """The argparse type of a 'value' field, from its annotation: int, float, three floats, or None for a string."""
    if is_optional(tp):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp in (int, float):
        return tp
    if typing.get_origin(tp) is tuple:
        if typing.get_args(tp) != (float, float, float):
            raise TypeError(f'no command-line type for {tp}')
        return _floats3
    return None


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

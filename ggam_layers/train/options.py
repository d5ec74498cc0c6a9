"""Each `TrainConfig` field declared once: `option()` puts its help text, choices, the presets' values, its command-line
form and its range check in the field's metadata, and everything else is made from that: the class docstring
(`config_doc`), `PRESETS` (`build_presets`), the checks of `TrainConfig.validate` (`check_value`), the options of
`ggam-layers train` (`cli.add_train_args`, with `option_help`) and docs/options.md (`options_table`).

This module holds only the machinery; the declarations are the fields of `TrainConfig` (`train/config.py`).
"""
import copy
import dataclasses
import os
import re
import textwrap
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .._files import PRETRAINED_DIR

__all__ = ['CLI_FORMS', 'GROUPS', 'build_presets', 'check_value', 'cli_flag', 'cli_flags', 'config_doc',
           'describe_check', 'field_default', 'is_optional', 'option', 'option_help', 'option_spec', 'options_table',
           'preset_values', 'show', 'type_name']

# argparse group title -> the docstring's section title; the fields of a group are declared together, in this order
GROUPS: Dict[str, str] = {'data': 'Data', 'model': 'Model', 'GGAM loss': 'Loss (`GGAMLoss`)',
                          'optimisation': 'Optimisation', 'runtime': 'Runtime', 'output': 'Output'}
# how a field is set on the command line: 'value' (--name VALUE, of the field's type), 'store_true' (--name),
# 'store_false' (--no-name), 'bool' (--name / --no-name), 'append_kv' (repeatable KEY=VALUE into the dict),
# 'optional' (--name [VALUE]: alone it sets True); None: not on the command line
CLI_FORMS = ('value', 'store_true', 'store_false', 'bool', 'append_kv', 'optional', None)
_CHECK = re.compile(r'^(?:(?P<int>int)?(?P<op>>=|>)(?P<bound>-?[0-9.]+)'
                    r'|(?P<lo_b>[\[(])(?P<lo>-?[0-9.]+),(?P<hi>-?[0-9.]+)(?P<hi_b>[\])]))$')


def option(default: Any, help: str, *, group: str, choices: Optional[Sequence[Any]] = None,
           presets: Optional[Mapping[str, Any]] = None, cli: Optional[str] = 'value', flag: Optional[str] = None,
           metavar: Optional[str] = None, check: Optional[str] = None,
           shortcuts: Optional[Mapping[str, Tuple[Any, str]]] = None, resume_mutable: bool = False) -> Any:
    """The one declaration of a `TrainConfig` field: a `dataclasses.field` whose metadata says everything else.

    Args:
        default: The field default (`TrainConfig()`); a dict becomes a `default_factory` of copies.
        help: The one text that describes the field (docstring, `--help`, docs/options.md).
        group: A key of `GROUPS`.
        choices: The allowed values (None: any); `validate` and the command line refuse others (None passes for an
            Optional field).
        presets: preset name -> the value that preset sets (the presets that set nothing keep `default`).
        cli: A form of `CLI_FORMS`.
        flag: The option's name where it is not `--name` (`--no-name` for 'store_false').
        metavar: argparse's metavar.
        check: A range `validate` checks: 'int>=1', '>=0', '>0', '[0,1]', '(0,1]', '(0,1)', ... (None passes for an
            Optional field).
        shortcuts: Extra options that set the field to a constant: {'--no-ggam-loss': (0.0, help)}.
        resume_mutable: The field may differ when a run is resumed (it does not change the trained weights:
            where the output goes, how many workers, ...); `RESUME_MUTABLE_FIELDS` is made from it.
    """
    if group not in GROUPS:
        raise ValueError(f'group must be one of {tuple(GROUPS)}, got {group!r}')
    if cli not in CLI_FORMS:
        raise ValueError(f'cli must be one of {CLI_FORMS}, got {cli!r}')
    if check is not None:
        describe_check(check)
    if not help.strip().endswith('.'):
        raise ValueError(f'a help text is one or more sentences, ending with a full stop: {help!r}')
    metadata = {'help': ' '.join(help.split()), 'group': group, 'choices': None if choices is None else tuple(choices),
                'presets': dict(presets or {}), 'cli': cli, 'flag': flag, 'metavar': metavar, 'check': check,
                'shortcuts': dict(shortcuts or {}), 'resume_mutable': bool(resume_mutable)}
    if isinstance(default, (dict, list, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_spec(f: dataclasses.Field) -> Dict[str, Any]:
    """The declaration of field `f` (`option()`'s metadata); KeyError for a field declared without `option()`."""
    if 'help' not in f.metadata:
        raise KeyError(f'field {f.name!r} is not declared with option()')
    return dict(f.metadata)


def field_default(f: dataclasses.Field) -> Any:
    """The default value of field `f` (a fresh one where it has a `default_factory`)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def is_optional(tp: Any) -> bool:
    """Whether a type annotation admits None (`Optional[X]`)."""
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def type_name(tp: Any) -> str:
    """A short readable name of a field's type annotation: 'float', 'str or None', '3 floats or None', 'dict'."""
    if is_optional(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return f'{type_name(rest[0])} or None'
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return f'{len(args)} {args[0].__name__}s'
    if origin is dict:
        return 'dict'
    return getattr(tp, '__name__', str(tp))


def cli_flag(f: dataclasses.Field) -> Optional[str]:
    """The option string that sets field `f` on the command line (None for no option)."""
    spec = option_spec(f)
    if spec['cli'] is None:
        return None
    if spec['flag']:
        return spec['flag']
    return ('--no-' if spec['cli'] == 'store_false' else '--') + f.name.replace('_', '-')


def cli_flags(f: dataclasses.Field) -> List[str]:
    """Every option string that sets field `f`: its flag (both spellings of a 'bool'), then its shortcuts."""
    flag = cli_flag(f)
    if flag is None:
        return []
    flags = [flag, '--no-' + flag[2:]] if option_spec(f)['cli'] == 'bool' else [flag]
    return flags + list(option_spec(f)['shortcuts'])


def describe_check(check: str) -> str:
    """The words of a range check: 'int>=1' -> 'an int >= 1', '[0,1]' -> 'in [0, 1]'; ValueError for bad syntax."""
    m = _CHECK.match(check.replace(' ', ''))
    if m is None:
        raise ValueError(f"check must look like 'int>=1', '>=0', '>0', '[0,1]' or '(0,1]', got {check!r}")
    if m['op']:
        return f"{'an int ' if m['int'] else ''}{m['op']} {m['bound']}"
    return f"in {m['lo_b']}{m['lo']}, {m['hi']}{m['hi_b']}"


def check_value(name: str, value: Any, check: str, allow_none: bool = False) -> None:
    """Raise ValueError naming `name` where `value` is outside `check` (`option()`'s syntax); None passes if allowed."""
    if value is None and allow_none:
        return
    m = _CHECK.match(check.replace(' ', ''))
    if m is None:
        describe_check(check)  # raises
    try:
        if m['op']:
            bound = float(m['bound'])
            ok = (not m['int'] or isinstance(value, int)) and (value >= bound if m['op'] == '>=' else value > bound)
        else:
            lo, hi = float(m['lo']), float(m['hi'])
            ok = (value >= lo if m['lo_b'] == '[' else value > lo) and (value <= hi if m['hi_b'] == ']' else value < hi)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f'{name} must be {describe_check(check)}{" (or None)" if allow_none else ""}, got {value!r}')


def build_presets(cls: type, names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """preset name -> {field: value} of every field whose declaration gives that preset a value, in field order."""
    presets: Dict[str, Dict[str, Any]] = {name: {} for name in names}
    for f in dataclasses.fields(cls):
        for name, value in option_spec(f)['presets'].items():
            if name not in presets:
                raise ValueError(f'field {f.name!r} sets a value for preset {name!r}, not one of {tuple(names)}')
            presets[name][f.name] = copy.deepcopy(value)  # each preset owns its dicts, as separate literals would
    return presets


def preset_values(f: dataclasses.Field, presets: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """preset name -> the value field `f` has under that preset (the field default where the preset sets none)."""
    return {name: values[f.name] if f.name in values else field_default(f) for name, values in presets.items()}


def show(value: Any) -> str:
    """A value as the help and the docs show it: bools as on / off, the package's own files relative to it."""
    if isinstance(value, bool):
        return 'on' if value else 'off'
    if isinstance(value, str):
        root = os.path.dirname(os.path.dirname(PRETRAINED_DIR)) + os.sep
        return value[len(root):].replace(os.sep, '/') if value.startswith(root) else value
    if isinstance(value, (dict, tuple, list)):
        return repr(value)
    return str(value)


def option_help(f: dataclasses.Field, presets: Mapping[str, Mapping[str, Any]], default_preset: str) -> str:
    """The help text of field `f` with its value under `default_preset`, and under every preset where it differs:
    'Learning rate of the head. Default: 0.05; with --preset synthetic: 0.005, paper: 0.1, fgvc: 0.0001.'"""
    values = {name: show(v) for name, v in preset_values(f, presets).items()}
    default = values[default_preset]
    others = [f'{name}: {v}' for name, v in values.items() if name != default_preset and v != default]
    return f"{option_spec(f)['help']} Default: {default}" + (f"; with --preset {', '.join(others)}." if others
                                                              else '.')


def config_doc(cls: type, indent: str = '    ', width: int = 116) -> str:
    """The docstring sections of `cls`'s fields: one 'name: help' entry per field, grouped as `GROUPS`."""
    by_group: Dict[str, List[str]] = {group: [] for group in GROUPS}
    for f in dataclasses.fields(cls):
        by_group[option_spec(f)['group']].append(
            textwrap.fill(f"{f.name}: {option_spec(f)['help']}", width=width, initial_indent=indent * 2,
                          subsequent_indent=indent * 3, break_long_words=False, break_on_hyphens=False))
    return '\n\n'.join(f'{indent}{GROUPS[group]}:\n' + '\n'.join(entries) for group, entries in by_group.items()
                       if entries)


def _cell(text: str) -> str:
    return text.replace('|', '\\|')


def _code(text: str) -> str:
    return f'`{_cell(text)}`' if text else ''


def options_table(cls: type, presets: Mapping[str, Mapping[str, Any]], notes: Mapping[str, str],
                  default_preset: str, command: str) -> str:
    """The markdown of docs/options.md: the presets (`notes`), then a table per group of every field of `cls`.

    Args:
        cls: The config dataclass (`TrainConfig`).
        presets: `PRESETS`.
        notes: preset name -> the paragraph that explains it (`PRESET_NOTES`).
        default_preset: The preset `ggam-layers train` starts from without `--preset`.
        command: The command that regenerates the file, quoted at its top.
    """
    lines = [
        '# `ggam-layers train` options',
        '',
        f'Generated from the `TrainConfig` field declarations (`ggam_layers/train/config.py`): do not edit by hand, '
        f'regenerate with `{command}`.',
        '',
        'Each field of `TrainConfig` is declared once, with `option()` (`ggam_layers/train/options.py`): its help '
        'text, choices, range check, command-line option and the value each preset sets. The class docstring, '
        '`PRESETS`, `TrainConfig.validate`, `ggam-layers train --help` and this page are made from those declarations.',
        '',
        f'**Default** is the value of `ggam-layers train` without `--preset` (preset `{default_preset}`); **Other '
        'presets** lists the presets whose value differs from it; **Field default** is `TrainConfig()`\'s (a bare '
        'config, which is no preset: `TrainConfig.from_preset(name)` applies one). Only an option given explicitly '
        'overrides the preset. Options marked *(resume)* may differ when a run is resumed (`--resume`); every other '
        'one must match the run.',
        '',
        '## Presets',
        '',
        f'`--preset NAME` (default `{default_preset}`) picks the recipe; every option below overrides it. '
        '`--compare-plain`, `--compare A B` and `--seeds S [S ...]` (training two models, over seeds) are no '
        'fields: see `ggam-layers train --help` and [training.md](training.md).',
        '',
    ]
    for name in presets:
        lines.append(f'- **{name}**{" (the default)" if name == default_preset else ""}: {notes[name]}')
    for group, title in GROUPS.items():
        group_fields = [f for f in dataclasses.fields(cls) if option_spec(f)['group'] == group]
        if not group_fields:
            continue
        lines += ['', f'## {title}', '',
                  '| Option | Field | Type | Default | Other presets | Field default | Choices / range | Help |',
                  '|---|---|---|---|---|---|---|---|']
        for f in group_fields:
            spec = option_spec(f)
            values = {name: show(v) for name, v in preset_values(f, presets).items()}
            default = values[default_preset] if spec['cli'] else ''  # `preset` is the --preset given
            others = '<br>'.join(f'{name}: {_code(v)}' for name, v in values.items()
                                 if spec['cli'] and name != default_preset and v != default)
            flags = _flag_usage(f, spec) + (' *(resume)*' if spec['resume_mutable'] else '')
            allowed = ', '.join(_code(str(c)) for c in spec['choices']) if spec['choices'] else ''
            if spec['check']:
                allowed = describe_check(spec['check']) + (' (or None)' if is_optional(f.type) else '')
            lines.append(' | '.join(['', flags, _code(f.name), _cell(type_name(f.type)), _code(default), others,
                                     _code(show(field_default(f))), _cell(allowed), _cell(spec['help']), '']).strip())
    return '\n'.join(lines) + '\n'


def _flag_usage(f: dataclasses.Field, spec: Mapping[str, Any]) -> str:
    """The Option cell: `--lr`, `--aa POLICY`, `--amp`, `--no-amp`, `--resume [DIR]`, `--data-arg KEY=VALUE`."""
    flag = cli_flag(f)
    if flag is None:  # set by a hand-written option (`preset`: --preset), or by none
        return f"{_code(spec['flag'])} (above)" if spec['flag'] else '(none)'
    form, metavar = spec['cli'], spec['metavar']
    if form == 'bool':
        used = [flag, '--no-' + flag[2:]]
    elif form == 'optional':
        used = [f'{flag} [{metavar or "VALUE"}]']
    elif form in ('value', 'append_kv') and metavar:
        used = [f'{flag} {metavar}']
    else:
        used = [flag]
    return ', '.join([_code(u) for u in used] + [f'{_code(alias)} (= {_code(show(value))})'
                                                 for alias, (value, _) in spec['shortcuts'].items()])

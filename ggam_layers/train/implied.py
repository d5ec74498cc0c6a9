"""Flags that imply another setting, as timm's train.py takes them: `--aa` alone trains with timm's transform.

A flag that only makes sense beside a second setting selects that setting, with one log line, unless the second was
also given explicitly with another value: then the error names both flags. `TrainConfig.from_preset` applies this to
its explicit `overrides` (what `ggam-layers train` was typed with); a preset's values are not explicit.
"""
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Tuple

__all__ = ['IMPLICATIONS', 'Implication', 'apply_implications', 'flag']

_logger = logging.getLogger('ggam_layers.train')


@dataclass(frozen=True)
class Implication:
    """Explicit `trigger` values for which `when` holds select `target=value`; `why` says why, for the log line."""
    triggers: Tuple[str, ...]
    when: Callable[[Any], bool]
    target: str
    value: Any
    why: str


def _on(value: Any) -> bool:
    return bool(value)


def _off(value: Any) -> bool:
    return value is False


IMPLICATIONS: Tuple[Implication, ...] = (
    # timm's train.py applies --aa / --reprob / --color-jitter as given: its training transform is the only one
    Implication(('aa', 'reprob', 'color_jitter'), _on, 'train_aug', 'timm',
                "applied by timm's training transform only"),
    Implication(('channel_rescale',), _on, 'spatial_attn', False, 'defined without spatial attention'),
    Implication(('spatial_gate',), _on, 'spatial_attn', True, 'a gate on the spatial attention'),
    # --no-pretrained means random initialisation: no backbone weights at all, not only no download
    Implication(('pretrained',), _off, 'pretrained_file', None, 'random initialisation of the backbone'),
)


def flag(name: str, value: Any) -> str:
    """The `ggam-layers train` option that sets field `name` to `value`: '--no-spatial-attn', '--aa POLICY', or
    'no --pretrained-file' for None."""
    dashed = name.replace('_', '-')
    if value is None:
        return f'no --{dashed}'
    if value is True:
        return f'--{dashed}'
    if value is False:
        return f'--no-{dashed}'
    return f'--{dashed} {value}'


def apply_implications(base: Mapping[str, Any], explicit: Mapping[str, Any]) -> Dict[str, Any]:
    """`explicit` plus the settings its flags imply (`IMPLICATIONS`), each implied one logged in one line.

    Args:
        base: Every field's value before the explicit ones (the field defaults with the preset on top).
        explicit: The fields set explicitly (command-line flags, `from_preset` overrides).

    Raises:
        ValueError: naming both flags, where an explicit flag implies a value that another explicit flag contradicts.
    """
    implied: Dict[str, Tuple[str, Any, str]] = {}  # target -> (the flags that imply it, value, why)
    for rule in IMPLICATIONS:
        on = [t for t in rule.triggers if t in explicit and rule.when(explicit[t])]
        if not on:
            continue
        given = f"{' '.join(flag(t, explicit[t]) for t in on)} ({' / '.join(on)})"
        if rule.target in explicit and explicit[rule.target] != rule.value:
            raise ValueError(f'{given}: {rule.why}, and {flag(rule.target, explicit[rule.target])} ({rule.target}) '
                             'contradicts it: drop one of the two')
        if rule.target in implied and implied[rule.target][1] != rule.value:
            other, value, _ = implied[rule.target]
            raise ValueError(f'{given}: {rule.why}, and {other} needs the opposite ({flag(rule.target, value)}): '
                             'drop one of the two')
        if rule.target not in explicit:
            implied[rule.target] = (given, rule.value, rule.why)
    out = dict(explicit)
    for target, (given, value, why) in implied.items():
        if base.get(target) != value:
            out[target] = value
            _logger.info('%s: %s, so %s (%s=%r, not %r)', given, why, flag(target, value), target, value,
                         base.get(target))
    return out

"""Each `TrainConfig` field is declared once (`option()`), and the docstring, `PRESETS`, `validate`'s range checks, the
`ggam-layers train` options and docs/options.md are made from the declarations, not written again."""
import argparse
import dataclasses
import inspect
import os
from pathlib import Path

import pytest

from ggam_layers._files import PRETRAINED_DIR
from ggam_layers.attention import SPATIAL_NORMS
from ggam_layers.cli import build_parser
from ggam_layers.data.device import DATA_PATHS
from ggam_layers.data.loader import TRAIN_AUGS
from ggam_layers.head import CAM_LAYERS, POOL_TYPES
from ggam_layers.loss import CAM_TARGETS, KL_MODES, SQUASHES, TARGET_NORMS
from ggam_layers.model import ATTENTIONS
from ggam_layers.train.cli import DEFAULT_PRESET, add_train_args, config_from_args
from ggam_layers.train.config import (
    AMP_DTYPES,
    CAM_CLASSES,
    CROP_MODES,
    GUIDES,
    MIXUP_MODES,
    PRESET_NOTES,
    PRESETS,
    SCHEDULES,
    TrainConfig,
)
from ggam_layers.train.options import GROUPS, build_presets, cli_flags, option, option_spec, show
from ggam_layers.train.options_doc import options_markdown

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
NON_FIELD_OPTIONS = {'help', 'preset', 'compare_plain', 'compare', 'seeds'}  # hand-written in add_train_args

# PRESETS as it was written by hand before the declarations made it: a drift in any declared preset value fails here
PRESETS_LITERAL = {
    'synthetic': dict(model='test_resnet', model_kwargs={'output_stride': 16}, img_size=112,
                      dataset_kwargs={'difficulty': 1.0}, epochs=12, lr=5e-3, cam_target='paper'),
    'synthetic_finetune': dict(model='test_resnet', model_kwargs={'output_stride': 16}, img_size=112,
                               pretrained_file=os.path.join(PRETRAINED_DIR,
                                                            'test_resnet.synthetic_pretrain.safetensors'),
                               dataset_kwargs={'difficulty': 0.7, 'train_samples_per_class': 30}, epochs=12,
                               batch_size=32, lr=0.05, backbone_lr_scale=0.1, cam_target='paper'),
    'paper': dict(
        dataset='cub', model='resnet50.tv_in1k', pretrained=True, img_size=448, crop_pct=0.875, crop_mode='squash',
        train_aug='paper', opt='sgd', lr=0.1, backbone_lr_scale=0.1, momentum=0.9, weight_decay=5e-4,
        sched='cosine', warmup_epochs=0., epochs=100, batch_size=16, eval_batch_size=64, amp=True,
        channels_last=True, cam_target='paper'),
    'fgvc': dict(
        dataset='cub', model='convnext_small.fb_in22k_ft_in1k_384', pretrained=True, img_size=384, crop_pct=1.0,
        crop_mode='squash', train_aug='timm', aa='rand-m9-mstd0.5-inc1', reprob=0.25, label_smoothing=0.1,
        mixup=0.8, cutmix=1.0, mixup_prob=0.5, opt='adamw', lr=1e-4, backbone_lr_scale=1.0, layer_decay=0.8,
        weight_decay=0.05, sched='cosine', warmup_epochs=1., epochs=30, batch_size=32, eval_batch_size=64,
        model_ema=True, model_ema_decay=0.999, drop_path_rate=0.2, amp=True, channels_last=True,
        cam_target='standardized'),
}
# the choices of each field, the package's named constants (no other field has choices)
CHOICES = {'crop_mode': CROP_MODES, 'train_aug': TRAIN_AUGS, 'mixup_mode': MIXUP_MODES, 'attention': ATTENTIONS,
           'spatial_norm': SPATIAL_NORMS, 'pool_type': POOL_TYPES, 'cam_layer': CAM_LAYERS,
           'cam_target': tuple(CAM_TARGETS), 'squash': SQUASHES, 'kl': KL_MODES, 'target_norm': TARGET_NORMS,
           'cam_class': CAM_CLASSES, 'sched': SCHEDULES, 'amp_dtype': AMP_DTYPES, 'data_path': DATA_PATHS,
           'guide': GUIDES}
# the range checks `validate` made by hand before the declarations
CHECKS = {
    **dict.fromkeys(('epochs', 'batch_size', 'eval_batch_size', 'img_size', 'eval_every', 'keep_checkpoints',
                     'grad_accum_steps', 'max_nonfinite_steps'), 'int>=1'),
    'lr': '>0', 'cam_temperature': '>0', 'stop_after': '>=1', 'workers': '>=0',
    **dict.fromkeys(('lam', 'weight_decay', 'warmup_epochs', 'backbone_lr_scale', 'momentum', 'min_lr_ratio',
                     'drop_rate', 'label_smoothing', 'mixup', 'cutmix', 'decay_rate', 'decay_epochs'), '>=0'),
    **dict.fromkeys(('reprob', 'mixup_prob', 'mixup_switch_prob', 'hflip', 'max_bad_fraction'), '[0,1]'),
    'layer_decay': '(0,1]', 'crop_pct': '(0,1]', 'model_ema_decay': '(0,1)',
}
# a value outside each kind of check, and the words of the message
OUTSIDE = {'int>=1': (0, 'an int >= 1'), '>0': (0.0, '> 0'), '>=0': (-1, '>= 0'), '>=1': (0, '>= 1'),
           '[0,1]': (1.5, r'in \[0, 1\]'), '(0,1]': (0.0, r'in \(0, 1\]'), '(0,1)': (1.0, r'in \(0, 1\)')}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()  # no argument_default: add_train_args makes every field's default SUPPRESS
    add_train_args(parser)
    return parser


def _field_actions(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.dest not in NON_FIELD_OPTIONS]


def test_every_field_is_declared_once_with_a_help_text():
    for name, f in FIELDS.items():
        spec = option_spec(f)
        assert spec['help'].strip().endswith('.') and len(spec['help']) > 10, name
        assert spec['group'] in GROUPS, name
    groups = [option_spec(f)['group'] for f in FIELDS.values()]
    assert groups == sorted(groups, key=list(GROUPS).index)  # each group's fields together, in the order of GROUPS
    assert set(groups) == set(GROUPS)


def test_every_field_option_comes_from_its_declaration():
    parser = _parser()
    by_dest = {}
    for action in _field_actions(parser):
        by_dest.setdefault(action.dest, []).extend(action.option_strings)
    declared = {name for name, f in FIELDS.items() if option_spec(f)['cli'] is not None}
    assert set(by_dest) == declared
    assert {a.dest for a in parser._actions} - set(by_dest) == NON_FIELD_OPTIONS
    for name, flags in by_dest.items():
        assert sorted(flags) == sorted(cli_flags(FIELDS[name])), name  # no option sets a field twice
    assert cli_flags(FIELDS['lam']) == ['--lam', '--no-ggam-loss']
    assert cli_flags(FIELDS['channel_attn']) == ['--no-channel-attn']
    assert cli_flags(FIELDS['amp']) == ['--amp', '--no-amp']
    # and none of them is written by hand in add_train_args
    source = inspect.getsource(add_train_args)
    typed = sorted(flag for f in FIELDS.values() for flag in cli_flags(f) if f"'{flag}'" in source or f'"{flag}"'
                   in source)
    assert not typed, f'options written by hand in add_train_args instead of declared: {typed}'


def test_the_command_line_forms():
    actions = {a.option_strings[0]: a for a in _parser()._actions if a.option_strings}
    assert actions['--no-channel-attn'].dest == 'channel_attn' and actions['--no-channel-attn'].const is False
    assert actions['--no-progress'].dest == 'progress' and actions['--no-progress'].const is False
    assert actions['--no-ggam-loss'].dest == 'lam' and actions['--no-ggam-loss'].const == 0.0
    assert actions['--data-arg'].dest == 'dataset_kwargs' and actions['--data-arg'].metavar == 'KEY=VALUE'
    assert actions['--model-arg'].dest == 'model_kwargs'
    assert actions['--resume'].nargs == '?' and actions['--resume'].const is True
    assert isinstance(actions['--pretrained'], argparse.BooleanOptionalAction)
    assert actions['--epochs'].type is int and actions['--lr'].type is float and actions['--dataset'].type is None
    args = _parser().parse_args(['--mean', '0.1,0.2,0.3', '--data-arg', 'samples_per_class=4', '--data-arg', 'x=a',
                                 '--no-ggam-loss', '--resume', '--output', 'out', '--plain'])
    fields_given = {k: v for k, v in vars(args).items() if k not in NON_FIELD_OPTIONS}
    assert fields_given == {'mean': (0.1, 0.2, 0.3), 'lam': 0.0, 'resume': True, 'output': 'out', 'plain': True,
                            'dataset_kwargs': [('samples_per_class', 4), ('x', 'a')]}
    with pytest.raises(SystemExit):
        _parser().parse_args(['--std', '1,2'])


@pytest.mark.parametrize('preset', list(PRESETS))
def test_command_line_defaults_are_the_presets(preset):
    expected = TrainConfig.from_preset(preset)
    for parser in (_parser(), build_parser()):
        prefix = [] if parser.prog != 'ggam-layers' else ['train']
        argv = prefix + ([] if preset == DEFAULT_PRESET else ['--preset', preset])
        assert config_from_args(parser.parse_args(argv))[0] == expected


def test_each_help_shows_the_default_presets_value_and_where_presets_differ():
    configs = {name: TrainConfig.from_preset(name) for name in PRESETS}
    seen = 0
    for action in _field_actions(_parser()):
        if action.option_strings[0] in option_spec(FIELDS[action.dest])['shortcuts']:
            assert action.help.endswith('.')  # --no-ggam-loss: its own text
            continue
        values = {name: show(getattr(cfg, action.dest)) for name, cfg in configs.items()}
        default = values[DEFAULT_PRESET]
        others = [f'{name}: {v}' for name, v in values.items() if name != DEFAULT_PRESET and v != default]
        text = action.help.replace('%%', '%')
        assert text.endswith(f'Default: {default}' + (f"; with --preset {', '.join(others)}." if others else '.')), \
            (action.dest, text)
        assert text.startswith(option_spec(FIELDS[action.dest])['help'])
        seen += 1
    assert seen == len(FIELDS) - 1  # every field but `preset`
    lr = next(a for a in _parser()._actions if a.dest == 'lr').help
    assert lr.endswith('Default: 0.05; with --preset synthetic: 0.005, paper: 0.1, fgvc: 0.0001.')


def test_argparse_choices_are_the_declared_constants():
    declared = {name: option_spec(f)['choices'] for name, f in FIELDS.items() if option_spec(f)['choices']}
    assert declared == CHOICES
    for action in _field_actions(_parser()):
        assert (tuple(action.choices) if action.choices is not None else None) == CHOICES.get(action.dest), action.dest


def test_presets_are_made_from_the_declarations():
    assert PRESETS == PRESETS_LITERAL
    assert list(PRESETS) == list(PRESETS_LITERAL) == list(PRESET_NOTES)
    assert build_presets(TrainConfig, tuple(PRESET_NOTES)) == PRESETS
    a, b = build_presets(TrainConfig, tuple(PRESET_NOTES)), build_presets(TrainConfig, tuple(PRESET_NOTES))
    assert a['synthetic']['model_kwargs'] is not b['synthetic']['model_kwargs']
    assert a['synthetic']['model_kwargs'] is not a['synthetic_finetune']['model_kwargs']
    help_text = ' '.join(next(a for a in _parser()._actions if a.dest == 'preset').help.split())
    assert all(' '.join(note.split()).replace('%', '%%') in help_text for note in PRESET_NOTES.values())


def test_docs_options_md_is_current():
    path = Path(__file__).resolve().parents[1] / 'docs' / 'options.md'
    assert path.read_text(encoding='utf-8') == options_markdown(), \
        'docs/options.md is stale: python -m ggam_layers.train.options_doc > docs/options.md'
    text = options_markdown()
    assert all(f'| `{name}` |' in text for name in FIELDS)
    assert str(Path(PRETRAINED_DIR).parent.parent) not in text  # no path of this machine


def test_docstring_is_made_from_the_declarations():
    doc = inspect.cleandoc(TrainConfig.__doc__)
    flat = ' '.join(doc.split())
    for name, f in FIELDS.items():
        assert f"{name}: {' '.join(option_spec(f)['help'].split())}" in flat, name
    titles = [doc.index(f'\n{title}:\n') for title in GROUPS.values()]
    assert titles == sorted(titles)


def test_declared_range_checks_fire_naming_the_field():
    declared = {name: option_spec(f)['check'] for name, f in FIELDS.items() if option_spec(f)['check']}
    assert declared == CHECKS
    for name, check in CHECKS.items():
        value, words = OUTSIDE[check]
        with pytest.raises(ValueError, match=rf'^{name} must be {words}'):
            TrainConfig(**{name: value}).validate()
    with pytest.raises(ValueError, match='epochs must be an int >= 1'):
        TrainConfig(epochs=2.0).validate()
    with pytest.raises(ValueError, match='lr must be > 0'):
        TrainConfig(lr=float('nan')).validate()
    with pytest.raises(ValueError, match='crop_mode must be one of'):
        TrainConfig(crop_mode='diagonal').validate()
    with pytest.raises(ValueError, match='spatial_norm must be one of'):
        TrainConfig(spatial_norm='l2').validate()
    # None passes where the field is Optional
    TrainConfig(workers=None, stop_after=None, layer_decay=None, crop_pct=None, crop_mode=None, cam_temperature=None,
                squash=None, kl=None, target_norm=None).validate()
    TrainConfig(workers=0, stop_after=1, layer_decay=1.0, crop_pct=1.0, hflip=0.0, reprob=1.0,
                train_aug='timm').validate()  # the bounds themselves


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match='group'):
        option(1, 'A number.', group='misc')
    with pytest.raises(ValueError, match='check'):
        option(1, 'A number.', group='data', check='>= one')
    with pytest.raises(ValueError, match='full stop'):
        option(1, 'a number', group='data')
    with pytest.raises(ValueError, match='cli'):
        option(1, 'A number.', group='data', cli='positional')

    @dataclasses.dataclass
    class Config:
        x: int = option(1, 'A number.', group='data', presets={'papr': 2})

    with pytest.raises(ValueError, match="preset 'papr'"):
        build_presets(Config, ('paper',))


def test_resume_mutable_fields_are_declared():
    """The fields a resumed run may change come from their declarations, and are the ones they always were."""
    from ggam_layers.train.config import RESUME_MUTABLE_FIELDS

    assert RESUME_MUTABLE_FIELDS == frozenset({
        'output', 'overwrite', 'resume', 'stop_after', 'workers', 'threads', 'tensorboard', 'progress', 'data_root',
        'eval_batch_size', 'eval_every', 'keep_checkpoints', 'device', 'data_path', 'strict_data', 'max_bad_fraction',
        'max_nonfinite_steps', 'compile'})
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata['resume_mutable'] == (f.name in RESUME_MUTABLE_FIELDS), f.name

"""Flags typed as a timm user types them: a flag that only makes sense beside a second setting selects it (one log
line), an explicit contradiction is refused naming both flags; `--no-pretrained` means random initialisation."""
import json
import logging

import pytest
import torch

from ggam_layers.cli import build_parser, main
from ggam_layers.train import TrainConfig, build_model
from ggam_layers.train.cli import config_from_args

pytestmark = pytest.mark.timeout(300)

TINY = ['--model', 'test_resnet', '--img-size', '32', '--epochs', '1', '--data-arg', 'samples_per_class=4',
        '--data-arg', 'num_classes=4', '--batch-size', '8', '--threads', '1', '--no-progress']


def _cfg(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(['train', *argv]))[0]


def _implied_lines(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == 'ggam_layers.train' and ', so ' in r.getMessage()]


def test_timm_transform_flags_select_timm_transform_with_one_log_line(caplog):
    caplog.set_level(logging.INFO)
    cfg = _cfg('--aa', 'rand-m9-mstd0.5', '--reprob', '0.25').validate()
    assert (cfg.train_aug, cfg.aa, cfg.reprob) == ('timm', 'rand-m9-mstd0.5', 0.25)
    assert _implied_lines(caplog) == [
        "--aa rand-m9-mstd0.5 --reprob 0.25 (aa / reprob): applied by timm's training transform only, so --train-aug "
        "timm (train_aug='timm', not 'flip')"]
    for argv in (['--reprob', '0.25'], ['--color-jitter', '0.3'], ['--preset', 'paper', '--aa', 'original']):
        assert _cfg(*argv).train_aug == 'timm', argv
    caplog.clear()
    assert _cfg('--preset', 'fgvc', '--aa', 'original').train_aug == 'timm' and not _implied_lines(caplog)
    # the Python API: explicit from_preset overrides are flags too
    assert TrainConfig.from_preset('synthetic', reprob=0.25).train_aug == 'timm'


def test_an_explicit_contradiction_names_both_flags():
    with pytest.raises(ValueError, match=r'--aa rand-m9-mstd0.5 \(aa\).* and --train-aug flip \(train_aug\) '
                                         'contradicts it'):
        _cfg('--aa', 'rand-m9-mstd0.5', '--train-aug', 'flip')
    with pytest.raises(ValueError, match=r'--reprob 0.25 \(reprob\).* and --train-aug paper'):
        _cfg('--preset', 'paper', '--reprob', '0.25', '--train-aug', 'paper')
    with pytest.raises(ValueError, match=r'--spatial-gate \(spatial_gate\).* and --no-spatial-attn \(spatial_attn\)'):
        _cfg('--spatial-gate', '--no-spatial-attn')
    with pytest.raises(ValueError, match=r'--spatial-gate \(spatial_gate\).* and --channel-rescale \(channel_rescale\) '
                                         r'needs the opposite \(--no-spatial-attn\)'):
        _cfg('--channel-rescale', '--spatial-gate')
    with pytest.raises(ValueError, match=r'--mixup 0.8 \(mixup\) pair each image with another and need an even '
                                         r'--batch-size \(batch_size\), got --batch-size 7'):
        _cfg('--mixup', '0.8', '--mixup-mode', 'pair', '--batch-size', '7').validate()  # timm's Mixup: every mode
    with pytest.raises(ValueError, match=r'--data-path device .* and --dataset cub \(dataset\) is not one'):
        _cfg('--data-path', 'device', '--dataset', 'cub').validate()


def test_channel_rescale_selects_no_spatial_attention(caplog):
    caplog.set_level(logging.INFO)
    cfg = _cfg('--channel-rescale').validate()
    assert cfg.channel_rescale and not cfg.spatial_attn
    assert _implied_lines(caplog) == ['--channel-rescale (channel_rescale): defined without spatial attention, so '
                                      '--no-spatial-attn (spatial_attn=False, not True)']


def test_timm_flags_train_through_the_cli(tmp_path):
    out = tmp_path / 'run'
    assert main(['train', '--aa', 'rand-m9-mstd0.5', '--reprob', '0.25', *TINY, '--output', str(out)]) == 0
    recorded = json.loads((out / 'config.json').read_text())['ggam_layers']['train_config']
    assert (recorded['train_aug'], recorded['aa'], recorded['reprob']) == ('timm', 'rand-m9-mstd0.5', 0.25)


def test_no_pretrained_means_random_initialisation(caplog):
    caplog.set_level(logging.INFO)
    cfg = _cfg('--no-pretrained', '--model', 'test_resnet')  # the default preset ships a pretrained file
    assert not cfg.pretrained and cfg.pretrained_file is None
    assert _implied_lines(caplog)[0].startswith('--no-pretrained (pretrained): random initialisation of the backbone, '
                                                'so no --pretrained-file (pretrained_file=None, not ')
    caplog.clear()
    torch.manual_seed(0)
    model = build_model(cfg, 4)
    torch.manual_seed(0)
    random = build_model(TrainConfig(model='test_resnet', model_kwargs=cfg.model_kwargs), 4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), random.state_dict().values()))
    assert 'backbone test_resnet starts from random initialisation (seed 0' in caplog.text
    assert 'Loading pretrained weights' not in caplog.text
    with pytest.raises(ValueError, match=r'--no-pretrained \(pretrained\).* and --pretrained-file \S+ '
                                         r'\(pretrained_file\) contradicts it'):
        _cfg('--no-pretrained', '--pretrained-file', __file__)


def test_the_backbone_weights_are_logged_in_one_line(caplog):
    caplog.set_level(logging.INFO)
    cfg = _cfg()  # the default preset: the shipped pretrained backbone
    build_model(cfg, 4)
    lines = [r.getMessage() for r in caplog.records if 'starts from' in r.getMessage()]
    assert lines == [f'backbone test_resnet starts from the weights file {cfg.pretrained_file} (pretrained_file)']

"""The paper's Table 2 comparators: SE and CBAM from timm.layers where GGAM sits (`attention='se'` / `'cbam'`).

timm's model contract on them is in test_timm_contract.py; the trainer's `--attention` in test_train.py.
"""
import pytest
import timm
import torch
from timm.layers import SEModule
from timm.layers.cbam import CbamModule

import ggam_layers  # noqa: F401  (registers the entrypoints)
from ggam_layers import GGAMModel, grad_cam_weights, wrap_timm_model
from ggam_layers.attn_head import AttnPoolHead
from ggam_layers.hub import load_model, save_pretrained
from ggam_layers.viz import cam_maps


@pytest.mark.parametrize('attention,module', [('se', SEModule), ('cbam', CbamModule)])
def test_head_is_timm_attention_then_global_average_and_linear(attention, module):
    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=5, attention=attention).eval()
    head = model.head
    assert isinstance(head, AttnPoolHead) and type(head.attn) is module and head.pool_type == 'avg'
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = head.fc(head.attn(feats).mean((2, 3)))
        torch.testing.assert_close(model(x), expected)
        assert not torch.allclose(head.attn(feats), feats)  # the attention acts: D is not A


def test_se_reduction_follows_rd_ratio():
    model = wrap_timm_model('test_resnet', num_classes=5, attention='se', rd_ratio=1 / 4)
    c = model.num_features
    assert model.head.attn.fc1.out_channels == timm.layers.make_divisible(c / 4, 8, round_limit=0.)


@pytest.mark.parametrize('attention', ['se', 'cbam'])
def test_baseline_trains_with_cross_entropy_only(attention):
    model = wrap_timm_model('test_resnet', num_classes=5, attention=attention)
    with pytest.raises(RuntimeError, match=f"attention='{attention}'"):
        model.forward_ggam(torch.randn(2, 3, 64, 64))
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_bad_attention_and_pooling_are_refused():
    with pytest.raises(ValueError, match="attention must be one of \\('ggam', 'se', 'cbam'\\)"):
        wrap_timm_model('test_resnet', num_classes=5, attention='eca')
    with pytest.raises(ValueError, match="pool_type must be 'auto' or 'avg'"):
        wrap_timm_model('test_resnet', num_classes=5, attention='se', pool_type='sum')


@pytest.mark.parametrize('attention', ['se', 'cbam'])
def test_save_pretrained_and_load_model_round_trip(attention, tmp_path):
    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=4, attention=attention).eval()
    for p in model.head.parameters():  # not the initialisation: the reload must read them
        p.data.normal_()
    save_pretrained(model, tmp_path / 'm', label_names=['a', 'b', 'c', 'd'])
    reloaded = load_model(str(tmp_path / 'm')).eval()
    assert isinstance(reloaded, GGAMModel) and reloaded.attention == attention
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_cam_maps_of_a_baseline_are_grad_cam_by_autograd():
    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=5, attention='cbam').eval()
    x = torch.randn(2, 3, 96, 96)
    maps = cam_maps(model, x, classes=[1, 4])
    feats = model.forward_features(x)
    ref = grad_cam_weights(feats, model.head, torch.tensor([1, 4]))
    torch.testing.assert_close(maps.cam_weights, ref.weights)
    assert maps.attention is None and maps.classes.tolist() == [1, 4]


TINY = ['--preset', 'synthetic', '--model', 'test_resnet', '--data-arg', 'num_classes=3', '--data-arg',
        'samples_per_class=4', '--img-size', '32', '--epochs', '1', '--batch-size', '6', '--eval-batch-size', '12',
        '--threads', '1', '--no-progress']


def test_cli_trains_an_se_head_with_cross_entropy(tmp_path, capsys):
    import json

    from ggam_layers.cli import main

    assert main(['train', '--attention', 'se', *TINY, '--output', str(tmp_path / 'se')]) == 0
    assert 'SE test_resnet: test top-1' in capsys.readouterr().out
    config = json.loads((tmp_path / 'se' / 'config.json').read_text())
    assert config['model_args']['attention'] == 'se' and config['ggam_layers']['kind'] == 'se'
    assert 'spatial_norm' not in config['model_args']  # the GGAM options do not apply to an SE head
    rows = [json.loads(line) for line in (tmp_path / 'se' / 'metrics.jsonl').read_text().splitlines()]
    assert rows[0]['train_ggam'] is None  # cross-entropy only
    model = load_model(str(tmp_path / 'se'))
    assert isinstance(model.head, AttnPoolHead) and model.attention == 'se'


def test_cli_compares_any_two_heads_over_seeds(tmp_path, capsys):
    import json

    from ggam_layers.cli import main

    assert main(['train', '--compare', 'se', 'cbam', '--seeds', '0', *TINY, '--output', str(tmp_path / 'c')]) == 0
    out = capsys.readouterr().out
    assert 'SE + test_resnet' in out and 'CBAM + test_resnet' in out and 'SE ahead on' in out
    stored = json.loads((tmp_path / 'c' / 'seeds.json').read_text())
    assert stored['summaries']['test_top1']['arms'] == ['se', 'cbam']
    for arm in ('se', 'cbam'):
        config = json.loads((tmp_path / 'c' / 'seed0' / arm / 'config.json').read_text())
        assert config['model_args']['attention'] == arm
    assert not (tmp_path / 'c' / 'seed0' / 'ggam').exists()


@pytest.mark.parametrize('argv,message', [
    (['--compare', 'se', 'se'], 'two different names'),
    (['--compare', 'se', 'cbam', '--attention', 'ggam', '--plain'], '--plain'),
    (['--compare', 'se', 'cbam', '--attention', 'cbam'], '--attention cbam contradicts'),
    (['--compare', 'se', 'plain', '--compare-plain'], '--compare-plain contradicts'),
    (['--attention', 'se', '--plain'], '--plain (plain) trains the timm model'),
])
def test_cli_refuses_contradicting_model_choices(argv, message, tmp_path, capsys):
    from ggam_layers.cli import main

    with pytest.raises(SystemExit) as exc:
        main(['train', *argv, *TINY, '--output', str(tmp_path / 'x')])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()

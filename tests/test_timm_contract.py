"""timm's model contract on GGAM models, one backbone per layout (NCHW test_resnet, NHWC test_mambaout, tokens
test_vit): the unpooled map with global_pool='', features_only / forward_intermediates, FX feature extraction,
TorchScript, timm's own Hub export (save_for_hf, local-dir: reload) for the three ways to build a model, and the
autocast dtype aliases of the training command. The SE and CBAM heads (`attention='se'` / `'cbam'`, the paper's
Table 2 comparators) keep the same contract, each on a backbone of another layout.
"""
import argparse
import json

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim

import ggam_layers  # noqa: F401  (registers the entrypoints)
from ggam_layers import GGAMModel, wrap_timm_model
from ggam_layers.train.loop import amp_dtype_for, normalize_amp_dtype

# backbone -> (timm kwargs, input size, layout); test_vit is built without dynamic_img_size for FX (see README)
LAYOUTS = {
    'test_resnet': ({}, 96, 'NCHW'),
    'test_mambaout': ({}, 96, 'NHWC'),
    'test_vit': ({'backbone_args': {'dynamic_img_size': False}}, 160, 'NLC'),
}


# (backbone, attention): GGAM on every layout, SE and CBAM on one layout each
CASES = [(name, 'ggam') for name in LAYOUTS] + [('test_resnet', 'se'), ('test_mambaout', 'cbam'), ('test_vit', 'se')]
CASE_IDS = [f'{n}-{a}' for n, a in CASES]


def _create(name, attention='ggam', **kwargs):
    timm_kwargs, size, _ = LAYOUTS[name]
    torch.manual_seed(0)
    model = timm.create_model('ggam', backbone=name, attention=attention, **timm_kwargs, **kwargs).eval()
    return model, torch.randn(2, 3, size, size)


def _attended(model, feats, x):
    """D = A * T from the attention alone, in NCHW."""
    return model.head.attn(model.features_to_nchw(feats, model.grid_size(x.shape[-2:])))


@pytest.mark.parametrize('name,attention', CASES, ids=CASE_IDS)
def test_unpooled_output_is_the_attended_map_in_backbone_layout(name, attention):
    model, x = _create(name, attention, num_classes=0, global_pool='')
    with torch.no_grad():
        out, feats = model(x), model.forward_features(x)
        d = _attended(model, feats, x)
    assert out.shape == feats.shape
    assert model.global_pool == '' and model.num_classes == 0
    torch.testing.assert_close(model.features_to_nchw(out, model.grid_size(x.shape[-2:])), d)
    assert not torch.allclose(out, feats)  # D, not A
    if name == 'test_vit':  # prefix tokens pass through unchanged
        p = model.layout.num_prefix_tokens
        assert p == 1 and torch.equal(out[:, :p], feats[:, :p])
    if name == 'test_mambaout':
        assert model.output_fmt == 'NHWC'
    # pooling the unpooled map gives what the pooled model's pre_logits give ('sum' pooling for GGAM's softmax norm,
    # the global average for SE and CBAM)
    pooled = timm.create_model('ggam', backbone=name, num_classes=0, attention=attention, **LAYOUTS[name][0]).eval()
    pooled.load_state_dict(model.state_dict())
    ref = d.sum((2, 3)) if attention == 'ggam' else d.mean((2, 3))
    with torch.no_grad():
        torch.testing.assert_close(pooled(x), ref)
        torch.testing.assert_close(pooled.forward_head(feats, pre_logits=True), ref)


@pytest.mark.parametrize('name,attention', CASES, ids=CASE_IDS)
def test_reset_classifier_takes_global_pool(name, attention):
    model, x = _create(name, attention, num_classes=5)
    feats = model.forward_features(x)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size) == model.forward_head(feats, pre_logits=True).shape
    model.reset_classifier(0, '')
    assert model(x).shape == feats.shape
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(5)
    model.reset_classifier(5, 'avg')
    assert model.head.pool_type == 'avg' and model(x).shape == (2, 5)
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(0, 'token')
    with pytest.raises(ValueError, match="global_pool='' .* num_classes=0"):
        timm.create_model('ggam', backbone=name, num_classes=5, global_pool='', **LAYOUTS[name][0])
    if attention != 'ggam':
        with pytest.raises(ValueError, match='global average'):
            model.reset_classifier(5, 'sum')


def test_pool_size_matches_forward_features():
    """timm's test_model_default_cfgs: the unpooled map is shaped as the config's pool_size."""
    model = timm.create_model('ggam', backbone='test_mambaout').eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg['input_size'])
    feats = model.forward_features(x)
    spatial = get_spatial_dim(model.output_fmt)
    assert tuple(feats.shape[i] for i in spatial) == tuple(cfg['pool_size'])
    assert feats.shape[get_channel_dim(model.output_fmt)] == model.num_features
    model.reset_classifier(0, '')
    assert tuple(model(x).shape[i] for i in spatial) == tuple(cfg['pool_size'])


@pytest.mark.parametrize('name,attention', CASES, ids=CASE_IDS)
def test_forward_intermediates_and_features_only_delegate_to_the_backbone(name, attention):
    model, x = _create(name, attention, num_classes=5)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        _, ref = model.backbone.forward_intermediates(x)
    assert len(inter) == len(model.feature_info) == len(ref)
    for a, b in zip(inter, ref):
        torch.testing.assert_close(a, b)
    assert all(info['module'].startswith('backbone.') for info in model.feature_info)

    feat_model = timm.create_model('ggam', backbone=name, features_only=True, **LAYOUTS[name][0]).eval()
    own = feat_model.state_dict()  # the pruned backbone (features_only drops what comes after the last level)
    feat_model.load_state_dict({f'model.{k}': v for k, v in model.state_dict().items() if f'model.{k}' in own})
    with torch.no_grad():
        outs = feat_model(x)
    assert [o.shape[1] for o in outs] == feat_model.feature_info.channels()
    assert all(m.startswith('backbone.') for m in feat_model.feature_info.module_name())
    for o, i in zip(outs, feat_model.out_indices):
        torch.testing.assert_close(o, inter[i])


def test_features_only_errors_name_the_argument(monkeypatch):
    with pytest.raises(ValueError, match='feature_cls'):
        timm.create_model('ggam_test_resnet', features_only=True, feature_cls='list')
    model = wrap_timm_model('test_resnet', num_classes=5)
    monkeypatch.setattr(type(model.backbone), 'forward_intermediates', None)
    with pytest.raises(NotImplementedError, match='test_resnet.*forward_intermediates'):
        model.forward_intermediates(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize('name,attention', CASES, ids=CASE_IDS)
def test_fx_feature_extraction_on_a_wrapped_model(name, attention):
    timm_kwargs, size, _ = LAYOUTS[name]
    model = wrap_timm_model(name, num_classes=5, attention=attention, **timm_kwargs.get('backbone_args', {})).eval()
    x = torch.randn(2, 3, size, size)
    last = model.feature_info[-1]['module']
    fx = timm.models.create_feature_extractor(model, return_nodes={last: 'features', 'head.fc': 'logits'})
    with torch.no_grad():
        out = fx(x)
        torch.testing.assert_close(out['logits'], model(x), rtol=0, atol=0)
        if name != 'test_vit':  # the ViT's last block is before its final norm
            torch.testing.assert_close(out['features'], model.forward_features(x), rtol=0, atol=0)


def test_plain_torchvision_fx_and_checks_still_clear_in_eager():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = wrap_timm_model('test_resnet', num_classes=5).eval()
    x = torch.randn(2, 3, 96, 96)
    fx = create_feature_extractor(model, return_nodes=['head.fc'])  # plain torch.fx, no timm autowrap
    torch.testing.assert_close(fx(x)['head.fc'], model(x))
    with pytest.raises(ValueError, match='in_chans=3'):
        model(torch.randn(2, 1, 96, 96))


@pytest.mark.parametrize('name,attention', CASES, ids=CASE_IDS)
@pytest.mark.parametrize('global_pool', [None, ''])
def test_torchscript(name, attention, global_pool):
    num_classes = 0 if global_pool == '' else 5
    model, x = _create(name, attention, num_classes=num_classes, global_pool=global_pool)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize('name,attention', CASES, ids=CASE_IDS)
def test_torch_export(name, attention):
    model, x = _create(name, attention, num_classes=5)
    exported = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))


@pytest.mark.parametrize('name,attention', CASES, ids=CASE_IDS)
def test_torch_compile_fullgraph(name, attention):
    """The input checks and the grid logic compile without a graph break (aot_eager: no C++ toolchain needed)."""
    model, x = _create(name, attention, num_classes=5)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


ROUTES = {
    'wrap_timm_model resnet': lambda: wrap_timm_model('test_resnet', num_classes=5, spatial_norm='sigmoid'),
    'wrap_timm_model vit': lambda: wrap_timm_model('test_vit', num_classes=5),
    'create_model ggam': lambda: timm.create_model('ggam', backbone='test_mambaout', num_classes=5, rd_channels=8),
    'registered name': lambda: timm.create_model('ggam_test_resnet', num_classes=5),
    # a tag with its own architecture arguments (output stride 16): the export must record them
    'embedded tag': lambda: timm.create_model('ggam_test_resnet.synthetic', pretrained=True),
    'unpooled': lambda: timm.create_model('ggam', backbone='test_resnet', num_classes=0, global_pool=''),
    'se head': lambda: wrap_timm_model('test_resnet', num_classes=5, attention='se'),
    'cbam head vit': lambda: timm.create_model('ggam', backbone='test_vit', num_classes=5, attention='cbam'),
}


@pytest.mark.parametrize('route', list(ROUTES))
def test_timm_save_for_hf_round_trip(route, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    torch.manual_seed(0)
    model = ROUTES[route]().eval()
    for p in model.head.parameters():  # not the initialisation: the reload must read these from the file
        p.data.normal_()
    timm.models.save_for_hf(model, tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['model_args']['backbone'] == model.backbone_name
    reloaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert isinstance(reloaded, GGAMModel) and reloaded.backbone_name == model.backbone_name
    assert type(reloaded.backbone) is type(model.backbone)
    assert reloaded.attention == model.attention and type(reloaded.head.attn) is type(model.head.attn)
    if model.attention == 'ggam':
        assert reloaded.head.attn.spatial_norm == model.head.attn.spatial_norm
        assert reloaded.head.attn.rd_channels == model.head.attn.rd_channels
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_wrapped_vit_reloads_through_hf_hub_offline(tmp_path, monkeypatch):
    """The issue's case: a wrapped test_vit exported by timm reloaded as a ResNet; through `hf-hub:` it is the ViT."""
    import shutil

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    torch.manual_seed(0)
    model = wrap_timm_model('test_vit', num_classes=3).eval()
    timm.models.save_for_hf(model, tmp_path / 'export', safe_serialization=True)
    revision = 'a' * 40
    repo = tmp_path / 'cache' / 'models--org--ggam_vit'
    (repo / 'snapshots').mkdir(parents=True)
    shutil.copytree(tmp_path / 'export', repo / 'snapshots' / revision)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)  # no trailing newline, as huggingface_hub writes it
    reloaded = timm.create_model('hf-hub:org/ggam_vit', pretrained=True, cache_dir=tmp_path / 'cache').eval()
    assert reloaded.backbone_name == 'test_vit' and reloaded.layout == model.layout
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_ggam_save_pretrained_and_timm_export_agree(tmp_path):
    from ggam_layers.hub import save_pretrained

    model = wrap_timm_model('test_resnet', num_classes=5, spatial_norm='sum', rd_channels=4)
    timm.models.save_for_hf(model, tmp_path / 'timm', safe_serialization=True)
    save_pretrained(model, tmp_path / 'ggam')
    ours = json.loads((tmp_path / 'ggam' / 'config.json').read_text())['model_args']
    theirs = json.loads((tmp_path / 'timm' / 'config.json').read_text())['model_args']
    shared = set(ours) & set(theirs)
    assert {'backbone', 'spatial_norm', 'rd_channels', 'pool_type', 'num_classes'} <= shared
    assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}


@pytest.mark.parametrize('alias', ['bf16', 'bfloat16', 'BF16'])
def test_amp_dtype_aliases_bf16(alias):
    assert normalize_amp_dtype(alias) == 'bfloat16'
    assert amp_dtype_for(True, alias, torch.device('cpu')) is torch.bfloat16


@pytest.mark.parametrize('alias', ['fp16', 'float16', 'half'])
def test_amp_dtype_aliases_fp16(alias):
    assert normalize_amp_dtype(alias) == 'float16'
    with pytest.raises(ValueError, match='CUDA'):
        amp_dtype_for(True, alias, torch.device('cpu'))


def test_amp_dtype_cli_and_config():
    from ggam_layers.train.cli import add_train_args
    from ggam_layers.train.config import TrainConfig

    parser = argparse.ArgumentParser()
    add_train_args(parser)
    for alias in ('bf16', 'bfloat16', 'fp16', 'float16', 'half'):
        assert parser.parse_args(['--amp-dtype', alias]).amp_dtype == alias
        TrainConfig(amp_dtype=alias).validate()
    with pytest.raises(ValueError, match='amp_dtype'):
        normalize_amp_dtype('fp8')
    with pytest.raises(ValueError, match='amp_dtype'):
        TrainConfig(amp_dtype='fp8').validate()

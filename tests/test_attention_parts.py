"""The head's attention parts as one argument, `parts`: each name, the deprecated switches it replaced, saved files."""
import json
import warnings

import pytest
import timm
import torch

import ggam_layers
from ggam_layers import ChannelSpatialAttention, GGAMHead, GGAMModel, wrap_timm_model
from ggam_layers.attention import ATTENTION_PARTS, parts_name, resolve_parts
from ggam_layers.hub import ggam_model_args, save_pretrained

# every name, spelt with the switches of earlier releases
LEGACY = {
    'channel-spatial': {},
    'channel': dict(spatial_attn=False),
    'spatial': dict(channel_attn=False),
    'none': dict(channel_attn=False, spatial_attn=False),
    'channel-rescaled': dict(spatial_attn=False, channel_rescale=True),
    'channel-spatial-gated': dict(spatial_gate=True),
    'spatial-gated': dict(channel_attn=False, spatial_gate=True),
}


def test_every_name_has_a_legacy_spelling_and_back():
    assert set(LEGACY) == set(ATTENTION_PARTS)
    for name, switches in LEGACY.items():
        parts = ATTENTION_PARTS[name]
        assert parts_name(parts.channel, parts.spatial, parts.rescale, parts.gate) == name
        if switches:
            with pytest.warns(DeprecationWarning, match='pass parts='):
                assert resolve_parts(**switches) == name


@pytest.mark.parametrize('name', sorted(ATTENTION_PARTS))
def test_legacy_switches_build_the_same_head(name):
    """The old spelling builds the same parameters (same seed) and the same outputs, with a DeprecationWarning."""
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    heads = []
    for kwargs in (dict(parts=name), LEGACY[name]):
        torch.manual_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            head = GGAMHead(16, 4, rd_channels=4, **kwargs).double()
        deprecated = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        assert len(deprecated) == (1 if 'parts' not in kwargs and kwargs else 0)
        if deprecated:  # the warning points at the caller, not at the library
            assert deprecated[0].filename == __file__
        heads.append(head)
    new, old = heads
    assert new.attn.parts == old.attn.parts == name
    assert new.state_dict().keys() == old.state_dict().keys()
    for k, v in new.state_dict().items():
        torch.testing.assert_close(v, old.state_dict()[k], rtol=0, atol=0)
    out_new, out_old = new.forward_ggam(x), old.forward_ggam(x)
    for a, b in zip(out_new, out_old):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    parts = ATTENTION_PARTS[name]
    assert (new.attn.channel_attn, new.attn.spatial_attn, new.attn.channel_rescale, new.attn.spatial_gate) == \
        (parts.channel, parts.spatial, parts.rescale, parts.gate)
    assert (new.attn.gate is not None) == parts.gate and (new.attn.fc1 is not None) == parts.channel


def test_parts_errors_name_the_argument():
    with pytest.raises(ValueError, match="parts must be one of .*'channel-spatial'.*got 'spatial-channel'"):
        ChannelSpatialAttention(8, parts='spatial-channel')
    with pytest.raises(ValueError, match="parts='channel' names the attention parts, and spatial_attn set them too"):
        GGAMHead(8, 3, parts='channel', spatial_attn=False)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="channel_rescale=True .* needs"):
        ChannelSpatialAttention(8, channel_rescale=True)


def test_model_records_parts_once_for_timm_and_the_hub(tmp_path):
    """`_model_args` (what timm records) and `ggam_model_args` (config.json) take the head's arguments from one
    method, `GGAMModel.head_args`; a model built with the deprecated switches saves `parts`."""
    with pytest.warns(DeprecationWarning):
        model = wrap_timm_model('test_resnet', num_classes=3, spatial_attn=False, channel_rescale=True)
    head_args = model.head_args()
    assert head_args['parts'] == 'channel-rescaled' and 'channel_attn' not in head_args
    assert {k: model._model_args[k] for k in head_args} == head_args
    saved = ggam_model_args(model)
    assert {k: saved[k] for k in head_args} == head_args
    assert not {'channel_attn', 'spatial_attn', 'channel_rescale', 'spatial_gate'} & set(saved)
    se = wrap_timm_model('test_resnet', num_classes=3, attention='se')
    assert se.head_args() == dict(attention='se', rd_ratio=se.head.rd_ratio, pool_type='avg')


def test_a_config_saved_with_the_old_switches_still_loads(tmp_path):
    """A config.json written by an earlier release (channel_attn / spatial_gate keys) loads through timm into the
    same model, and saving it again writes `parts`."""
    model = wrap_timm_model('test_resnet', num_classes=3, parts='spatial-gated').eval()
    with torch.no_grad():
        model.head.attn.gate.fill_(0.3)
    save_pretrained(model, tmp_path / 'run')
    cfg_path = tmp_path / 'run' / 'config.json'
    cfg = json.loads(cfg_path.read_text())
    args = cfg['model_args']
    assert args.pop('parts') == 'spatial-gated'
    args.update(channel_attn=False, spatial_attn=True, spatial_gate=True)
    cfg_path.write_text(json.dumps(cfg))
    assert ggam_layers.__name__  # registers the ggam_* entrypoints with timm
    with pytest.warns(DeprecationWarning):
        loaded = timm.create_model(f'local-dir:{tmp_path / "run"}', pretrained=True).eval()
    assert isinstance(loaded, GGAMModel) and loaded.head.attn.parts == 'spatial-gated'
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    save_pretrained(loaded, tmp_path / 'again')
    again = json.loads((tmp_path / 'again' / 'config.json').read_text())['model_args']
    assert again['parts'] == 'spatial-gated' and 'spatial_gate' not in again

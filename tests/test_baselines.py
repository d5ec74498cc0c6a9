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

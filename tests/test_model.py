"""wrap_timm_model over timm's tiny test models and small NHWC / register-token backbones: timm's model contract."""
import pytest
import timm
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

import ggam_layers  # noqa: F401  (registers the entrypoints)
from ggam_layers import GGAMLoss, GGAMModel, UnsupportedBackboneError, grad_cam_weights, wrap_timm_model
from ggam_layers.model import head_param_groups

# name, timm kwargs, input size, expected layout
BACKBONES = {
    'test_resnet': ({}, (96, 96), 'NCHW'),
    'test_efficientnet': ({}, (96, 96), 'NCHW'),
    'test_convnext': ({}, (96, 96), 'NCHW'),
    'test_vit': ({}, (160, 160), 'NLC'),
    'test_mambaout': ({}, (96, 96), 'NHWC'),
    'swin_tiny_patch4_window7_224': (
        dict(img_size=64, window_size=2, embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2)), (64, 64), 'NHWC'),
    'vit_small_patch14_reg4_dinov2': (dict(img_size=56, depth=2, embed_dim=64, num_heads=2), (56, 56), 'NLC'),
}


def _build(name, num_classes=5, **kwargs):
    timm_kwargs, size, layout = BACKBONES[name]
    torch.manual_seed(0)
    model = wrap_timm_model(name, num_classes=num_classes, **timm_kwargs, **kwargs)
    return model, torch.randn(2, 3, *size), layout


@pytest.fixture(params=list(BACKBONES))
def built(request):
    return (request.param,) + _build(request.param)


def test_layout_shapes_and_contract(built):
    name, model, x, layout = built
    assert model.layout.fmt == layout
    if name == 'vit_small_patch14_reg4_dinov2':
        assert model.layout.num_prefix_tokens == 5  # class token + 4 registers
    assert model(x).shape == (2, 5)
    out = model.forward_ggam(x)
    c = model.num_features
    assert out.logits.shape == (2, 5) and out.channel_weights.shape == (2, c) and out.cam_weights.shape == (2, c)
    torch.testing.assert_close(out.channel_weights.sum(1), torch.ones(2))
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, c)
    assert model.get_classifier() is model.head.fc and model.get_classifier(name_only=True) == 'head.fc'
    assert model.num_classes == 5 and model.pretrained_cfg['num_classes'] == 5
    names = {n for n, _ in model.named_modules()}
    for info in model.feature_info:
        assert info['module'] in names, info


def test_beta_equals_autograd_and_leaves_grads_untouched(built):
    _, model, x, _ = built
    model.eval()
    before = {n: p.grad for n, p in model.named_parameters()}
    out = model.forward_ggam(x)
    assert all(p.grad is before[n] for n, p in model.named_parameters())
    feats = model.features_to_nchw(model.forward_features(x), model._grid(x))
    ref = grad_cam_weights(feats, model.head, out.classes)
    scale = ref.weights.abs().max()
    torch.testing.assert_close(out.cam_weights / scale, ref.weights / scale, rtol=0, atol=2e-6)


def test_loss_backward_reaches_every_trainable_parameter(built):
    _, model, x, _ = built
    model.train()
    out = model.forward_ggam(x)
    GGAMLoss(lam=1.0)(out, torch.tensor([0, 1])).backward()
    # zero-initialised last norms of residual blocks (timm's zero_init_last) give exact zero grads there, so check
    # that autograd reached every parameter, and that the attention and classifier got a non-zero gradient
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for p in model.head.parameters())
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    # unused parameters in a module of their own are dropped with it (a ConvNeXt head norm), the rest are frozen
    kept = {n for n, _ in model.backbone.named_parameters()}
    assert sorted(f'backbone.{n}' for n in model.unused_backbone_params if n in kept) == sorted(frozen)
    assert all(not any(n.startswith(m + '.') for n in kept) for m in model.dropped_backbone_modules)


def test_state_dict_round_trip_and_reset_classifier(built):
    name, model, x, _ = built
    model.eval()
    clone, _, _ = _build(name)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    model.reset_classifier(11)
    assert model(x).shape == (2, 11) and model.num_classes == 11
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_timm_optimizer_layer_decay_and_ema(built):
    _, model, x, _ = built
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g['params'])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_params = {id(p) for p in model.head.parameters()}
    scales = {g['lr_scale'] for g in opt.param_groups if any(id(p) in head_params for p in g['params'])}
    assert scales == {1.0}  # the GGAM head is the last group: full learning rate
    assert min(g['lr_scale'] for g in opt.param_groups) < 1.0
    ema = ModelEmaV3(model, decay=0.9)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    GGAMLoss()(model.forward_ggam(x), torch.tensor([0, 1])).backward()
    opt.step()
    ema.update(model)
    assert set(ema.module.state_dict()) == set(model.state_dict())
    # the EMA of every parameter (the head's too) moved a tenth of the way to the updated weights
    moved = dict(ema.module.named_parameters())
    assert moved.keys() == before.keys()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(moved[n], before[n] + 0.1 * (p.detach() - before[n]), msg=n)


def test_head_param_groups_follow_the_paper():
    model, _, _ = _build('test_resnet')
    groups = head_param_groups(model, lr=0.1, weight_decay=5e-4)
    assert [g['lr'] for g in groups] == [pytest.approx(0.01), 0.1]
    assert {id(p) for p in groups[1]['params']} == {id(p) for p in model.head.parameters()}
    from timm.models import group_parameters

    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        last = groups[max(groups)]
        assert set(last) == {n for n, _ in model.head.named_parameters(prefix='head')}


def test_no_weight_decay_is_prefixed():
    model, _, _ = _build('test_vit')
    nwd = model.no_weight_decay()
    assert nwd and all(n.startswith('backbone.') for n in nwd)
    params = dict(model.named_parameters())
    assert 'backbone.cls_token' in nwd and 'backbone.cls_token' in params


def test_grad_checkpointing_is_delegated():
    model, x, _ = _build('test_convnext')
    model.set_grad_checkpointing(True)
    assert any(getattr(m, 'grad_checkpointing', False) for m in model.backbone.modules())
    model.train()
    GGAMLoss()(model.forward_ggam(x), torch.tensor([0, 1])).backward()


def test_token_model_with_dynamic_size_and_non_square_input():
    torch.manual_seed(0)
    model = wrap_timm_model('test_vit', num_classes=3, dynamic_img_size=True)
    x = torch.randn(2, 3, 96, 128)
    out = model.forward_ggam(x)
    assert out.spatial_weights.shape == (2, 6, 8)
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize('name,kwargs,size,grid,block', [
    # Qwen's spatial merger: 2x2 blocks of an 8x8 patch grid; DeepSeek's aligner: 3x3 blocks of 5x5, padded (ceil)
    ('qwen3_vit_88m_merge', dict(patch_size=8, pos_embed_grid_size=8, out_features=40), (64, 64), (4, 4), 16),
    ('deepseek_vit_412m_align', dict(patch_size=8, out_features=40), (40, 40), (2, 2), 24),
])
def test_merged_token_grids_keep_their_place(name, kwargs, size, grid, block):
    torch.manual_seed(0)
    model = wrap_timm_model(name, num_classes=3, img_size=size, embed_dim=32, depth=0, num_heads=2, **kwargs).eval()
    assert model.layout.fmt == 'NLC' and model.layout.merge > 1 and model.grid_size(size) == grid
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        base = model.features_to_nchw(model.forward_features(x), model.grid_size(size))
        # with no transformer block each merged token sees only its own pixels: change those of block (1, 0)
        y = x.clone()
        y[..., block:2 * block, :block] += 1
        moved = model.features_to_nchw(model.forward_features(y), model.grid_size(size))
    changed = (moved - base).abs().amax(1)[0] > 1e-6
    expected = torch.zeros(grid, dtype=torch.bool)
    expected[1, 0] = True
    assert torch.equal(changed, expected)
    assert model.forward_ggam(x).spatial_weights.shape == (1, *grid)


def test_meta_probe_leaves_shared_modules_on_their_device():
    # CoaT shares one conv position encoding module between the model and its blocks (cpe1 is
    # serial_blocks1[i].cpe): the probe used to leave those parameters on the meta device (non-finite logits)
    torch.manual_seed(0)
    model = wrap_timm_model('coat_lite_tiny', num_classes=3, img_size=64)
    assert not [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    assert model.layout.fmt == 'NLC' and model.layout.num_prefix_tokens == 1
    plain = timm.create_model('coat_lite_tiny', num_classes=0, img_size=64).eval()
    plain.load_state_dict(model.backbone.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), plain.forward_features(x))
    out = model.train().forward_ggam(x)
    GGAMLoss()(out, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_channels_last_input():
    model, x, _ = _build('test_resnet')
    model.eval()
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x))


def test_create_model_registry():
    assert {'ggam', 'ggam_resnet50', 'ggam_vgg19_bn', 'ggam_test_resnet'} <= set(timm.list_models('ggam*'))
    model = timm.create_model('ggam_test_resnet', num_classes=7)
    assert isinstance(model, GGAMModel) and model.backbone_name == 'test_resnet' and model.num_classes == 7
    assert model.pretrained_cfg['architecture'] == 'ggam_test_resnet'
    generic = timm.create_model('ggam', backbone='test_convnext', num_classes=4, spatial_norm='sigmoid')
    assert generic.backbone_name == 'test_convnext' and generic.head.attn.spatial_norm == 'sigmoid'
    with pytest.raises(ValueError, match='fixed to backbone'):
        timm.create_model('ggam_test_resnet', backbone='test_vit')
    with pytest.raises(ValueError, match='feature_cls'):
        timm.create_model('ggam_test_resnet', features_only=True, feature_cls='dict')


def test_backbone_checkpoint_loads_into_ggam_with_fresh_head(tmp_path):
    from safetensors.torch import save_file

    plain = timm.create_model('test_resnet', num_classes=1000)
    path = tmp_path / 'plain.safetensors'
    save_file(plain.state_dict(), str(path))
    model = timm.create_model('ggam_test_resnet', pretrained=True, num_classes=12,
                              pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in plain.state_dict().items():
        if not k.startswith('fc.'):
            assert torch.equal(model.state_dict()[f'backbone.{k}'], v), k
    assert model.head.fc.out_features == 12
    bad = tmp_path / 'bad.safetensors'
    save_file({'conv1.weight': torch.zeros(1)}, str(bad))
    with pytest.raises(KeyError, match='backbone keys are missing'):
        timm.create_model('ggam_test_resnet', pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)))


@pytest.mark.parametrize('name,match', [
    ('resnet5o', "backbone 'resnet5o' is not a timm backbone; did you mean"),
    ('crossvit_tiny_240', 'returns a list'),
    ('pit_ti_224', 'no spatial map'),
])
def test_unsupported_or_unknown_backbones_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        wrap_timm_model(name, num_classes=3)
    assert issubclass(UnsupportedBackboneError, ValueError)


def test_bad_images_are_refused_with_what_to_change():
    model, _, _ = _build('test_resnet')
    with pytest.raises(ValueError, match='in_chans=3'):
        model(torch.randn(1, 1, 96, 96))
    with pytest.raises(ValueError, match='too small'):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match='image batch'):
        model(torch.randn(3, 96, 96))
    with pytest.raises(ValueError, match='empty batch'):
        model(torch.randn(0, 3, 96, 96))
    with pytest.raises(TypeError, match='need a backbone name'):
        GGAMModel(timm.create_model('test_resnet'), drop_path_rate=0.1)


def test_wraps_a_built_model_and_grayscale():
    model = wrap_timm_model(timm.create_model('test_resnet', num_classes=10), num_classes=4)
    assert model.backbone.num_classes == 0 and model(torch.randn(1, 3, 96, 96)).shape == (1, 4)
    gray = wrap_timm_model('test_resnet', num_classes=2, in_chans=1)
    assert gray(torch.randn(1, 1, 96, 96)).shape == (1, 2)


def test_reset_classifier_auto_pool_keeps_a_gated_head_plain_at_the_start():
    """`global_pool='auto'` resolves as the head's own 'auto' does: a gated head keeps its global average (was 'sum',
    N times the average)."""
    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=5, parts='channel-spatial-gated').eval()
    assert model.head.pool_type == 'avg'
    model.reset_classifier(7, global_pool='auto')
    assert model.head.pool_type == 'avg' and model.global_pool == 'avg'
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # g = 0: the gated head pools A as the plain head does
        feats = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats.mean((2, 3)))


@pytest.mark.parametrize('kwargs', [dict(parts='spatial'), dict(parts='none')])
def test_reset_classifier_keeps_the_model_dtype_without_channel_attention(kwargs):
    model = wrap_timm_model('test_resnet', num_classes=5, **kwargs).double().eval()
    model.reset_classifier(7)
    assert model.head.fc.weight.dtype == torch.float64
    assert model(torch.randn(2, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64
    model.reset_classifier(0)
    model.reset_classifier(3)  # from a head without any parameter: the backbone's dtype
    assert model.head.fc.weight.dtype == torch.float64

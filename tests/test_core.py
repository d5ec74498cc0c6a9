"""The attention, the Grad-CAM weights and the loss against the float64 reference from the paper's equations."""
import itertools

import pytest
import torch
import torch.nn as nn
from reference import ref_attention, ref_beta, ref_ggam_divergence, ref_loss

from ggam_layers import ChannelSpatialAttention, GGAMHead, GGAMLoss, ggam_divergence, ggam_loss, grad_cam_weights
from ggam_layers.attention import parts_name
from ggam_layers.loss import classification_loss

NORMS = ('softmax', 'sum', 'sigmoid')
SWITCHES = ((True, True), (True, False), (False, True), (False, False))


def _features(b=3, c=32, h=4, w=5, positive=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    return x.abs() + 0.1 if positive else x


def _attn_weights(attn):
    return attn.fc1.weight, attn.fc1.bias, attn.fc2.weight, attn.fc2.bias


def _head(norm, channel_attn, spatial_attn, pool='auto', tau=1.0, cam_layer='features', c=32, k=7, seed=0):
    torch.manual_seed(seed)
    head = GGAMHead(c, k, rd_ratio=0.25, spatial_norm=norm, parts=parts_name(channel_attn, spatial_attn),
                    pool_type=pool, temperature=tau, cam_layer=cam_layer).double()
    # larger FC weights than the default init, so S and T are far from uniform and every term of beta matters
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(3.0)
    return head


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('channel_attn,spatial_attn', SWITCHES)
@pytest.mark.parametrize('tau', (1.0, 0.5))
def test_attention_matches_reference(norm, channel_attn, spatial_attn, tau):
    head = _head(norm, channel_attn, spatial_attn, tau=tau)
    x = _features(positive=(norm == 'sum'))
    res = head.attn.attend(x)
    for i in range(x.shape[0]):
        weights = _attn_weights(head.attn) if channel_attn else (None,) * 4
        s, t, d = ref_attention(x[i], *weights, spatial_norm=norm, channel_attn=channel_attn,
                                spatial_attn=spatial_attn, tau=tau)
        torch.testing.assert_close(res.channel_weights[i], s, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res.spatial_weights[i], t, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res.output[i], d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.attn(x), res.output, rtol=0, atol=0)


def test_sum_norm_falls_back_to_softmax_when_the_sum_is_not_positive():
    attn = ChannelSpatialAttention(8, rd_channels=4, spatial_norm='sum').double()
    x = _features(2, 8, 3, 3, positive=True)
    x[1] = -x[1]
    res = attn.attend(x)
    assert res.sum_fallback.tolist() == [False, True]
    torch.testing.assert_close(res.spatial_weights[1].flatten(), res.spatial_logits[1].flatten().softmax(0))
    assert torch.isfinite(res.output).all()


ALL_HEAD_OPTIONS = list(itertools.product(NORMS, SWITCHES, ('avg', 'sum'), ('features', 'attended'), (1.0, 0.5)))


@pytest.mark.parametrize('norm,switches,pool,cam_layer,tau', ALL_HEAD_OPTIONS)
def test_closed_form_beta_matches_reference_and_autograd(norm, switches, pool, cam_layer, tau):
    channel_attn, spatial_attn = switches
    head = _head(norm, channel_attn, spatial_attn, pool, tau, cam_layer)
    x = _features(positive=(norm == 'sum'))
    if norm == 'sum':
        x[1] = -x[1]  # one sample on the softmax fallback
    assert head.uses_closed_form()
    out = head.forward_ggam(x)
    head.closed_form = False
    generic = head.forward_ggam(x.clone().requires_grad_(True))
    scale = generic.cam_weights.abs().max()
    assert scale > 0
    torch.testing.assert_close(out.cam_weights / scale, generic.cam_weights / scale, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.logits, generic.logits, rtol=1e-12, atol=1e-12)
    weights = _attn_weights(head.attn) if channel_attn else (None,) * 4
    for i in range(x.shape[0]):
        beta = ref_beta(x[i], int(out.classes[i]), weights, head.fc.weight, head.fc.bias, pool=head.pool_type,
                        cam_layer=cam_layer, spatial_norm=norm, channel_attn=channel_attn,
                        spatial_attn=spatial_attn, tau=tau)
        torch.testing.assert_close(out.cam_weights[i] / scale, beta / scale, rtol=0, atol=1e-10)


@pytest.mark.parametrize('pool,cam_layer', list(itertools.product(('avg', 'sum'), ('features', 'attended'))))
def test_channel_rescale_matches_reference_and_autograd(pool, cam_layer):
    """The channel-only head with the C * S gain: D = C * S * A; beta in closed form = autograd = reference."""
    torch.manual_seed(0)
    head = GGAMHead(32, 7, rd_ratio=0.25, parts='channel-rescaled', pool_type=pool,
                    cam_layer=cam_layer).double()
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(3.0)
    x = _features()
    res = head.attn.attend(x)
    torch.testing.assert_close(res.output, 32 * res.channel_weights[:, :, None, None] * x, rtol=1e-12, atol=0)
    out = head.forward_ggam(x)
    head.closed_form = False
    generic = head.forward_ggam(x.clone().requires_grad_(True))
    scale = generic.cam_weights.abs().max()
    torch.testing.assert_close(out.cam_weights / scale, generic.cam_weights / scale, rtol=0, atol=1e-10)
    for i in range(x.shape[0]):
        s, _, d = ref_attention(x[i], *_attn_weights(head.attn), spatial_attn=False, rescale=True)
        torch.testing.assert_close(res.output[i], d, rtol=1e-10, atol=1e-12)
        beta = ref_beta(x[i], int(out.classes[i]), _attn_weights(head.attn), head.fc.weight, head.fc.bias, pool=pool,
                        cam_layer=cam_layer, spatial_attn=False, rescale=True)
        torch.testing.assert_close(out.cam_weights[i] / scale, beta / scale, rtol=0, atol=1e-10)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match='channel_rescale=True .* needs'):
        ChannelSpatialAttention(8, channel_rescale=True)  # the switches of earlier releases check as they did


@pytest.mark.parametrize('norm,pool,cam_layer', list(itertools.product(
    ('softmax', 'sum', 'sigmoid'), ('auto', 'sum'), ('features', 'attended'))))
def test_spatial_gate_matches_reference_and_autograd(norm, pool, cam_layer):
    """The gated spatial map D = A * (1 - g + g N T): forward = float64 reference, beta in closed form = autograd =
    reference, at a gate value away from 0 and 1."""
    torch.manual_seed(0)
    head = GGAMHead(32, 7, rd_ratio=0.25, spatial_norm=norm, parts='channel-spatial-gated', pool_type=pool,
                    cam_layer=cam_layer).double()
    assert head.pool_type == ('avg' if pool == 'auto' else pool)  # 'auto': g = 0 is the plain average pool
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(3.0)
        head.attn.gate.fill_(0.63)
    x = _features()
    res = head.attn.attend(x)
    out = head.forward_ggam(x)
    head.closed_form = False
    generic = head.forward_ggam(x.clone().requires_grad_(True))
    scale = generic.cam_weights.abs().max()
    torch.testing.assert_close(out.logits, generic.logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.cam_weights / scale, generic.cam_weights / scale, rtol=0, atol=1e-10)
    for i in range(x.shape[0]):
        kw = dict(spatial_norm=norm, gate=0.63)
        _, t, d = ref_attention(x[i], *_attn_weights(head.attn), **kw)
        torch.testing.assert_close(res.output[i], d, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res.spatial_weights[i], t, rtol=1e-10, atol=1e-12)
        beta = ref_beta(x[i], int(out.classes[i]), _attn_weights(head.attn), head.fc.weight, head.fc.bias,
                        pool=head.pool_type, cam_layer=cam_layer, **kw)
        torch.testing.assert_close(out.cam_weights[i] / scale, beta / scale, rtol=0, atol=1e-10)


def test_spatial_gate_starts_as_the_plain_head_and_learns():
    """At g = 0 the gated head is GAP + linear (the plain backbone's head); g gets a gradient from there (so it can
    learn to use T); gradcheck through the gated head; the gate needs the spatial map."""
    torch.manual_seed(0)
    head = GGAMHead(16, 5, rd_channels=4, parts='channel-spatial-gated').double()
    x = torch.rand(4, 16, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(head(x), head.fc(x.mean((2, 3))), rtol=1e-12, atol=1e-12)
    head(x).logsumexp(1).sum().backward()
    assert head.attn.gate.grad is not None and head.attn.gate.grad.abs() > 0
    assert "parts='channel-spatial-gated'" in repr(head.attn)
    assert torch.autograd.gradcheck(lambda a: GGAMHead.forward(head, a), (x.clone().requires_grad_(True),))
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match='spatial_gate=True .* needs spatial_attn'):
        ChannelSpatialAttention(8, spatial_attn=False, spatial_gate=True)
    with pytest.raises(ValueError, match='--spatial-gate'):
        from ggam_layers.train.config import TrainConfig
        TrainConfig(spatial_attn=False, spatial_gate=True).validate()


def test_beta_for_given_classes():
    head = _head('softmax', True, True)
    x = _features()
    classes = torch.tensor([0, 6, 3])
    out = head.forward_ggam(x, classes)
    assert out.classes.tolist() == [0, 6, 3]
    weights = _attn_weights(head.attn)
    for i, k in enumerate(classes.tolist()):
        beta = ref_beta(x[i], k, weights, head.fc.weight, head.fc.bias, pool=head.pool_type)
        torch.testing.assert_close(out.cam_weights[i], beta, rtol=1e-10, atol=1e-14)


def test_non_relu_head_falls_back_to_autograd():
    torch.manual_seed(0)
    head = GGAMHead(16, 5, rd_channels=4, act_layer='gelu').double()
    assert not head.uses_closed_form()
    x = _features(2, 16, 3, 3)
    out = head.forward_ggam(x)
    ref = grad_cam_weights(x, head, out.classes)
    torch.testing.assert_close(out.cam_weights, ref.weights, rtol=1e-12, atol=1e-15)


def test_dropout_in_train_mode_falls_back_and_matches_autograd():
    torch.manual_seed(0)
    head = GGAMHead(16, 5, rd_channels=4, drop_rate=0.5).double().train()
    assert not head.uses_closed_form()
    x = _features(2, 16, 3, 3)
    torch.manual_seed(1)
    out = head.forward_ggam(x)
    torch.manual_seed(1)  # the same dropout mask: beta is the Grad-CAM of the head as it ran
    ref = grad_cam_weights(x, head, out.classes)
    torch.testing.assert_close(out.cam_weights, ref.weights, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out.logits, ref.scores, rtol=0, atol=0)
    torch.manual_seed(2)  # another mask, another beta: the mask is part of it
    assert not torch.allclose(head.forward_ggam(x, out.classes).cam_weights, out.cam_weights)
    head.eval()
    assert head.uses_closed_form()
    out = head.forward_ggam(x)
    torch.testing.assert_close(out.cam_weights, grad_cam_weights(x, head, out.classes).weights, rtol=1e-10,
                               atol=1e-14)


def test_generic_per_sample_matches_a_loop_with_a_batch_coupled_head():
    torch.manual_seed(0)
    bn_head = nn.Sequential(nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 9, 4)).double().train()
    x = _features(4, 8, 3, 3)
    batched = grad_cam_weights(x, bn_head, per_sample=True)
    for i in range(4):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(bn_head(xi)[i, batched.classes[i]], xi)
        torch.testing.assert_close(batched.weights[i], g[i].mean((1, 2)), rtol=1e-12, atol=1e-15)
    summed = grad_cam_weights(x, bn_head)
    assert not torch.allclose(summed.weights, batched.weights)  # the coupling is real: the summed form differs
    head = _head('softmax', True, True)
    x = _features()
    torch.testing.assert_close(grad_cam_weights(x, head, per_sample=True).weights, grad_cam_weights(x, head).weights)


def test_beta_leaves_parameter_grads_untouched_and_training_backward_works():
    torch.manual_seed(0)
    stem = nn.Conv2d(3, 16, 3, padding=1).double()
    head = GGAMHead(16, 5, rd_channels=4).double()
    params = list(stem.parameters()) + list(head.parameters())
    stem.weight.grad = torch.full_like(stem.weight, 7.0)  # a pre-existing grad must stay exactly as it was
    before = [None if p.grad is None else p.grad.clone() for p in params]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for closed_form in (True, False):
        head.closed_form = closed_form
        out = head.forward_ggam(stem(x))
        for p, b in zip(params, before):
            assert (p.grad is None) == (b is None)
            if b is not None:
                assert torch.equal(p.grad, b)
    loss = GGAMLoss(lam=1.0)(out, torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize('squash', ('sigmoid', 'softmax'))
@pytest.mark.parametrize('kl', ('symmetric', 'forward', 'reverse'))
@pytest.mark.parametrize('target_norm,temperature', (('none', 1.0), ('standardize', 1.0), ('none', 1e-3)))
def test_loss_matches_reference(squash, kl, target_norm, temperature):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 5, 2, 2])
    s = torch.randn(4, 10, generator=g, dtype=torch.float64).softmax(1)
    beta = torch.randn(4, 10, generator=g, dtype=torch.float64) * 1e-3
    opts = dict(squash=squash, kl=kl, target_norm=target_norm, temperature=temperature)
    terms = ggam_loss(logits.float(), target, s.float(), beta.float(), lam=2.5, **opts)
    ref = ref_loss(logits, target, s, beta, lam=2.5, **opts)
    assert terms.loss.dtype == torch.float32
    assert abs(terms.loss.item() - ref) < 1e-5 * max(1.0, abs(ref))
    exact = ggam_loss(logits, target, s, beta, lam=2.5, **opts)
    assert exact.loss.dtype == torch.float64
    assert abs(exact.loss.item() - ref) < 1e-10 * max(1.0, abs(ref))
    div = ggam_divergence(s, beta, reduction='none', **opts)
    for i in range(4):
        assert abs(div[i].item() - ref_ggam_divergence(s[i], beta[i], **opts)) < 1e-10


def test_loss_module_equals_functional_and_reductions():
    g = torch.Generator().manual_seed(2)
    logits, s, beta = torch.randn(3, 5, generator=g), torch.randn(3, 8, generator=g).softmax(1), torch.randn(3, 8)
    target = torch.tensor([1, 2, 3])
    crit = GGAMLoss(lam=3.0, target='authors')
    terms = crit.terms(logits, target, s, beta)
    # the functional form with the authors' parts spelled out gives the same loss
    assert torch.equal(terms.loss, ggam_loss(logits, target, s, beta, lam=3.0, squash='softmax', kl='forward').loss)
    assert torch.equal(crit(logits, target, s, beta), terms.loss)
    torch.testing.assert_close(terms.loss, terms.ce + 3.0 * terms.ggam)
    none = GGAMLoss(lam=3.0, target='authors', reduction='none').terms(logits, target, s, beta)
    summed = GGAMLoss(lam=3.0, target='authors', reduction='sum').terms(logits, target, s, beta)
    assert none.loss.shape == (3,)
    torch.testing.assert_close(none.loss.mean(), terms.loss)
    torch.testing.assert_close(none.loss.sum(), summed.loss)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_classification_loss_is_the_float32_cross_entropy(dtype, smoothing):
    g = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(4, 6, generator=g)).to(dtype)
    labels = torch.tensor([0, 5, 2, 2])
    # reference from the definition in float64: -sum_k q_k log softmax(z)_k, q the smoothed one-hot
    z = logits.double()
    q = torch.nn.functional.one_hot(labels, 6).double() * (1 - smoothing) + smoothing / 6
    ref = -(q * z.log_softmax(1)).sum(1)
    per_sample = classification_loss(logits, labels, smoothing, reduction='none')
    assert per_sample.dtype == torch.float32 and per_sample.shape == (4,)
    torch.testing.assert_close(per_sample.double(), ref, rtol=1e-6, atol=1e-6)
    mean = classification_loss(logits, labels, smoothing)
    torch.testing.assert_close(mean.double(), ref.mean(), rtol=1e-6, atol=1e-6)
    # soft targets (mixup / cutmix): the same sum with the given distribution
    soft = torch.rand(4, 6, generator=g).softmax(1)
    torch.testing.assert_close(classification_loss(logits, soft.to(dtype), reduction='sum').double(),
                               -(soft.to(dtype).double() * z.log_softmax(1)).sum(), rtol=1e-6, atol=1e-6)


def test_loss_beta_carries_no_gradient():
    s_logits = torch.randn(2, 6, requires_grad=True)
    beta = torch.randn(2, 6, requires_grad=True)
    logits = torch.randn(2, 3, requires_grad=True)
    GGAMLoss(lam=5.0)(logits, torch.tensor([0, 1]), s_logits.softmax(1), beta).backward()
    assert beta.grad is None
    assert s_logits.grad is not None and s_logits.grad.abs().sum() > 0


def test_gradcheck_attention():
    torch.manual_seed(0)
    for norm in NORMS:
        attn = ChannelSpatialAttention(6, rd_channels=3, spatial_norm=norm).double()
        x = (_features(2, 6, 2, 3, positive=(norm == 'sum'))).requires_grad_(True)
        assert torch.autograd.gradcheck(attn, (x,))
        params = tuple(attn.parameters())
        names = [n for n, _ in attn.named_parameters()]
        fixed = x.detach()

        def fn(*p, attn=attn, names=names, fixed=fixed):
            return torch.func.functional_call(attn, dict(zip(names, p)), (fixed,))

        assert torch.autograd.gradcheck(fn, params)


def test_gradcheck_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(3, 5, dtype=torch.float64)
    target = torch.tensor([0, 3, 1])
    for squash, kl, norm in itertools.product(('sigmoid', 'softmax'), ('symmetric', 'forward', 'reverse'),
                                              ('none', 'standardize')):
        def fn(lg, z, squash=squash, kl=kl, norm=norm):
            return ggam_loss(lg, target, z.softmax(1), beta, lam=2.0, squash=squash, kl=kl, target_norm=norm).loss

        assert fn(logits, z).dtype == torch.float64
        assert torch.autograd.gradcheck(fn, (logits, z))


def test_spatial_gate_round_trips_through_save_pretrained_and_timm(tmp_path):
    from ggam_layers import wrap_timm_model
    from ggam_layers.hub import load_model, save_pretrained

    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=3, parts='channel-spatial-gated').eval()
    with torch.no_grad():
        model.head.attn.gate.fill_(0.4)  # not the initial 0: the reload must read it from the file
    save_pretrained(model, tmp_path / 'm')
    loaded = load_model(str(tmp_path / 'm')).eval()
    assert loaded.head.attn.spatial_gate and loaded.head.pool_type == 'avg'
    assert loaded.head.attn.gate.item() == pytest.approx(0.4)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    import inspect

    import timm
    if 'data_config' not in inspect.signature(timm.models.save_for_hf).parameters:
        return  # timm < 1.0.31: its own save_for_hf records no model_args (so rebuilds a default ggam_* model)
    timm.models.save_for_hf(model, tmp_path / 'timm', safe_serialization=True)
    torch.testing.assert_close(timm.create_model(f'local-dir:{tmp_path / "timm"}', pretrained=True).eval()(x), model(x))


def test_channel_rescale_round_trips_through_save_pretrained(tmp_path):
    from ggam_layers import wrap_timm_model
    from ggam_layers.hub import load_model, save_pretrained

    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=3, parts='channel-rescaled').eval()
    save_pretrained(model, tmp_path / 'm')
    loaded = load_model(str(tmp_path / 'm')).eval()
    assert loaded.head.attn.channel_rescale and not loaded.head.attn.spatial_attn
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))

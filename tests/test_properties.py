"""Hypothesis properties of the GGAM loss and the closed-form Grad-CAM weights."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ggam_layers import GGAMHead, GGAMLoss, ggam_divergence
from ggam_layers.loss import CamTarget, cam_log_target

SETTINGS = settings(max_examples=40, deadline=None)
OPTIONS = st.fixed_dictionaries({
    'squash': st.sampled_from(['sigmoid', 'softmax']),
    'target_norm': st.sampled_from(['none', 'standardize']),
    'temperature': st.sampled_from([1.0, 0.1]),
})


@st.composite
def weights(draw, min_b=1, max_b=4, min_c=1, max_c=12):
    b = draw(st.integers(min_b, max_b))
    c = draw(st.integers(min_c, max_c))
    seed = draw(st.integers(0, 2**31 - 1))
    log_scale = draw(st.floats(-8, 4))
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, c, generator=g, dtype=torch.float64) * draw(st.floats(0.01, 20))).softmax(1)
    beta = torch.randn(b, c, generator=g, dtype=torch.float64) * 10 ** log_scale
    return s, beta


@SETTINGS
@given(weights(), OPTIONS, st.sampled_from(['symmetric', 'forward', 'reverse']))
def test_divergence_is_non_negative_and_finite(sb, opts, kl):
    s, beta = sb
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        div = ggam_divergence(s.to(dtype), beta.to(dtype), kl=kl, reduction='none', **opts)
        assert torch.isfinite(div).all()
        assert (div >= -1e-6).all()


@SETTINGS
@given(weights(min_c=2), OPTIONS)
def test_divergence_is_zero_exactly_at_the_target(sb, opts):
    _, beta = sb
    target = cam_log_target(beta, **opts).exp()
    div = ggam_divergence(target, beta, reduction='none', **opts)
    assert div.abs().max() < 1e-12
    other = torch.roll(target, 1, dims=1)  # a different distribution whenever the target is not constant
    differs = (other - target).abs().amax(1) > 1e-6
    if differs.any():
        assert (ggam_divergence(other, beta, reduction='none', **opts)[differs] > 0).all()


@SETTINGS
@given(weights(), st.integers(0, 2**31 - 1))
def test_symmetric_divergence_is_symmetric(sb, seed):
    s, _ = sb
    q = torch.randn(s.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).softmax(1)
    # with squash='softmax' and no transform the target is softmax(log q) = q, so both arguments are distributions
    raw = dict(squash='softmax', target_norm='none', reduction='none')
    d_sq = ggam_divergence(s, q.log(), **raw)
    d_qs = ggam_divergence(q, s.log(), **raw)
    torch.testing.assert_close(d_sq, d_qs, rtol=1e-9, atol=1e-12)
    fwd = ggam_divergence(s, q.log(), kl='forward', **raw)
    rev = ggam_divergence(s, q.log(), kl='reverse', **raw)
    torch.testing.assert_close(d_sq, 0.5 * (fwd + rev))


@SETTINGS
@given(weights(min_b=2), OPTIONS, st.integers(0, 2**31 - 1))
def test_loss_is_invariant_to_batch_order(sb, opts, seed):
    s, beta = sb
    b = s.shape[0]
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 5, (b,), generator=g)
    perm = torch.randperm(b, generator=g)
    cam = CamTarget(squash=opts['squash'], norm=opts['target_norm'], temperature=opts['temperature'])
    crit = GGAMLoss(lam=2.0, target=cam)
    torch.testing.assert_close(crit(logits, target, s, beta), crit(logits[perm], target[perm], s[perm], beta[perm]))
    per_sample = GGAMLoss(lam=2.0, target=cam, reduction='none')(logits, target, s, beta)
    one = torch.stack([crit(logits[i:i + 1], target[i:i + 1], s[i:i + 1], beta[i:i + 1]) for i in range(b)])
    torch.testing.assert_close(per_sample, one)


@SETTINGS
@given(
    st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.floats(-8, 4),
    st.sampled_from(['softmax', 'sum', 'sigmoid']), st.integers(0, 2**31 - 1),
)
def test_head_and_loss_finite_for_extreme_magnitudes_and_small_maps(b, h, w, log_scale, norm, seed):
    torch.manual_seed(seed)
    head = GGAMHead(16, 4, rd_channels=4, spatial_norm=norm)
    x = torch.randn(b, 16, h, w) * 10 ** log_scale
    if norm == 'sum':
        x = x.abs()
    x.requires_grad_(True)
    out = head.forward_ggam(x)
    for t in (out.logits, out.channel_weights, out.cam_weights, out.spatial_weights):
        assert torch.isfinite(t).all()
    loss = GGAMLoss(lam=9.0)(out, torch.zeros(b, dtype=torch.long))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@SETTINGS
@given(st.integers(2, 5), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_closed_form_is_batch_invariant(b, hw, seed):
    torch.manual_seed(seed)
    head = GGAMHead(12, 3, rd_channels=4).double()
    x = torch.randn(b, 12, hw, hw + 1, dtype=torch.float64)
    full = head.forward_ggam(x)
    for i in range(b):
        one = head.forward_ggam(x[i:i + 1])
        torch.testing.assert_close(one.cam_weights[0], full.cam_weights[i], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize('bad,match', [
    (lambda: ggam_divergence(torch.ones(2, 3) / 3, torch.zeros(3, 3)), 'cam_weights has batch size 3'),
    (lambda: ggam_divergence(torch.ones(2, 3) / 3, torch.zeros(2, 4)), 'cam_weights has 4 channels'),
    (lambda: ggam_divergence(torch.ones(0, 3), torch.zeros(0, 3)), 'non-empty'),
    (lambda: ggam_divergence(torch.ones(3) / 3, torch.zeros(3)), r'channel_weights must have shape \(B, C\)'),
    (lambda: GGAMLoss()(torch.zeros(2, 5), torch.zeros(3, dtype=torch.long), torch.ones(2, 4) / 4,
                        torch.zeros(2, 4)), r'target must be \(2,\)'),
    (lambda: GGAMLoss()(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), torch.ones(0, 4),
                        torch.zeros(0, 4)), 'empty batch'),
    (lambda: GGAMLoss(check_finite=True)(torch.full((2, 5), float('nan')), torch.zeros(2, dtype=torch.long),
                                         torch.ones(2, 4) / 4, torch.zeros(2, 4)), 'logits holds non-finite'),
    (lambda: GGAMLoss(squash='tanh'), 'squash must be one of'),
    (lambda: GGAMLoss(lam=-1), 'lam must be >= 0'),
    (lambda: GGAMHead(8, 3).forward_ggam(torch.zeros(2, 9, 3, 3)), 'must have 8 channels'),
    (lambda: GGAMHead(8, 3).forward_ggam(torch.zeros(2, 8, 3)), 'must have 4 dims'),
    (lambda: GGAMHead(8, 3).forward_ggam(torch.zeros(0, 8, 3, 3)), 'empty batch'),
    (lambda: GGAMHead(8, 3, spatial_norm='l2'), 'spatial_norm must be one of'),
    (lambda: GGAMHead(8, 3, pool_type='max'), 'pool_type must be one of'),
])
def test_bad_input_names_the_argument(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad()


def test_loss_rejects_a_result_without_the_fields():
    with pytest.raises(TypeError, match='forward_ggam result'):
        GGAMLoss()(object(), torch.zeros(2, dtype=torch.long))

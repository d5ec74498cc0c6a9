"""The GGAM training step is one forward and one backward.

Closed-form beta means: no hooks, no retained graph, no second backward through the backbone, no host sync in the
loss (checked by `torch.compile(fullgraph=True)`, which refuses `.item()` and any other graph break, and on CUDA by
`torch.cuda.set_sync_debug_mode('error')`), a float32 loss under bf16 / fp16 autocast and channels_last inputs.
The authors' step (benchmarks/step_time.py, `AuthorsStep`) is the counter-example: two backwards, and the max-logit
gradient left in `.grad`.
"""
import copy

import pytest
import torch
import torch.nn as nn
from conftest import load_benchmark

from ggam_layers import GGAMHead, GGAMLoss, wrap_timm_model


def _step_time():
    """benchmarks/step_time.py as a module: the tests check the steps the benchmark times."""
    return load_benchmark('step_time')


def _head_and_loss(c=32, k=5, seed=0):
    torch.manual_seed(seed)
    head = GGAMHead(c, k, rd_ratio=0.25)
    with torch.no_grad():  # larger weights than the default init so that S, T and beta are far from uniform
        for p in head.parameters():
            p.mul_(3.0)
    return head, GGAMLoss(lam=2.0)


def _features(b=3, c=32, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g).relu()
    y = torch.randint(0, 5, (b,), generator=g)
    return x, y


def _run(fn, head, x, y):
    """Outputs, loss and gradients (head parameters and features) of one forward + backward."""
    x = x.clone().requires_grad_(True)
    head.zero_grad(set_to_none=True)
    out, loss = fn(x, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in head.named_parameters()}
    grads['features'] = x.grad.clone()
    return out, loss.detach(), grads


def _assert_same(a, b, rtol=1e-5, atol=1e-6):
    out_a, loss_a, grads_a = a
    out_b, loss_b, grads_b = b
    for name in ('logits', 'channel_weights', 'cam_weights', 'spatial_weights', 'classes'):
        torch.testing.assert_close(getattr(out_a, name), getattr(out_b, name), rtol=rtol, atol=atol, msg=name)
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize('backend', [
    'aot_eager',
    pytest.param('inductor', marks=pytest.mark.slow),  # C++ code generation: about 70 s cold on 2 cores
])
def test_compiled_head_and_loss_fullgraph_matches_eager(backend):
    head, crit = _head_and_loss()
    x, y = _features()

    def head_and_loss(a, t):
        out = head.forward_ggam(a)
        return out, crit(out, t)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(head_and_loss)(x.clone().requires_grad_(True), y)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    eager = _run(head_and_loss, head, x, y)
    torch._dynamo.reset()
    compiled = _run(torch.compile(head_and_loss, fullgraph=True, backend=backend), head, x, y)
    _assert_same(compiled, eager)


def test_compiled_model_step_has_no_graph_break():
    """The whole wrapped timm model + loss traces as one graph (dynamo only; the head test runs a backend)."""
    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=5)
    crit = GGAMLoss()
    x = torch.randn(2, 3, 96, 96)
    y = torch.tensor([1, 3])
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda a, t: crit(model.forward_ggam(a), t))(x, y)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def _cpu_autocast_supported(dtype):
    a = torch.randn(4, 4)
    try:
        with torch.autocast('cpu', dtype=dtype):
            return torch.mm(a, a).dtype == dtype
    except RuntimeError:
        return False


@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_autocast_loss_is_float32_and_beta_close(dtype, tol):
    if not _cpu_autocast_supported(dtype):
        pytest.skip(f'CPU autocast to {dtype} is not supported by this torch build')
    head, crit = _head_and_loss()
    x, y = _features()
    ref = head.forward_ggam(x)
    xa = x.clone().requires_grad_(True)
    with torch.autocast('cpu', dtype=dtype):
        out = head.forward_ggam(xa)
        loss = crit(out, y)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert torch.equal(out.classes, ref.classes)
    # beta to within the low-precision rounding, relative to its scale
    scale = ref.cam_weights.abs().max()
    torch.testing.assert_close(out.cam_weights.float(), ref.cam_weights, rtol=0, atol=tol * scale)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    assert torch.isfinite(xa.grad).all()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_wrapped_model_step(dtype):
    if not _cpu_autocast_supported(dtype):
        pytest.skip(f'CPU autocast to {dtype} is not supported by this torch build')
    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=5)
    crit = GGAMLoss()
    x = torch.randn(2, 3, 96, 96)
    y = torch.tensor([1, 3])
    with torch.autocast('cpu', dtype=dtype):
        out = model.forward_ggam(x)
        terms = crit.terms(out, y)
    assert out.logits.dtype == dtype  # the backbone and head did run in low precision
    for t in terms:
        assert t.dtype == torch.float32 and torch.isfinite(t)
    terms.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=5)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    crit = GGAMLoss()
    x = torch.randn(2, 3, 96, 96)
    y = torch.tensor([1, 3])
    x_cl = x.to(memory_format=torch.channels_last)
    assert x_cl.is_contiguous(memory_format=torch.channels_last)
    results = []
    for m, xi in ((model, x), (model_cl, x_cl)):
        out = m.forward_ggam(xi)
        loss = crit(out, y)
        loss.backward()
        results.append((out, loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (out_a, loss_a, grads_a), (out_b, loss_b, grads_b) = results
    for name in ('logits', 'channel_weights', 'cam_weights', 'spatial_weights'):
        torch.testing.assert_close(getattr(out_b, name), getattr(out_a, name), rtol=1e-4, atol=1e-5, msg=name)
    assert torch.equal(out_a.classes, out_b.classes)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-5, msg=name)


def _first_conv_weight(model: nn.Module) -> torch.Tensor:
    return next(m.weight for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize('method,backwards', [('plain', 1), ('ggam', 1), ('ggam_autograd', 1), ('authors', 2)])
def test_backward_passes_through_the_backbone(method, backwards):
    """How many times one training step computes the gradient of the backbone's first conv weight."""
    st = _step_time()
    setting = st.Setting('test_resnet', 96, 2)
    step, model = st.build_step(method, setting, num_classes=5)
    calls = []
    _first_conv_weight(model).register_hook(lambda g: calls.append(g.shape))  # the test's own hook, to count
    x, y = st._inputs(setting, 5, 'cpu', False)
    step(x, y)
    assert len(calls) == backwards
    step(x, y)
    assert len(calls) == 2 * backwards


def test_ggam_step_frees_its_graph_and_registers_no_hooks():
    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=5)
    crit = GGAMLoss()
    x = torch.randn(2, 3, 96, 96)
    y = torch.tensor([1, 3])
    loss = crit(model.forward_ggam(x), y)
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks), m
    assert all(p.grad is None for p in model.parameters())  # computing beta touched no .grad
    loss.backward()
    with pytest.raises(RuntimeError, match='backward through the graph a second time'):
        loss.backward()  # nothing retained the graph


def test_grad_is_exactly_the_loss_gradient():
    """Ours leaves exactly d loss / d theta in `.grad`; the authors' step adds the max-logit gradient to it."""
    st = _step_time()
    rows = {r['method']: r for r in st.gradient_check(st.Setting('test_resnet', 96, 2), num_classes=5, device='cpu')}
    for method in ('plain', 'ggam', 'ggam_autograd'):
        assert rows[method]['grad_rel_diff'] < 1e-6, rows[method]
    assert rows['authors']['grad_rel_diff'] > 0.1, rows['authors']


@pytest.mark.skipif(not torch.cuda.is_available(), reason='torch.cuda.set_sync_debug_mode needs a CUDA device')
@pytest.mark.parametrize('amp', [None, torch.bfloat16])
def test_no_host_sync_in_ggam_loss_cuda(amp):
    torch.manual_seed(0)
    model = wrap_timm_model('test_resnet', num_classes=5).cuda()
    crit = GGAMLoss()
    x = torch.randn(2, 3, 96, 96, device='cuda')
    y = torch.tensor([1, 3], device='cuda')
    ctx = torch.autocast('cuda', dtype=amp) if amp is not None else torch.autocast('cuda', enabled=False)
    with ctx:
        feats = model.forward_features(x).detach().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with ctx:
            loss = crit(model.head.forward_ggam(feats), y)
        loss.backward()
        with pytest.raises(RuntimeError):  # the check is live: a host read does raise
            loss.item()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_fp16_grad_scaler_exists_on_every_torch_the_package_accepts(monkeypatch):
    """`--amp --amp-dtype float16` builds its GradScaler through `fp16_grad_scaler`: torch.amp.GradScaler('cuda')
    where it exists, torch.cuda.amp.GradScaler() on torch 2.1 (which has no torch.amp.GradScaler; the floor stage
    runs this test there)."""
    import warnings

    from ggam_layers.train.loop import fp16_grad_scaler

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # no CUDA here: the scaler warns and disables itself, as it would
        scaler = fp16_grad_scaler()
        assert hasattr(scaler, 'scale') and hasattr(scaler, 'unscale_')
        if hasattr(torch.amp, 'GradScaler'):
            assert isinstance(scaler, torch.amp.GradScaler)
            monkeypatch.delattr(torch.amp, 'GradScaler')  # what torch 2.1 looks like
            old = fp16_grad_scaler()
            assert isinstance(old, torch.cuda.amp.GradScaler)

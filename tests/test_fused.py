"""The fused Triton GGAM head against the PyTorch path and the float64 references.

Without a GPU the kernels run in Triton's interpreter on small CPU tensors. The interpreter must be on before Triton
is first imported, and `import torch` already imports Triton, so this file then runs itself once more in a subprocess
with TRITON_INTERPRET=1 (`test_kernels_in_interpreter_subprocess`) and its other tests skip in the parent process.
With a CUDA device the same tests run compiled kernels on the GPU, plus a full-size check (32 x 2048 x 14 x 14,
bf16, channels_last). Every covered option is checked for the forward
(logits, S, T), beta and the gradients (A, the attention MLP, the classifier), in float32 and bf16; options outside
`ggam_layers.kernels.COVERED` must fall back (`FALLBACK`), and `torch.compile(fullgraph=True)` must see no break.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import ref_attention, ref_beta, ref_head_logits

from ggam_layers import GGAMHead, GGAMLoss
from ggam_layers.kernels import COVERED, FALLBACK, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason='Triton is not installed (or torch < 2.4)')

ON_GPU = torch.cuda.is_available()
DEVICE = 'cuda' if ON_GPU else 'cpu'
C = 37  # not a power of two, not a multiple of the block size


def _interpreted() -> bool:
    """Whether Triton was imported with its interpreter on (its own library functions are then interpreted)."""
    if not triton_available():
        return False
    import triton.language.standard as standard
    return type(standard.zeros).__name__ == 'InterpretedFunction'


INTERPRETED = _interpreted()
needs_kernels = pytest.mark.skipif(
    not (ON_GPU or INTERPRETED), reason='no GPU: runs in the interpreter subprocess of test_kernels_in_interpreter_*')


@pytest.mark.skipif(ON_GPU or INTERPRETED, reason='the kernels run directly (GPU, or already interpreted)')
def test_kernels_in_interpreter_subprocess():
    """No GPU: run this file's kernel tests in a fresh process with TRITON_INTERPRET=1 (under a minute)."""
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONWARNINGS='ignore')
    here = Path(__file__).resolve().parent  # cwd: not the checkout root, so an installed wheel stays the one tested
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-x', Path(__file__).name],
                          cwd=here, env=env, capture_output=True, text=True, timeout=600)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert ' passed' in proc.stdout and 'failed' not in proc.stdout, tail
    print(proc.stdout.strip().splitlines()[-1])


def _head(seed: int = 0, c: int = C, k: int = 6, **kwargs) -> GGAMHead:
    torch.manual_seed(seed)
    kwargs.setdefault('rd_channels', 5)
    head = GGAMHead(c, k, **kwargs)
    with torch.no_grad():  # larger weights than the default init: S, T and beta far from uniform
        for p in head.parameters():
            p.mul_(3.0)
    return head.to(DEVICE)


def _features(shape, seed: int = 0, sign: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (sign * torch.randn(*shape, generator=g).relu()).to(DEVICE)


def _run(head: GGAMHead, x: torch.Tensor, fused, classes=None, amp=None):
    """forward_ggam, a loss touching logits, S and T, and its gradients w.r.t. x and every head parameter."""
    head = copy.deepcopy(head)
    head.fused = fused
    x = x.detach().clone().requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, head.num_classes, (x.shape[0],), generator=g).to(x.device)
    t_weight = torch.randn(x.shape[0], x.shape[2], x.shape[3], generator=g).to(x.device, torch.float64)
    ctx = torch.autocast(x.device.type, dtype=amp) if amp is not None else torch.autocast(x.device.type, enabled=False)
    with ctx:
        out = head.forward_ggam(x, classes)
        loss = GGAMLoss(lam=2.0)(out, y) + (out.spatial_weights.double() * t_weight).sum()
    names = ['features'] + [n for n, _ in head.named_parameters()]
    grads = torch.autograd.grad(loss, [x] + list(head.parameters()))
    return out, dict(zip(names, grads))


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str) -> None:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    err = float((got - want).abs().max()) if want.numel() else 0.0
    scale = float(want.abs().max()) if want.numel() else 0.0
    assert err <= rtol * scale + 1e-12, f'{what}: max abs error {err:.3g}, scale {scale:.3g}, rtol {rtol}'


def _check(fused_run, want_run, rtol: float, tag: str) -> None:
    (out_f, grads_f), (out_w, grads_w) = fused_run, want_run
    for field in ('logits', 'channel_weights', 'spatial_weights', 'cam_weights'):
        _close(getattr(out_f, field), getattr(out_w, field), rtol, f'{tag} {field}')
    assert torch.equal(out_f.classes.cpu(), out_w.classes.cpu()), f'{tag} classes'
    for name, grad in grads_w.items():
        _close(grads_f[name], grad, rtol, f'{tag} d loss / d {name}')


def _check_paper_reference(head: GGAMHead, x: torch.Tensor, out) -> None:
    """logits, S, T and beta of each sample against tests/reference.py (float64, the paper's equations)."""
    attn = head.attn
    weights = ((attn.fc1.weight, attn.fc1.bias, attn.fc2.weight, attn.fc2.bias) if attn.channel_attn
               else (None,) * 4)
    weights = tuple(w.detach().double().cpu() if w is not None else None for w in weights)
    fc_w, fc_b = head.fc.weight.detach().double().cpu(), head.fc.bias.detach().double().cpu()
    kw = dict(spatial_norm=attn.spatial_norm, channel_attn=attn.channel_attn, spatial_attn=attn.spatial_attn,
              tau=attn.temperature, eps=attn.eps, rescale=attn.channel_rescale)
    for i in range(x.shape[0]):
        a = x[i].detach().double().cpu()
        s, t, _ = ref_attention(a, *weights, **kw)
        _close(out.channel_weights[i], s, 1e-5, f'sample {i} S vs paper')
        _close(out.spatial_weights[i], t, 1e-5, f'sample {i} T vs paper')
        _close(out.logits[i], ref_head_logits(a, weights, fc_w, fc_b, head.pool_type, **kw), 1e-5,
               f'sample {i} logits vs paper')
        k = int(out.classes[i])
        beta = ref_beta(a, k, weights, fc_w, fc_b, head.pool_type, head.cam_layer, **kw)
        _close(out.cam_weights[i], beta, 1e-5, f'sample {i} beta vs paper')


# (id, head options, feature shape, feature sign, given classes): every covered option at least once
CASES = [
    ('softmax-sum-pool', {}, (2, C, 7, 9), 1.0, False),
    ('softmax-avg-attended', {'pool_type': 'avg', 'cam_layer': 'attended'}, (2, C, 7, 9), 1.0, False),
    ('sum-norm-avg', {'spatial_norm': 'sum', 'pool_type': 'avg'}, (2, C, 3, 4), 1.0, False),
    ('sum-norm-fallback', {'spatial_norm': 'sum'}, (2, C, 3, 4), -1.0, False),
    ('sigmoid-tau', {'spatial_norm': 'sigmoid', 'temperature': 0.5}, (2, C, 7, 9), 1.0, False),
    ('sigmoid-sum-pool', {'spatial_norm': 'sigmoid', 'pool_type': 'sum'}, (2, C, 3, 4), 1.0, True),
    ('no-channel', {'parts': 'spatial'}, (2, C, 7, 9), 1.0, False),
    ('no-spatial', {'parts': 'channel'}, (2, C, 3, 4), 1.0, False),
    ('no-spatial-sum-tau', {'parts': 'channel', 'pool_type': 'sum', 'temperature': 2.0}, (2, C, 3, 4), 1.0, True),
    ('neither', {'parts': 'none'}, (2, C, 3, 4), 1.0, False),
    ('channel-rescale', {'parts': 'channel-rescaled'}, (2, C, 3, 4), 1.0, False),
    ('channel-rescale-sum', {'parts': 'channel-rescaled', 'pool_type': 'sum'}, (2, C, 7, 9), 1.0,
     True),
    ('1x1-batch1', {}, (1, C, 1, 1), 1.0, False),
    ('batch1-given-class', {'cam_layer': 'features'}, (1, C, 7, 9), 1.0, True),
]


@needs_kernels
@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_fused_matches_pytorch_and_reference_float32(case):
    _, options, shape, sign, given = case
    head = _head(**options)
    x = _features(shape, sign=sign)
    classes = torch.arange(shape[0], device=DEVICE) % head.num_classes if given else None
    fused = _run(head, x, True, classes)
    _check(fused, _run(head, x, False, classes), 2e-5, 'fused vs PyTorch float32')
    want = _run(head.double(), x.double(), False, classes)  # the PyTorch path in float64
    _check(fused, want, 2e-5, 'fused vs float64')
    _check_paper_reference(head, x, fused[0])


@needs_kernels
@pytest.mark.parametrize('case,channels_last', [
    (CASES[0], False), (CASES[0], True), (CASES[3], True), (CASES[4], False), (CASES[7], True),
], ids=lambda v: v[0] if isinstance(v, tuple) else ('channels_last' if v else 'nchw'))
def test_fused_bf16_autocast(case, channels_last):
    """bf16 features under bf16 autocast: against the float64 path on the same (bf16-rounded) values."""
    _, options, shape, sign, _ = case
    head = _head(**options)
    x = _features(shape, sign=sign).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    classes = torch.arange(shape[0], device=DEVICE) % head.num_classes  # no argmax flips between precisions
    out, grads = _run(head, x, True, classes, amp=torch.bfloat16)
    assert out.cam_weights.dtype == torch.bfloat16 and out.channel_weights.dtype == torch.float32
    assert grads['features'].dtype == torch.bfloat16
    assert grads['features'].is_contiguous(memory_format=torch.channels_last) == channels_last or shape[2:] == (1, 1)
    want = _run(head.double(), x.double(), False, classes)
    _check((out, grads), want, 3e-2, 'fused bf16 vs float64')


@needs_kernels
def test_fused_float32_channels_last_and_strided():
    """channels_last is read in place (no copy); a non-mergeable view is copied once; results are the same."""
    head = _head()
    x = _features((2, C, 7, 9))
    xl = x.contiguous(memory_format=torch.channels_last)
    assert xl.flatten(2).data_ptr() == xl.data_ptr()  # the kernels' B x C x N view of channels_last is no copy
    base = _run(head, x, True)
    _check(_run(head, xl, True), base, 1e-5, 'channels_last vs NCHW')
    wide = _features((2, C, 7, 12))[..., ::2][..., :9]  # W stride 2, H and W do not merge: copied by flatten
    _check(_run(head, wide, True), _run(head, wide, False), 2e-5, 'strided view vs PyTorch')


@needs_kernels
def test_fused_forward_and_pre_logits():
    """`forward` (inference and pre_logits) takes the fused path too, with dropout outside the kernels."""
    head = _head(drop_rate=0.5).eval()
    x = _features((2, C, 5, 6))
    fused, plain = copy.deepcopy(head), copy.deepcopy(head)
    fused.fused, plain.fused = True, False
    assert fused.uses_fused(x, ggam=False) and fused.uses_fused(x)
    with torch.no_grad():
        _close(fused(x), plain(x), 2e-5, 'logits')
        _close(fused(x, pre_logits=True), plain(x, pre_logits=True), 2e-5, 'pre_logits')


@needs_kernels
def test_fused_auto_uses_kernels_only_on_cuda():
    head = _head()
    x = _features((2, C, 3, 4))
    assert head.fused == 'auto'
    assert head.uses_fused(x) is (x.device.type == 'cuda')


@needs_kernels
@pytest.mark.parametrize('shape', [(2, C, 63), (3, 300, 5), (1, 1000, 1)])
def test_contractions_against_einsum(shape):
    """The one-pass reductions alone, bf16 A, any split of the channels (few positions: split into chunks)."""
    from ggam_layers.kernels import load_ops
    tk = load_ops().tk
    g = torch.Generator().manual_seed(0)
    a = torch.randn(*shape, generator=g).bfloat16().to(DEVICE)
    v = torch.rand(shape[0], shape[1], generator=g).to(DEVICE)
    q = torch.rand(shape[0], shape[2], generator=g).to(DEVICE)
    ad = a.double()
    for split in (None, 1, 3):
        _close(tk.channel_contract(a, v, 0.5, split), 0.5 * torch.einsum('bc,bcn->bn', v.double(), ad), 1e-5,
               f'channel_contract split={split}')
    _close(tk.position_contract(a, q, 2.0), 2.0 * torch.einsum('bn,bcn->bc', q.double(), ad), 1e-5, 'position')
    _close(tk.position_contract(a, None, 1.0 / shape[2]), ad.mean(2), 1e-5, 'GAP')


@needs_kernels
def test_frozen_features_skip_the_input_gradient(monkeypatch):
    """Features that need no gradient (a frozen backbone): no dA write, the same parameter gradients."""
    from ggam_layers.kernels import load_ops
    tk = load_ops().tk
    writes = []
    outer_write = tk.outer_write
    monkeypatch.setattr(tk, 'outer_write', lambda *args: writes.append(1) or outer_write(*args))
    head = _head()
    x = _features((2, C, 3, 4))
    y = torch.tensor([0, 3], device=DEVICE)
    grads = []
    for fused in (True, False):
        h = copy.deepcopy(head)
        h.fused = fused
        GGAMLoss()(h.forward_ggam(x), y).backward()
        grads.append([p.grad for p in h.parameters()])
    assert not writes
    for got, want in zip(*grads):
        _close(got, want, 2e-5, 'parameter gradient with frozen features')


@needs_kernels
@pytest.mark.parametrize('name', ['test_resnet', 'test_mambaout'])
def test_fused_in_a_timm_model(name):
    """A whole GGAM model (NCHW backbone, and NHWC whose permuted features are read in place): same loss and grads."""
    from ggam_layers import wrap_timm_model
    torch.manual_seed(0)
    model = wrap_timm_model(name, num_classes=5).to(DEVICE)
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    y = torch.tensor([1, 3], device=DEVICE)
    grads = []
    for fused in (True, False):
        m = copy.deepcopy(model)
        m.head.fused = fused
        loss = GGAMLoss()(m.forward_ggam(x), y)
        loss.backward()
        grads.append([loss.detach()] + [p.grad for p in m.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for got, want in zip(*grads):
        _close(got, want, 1e-4, f'{name} fused vs PyTorch')


# options outside the fused path: (id, head options, feature dtype, train mode); see ggam_layers.kernels.FALLBACK
FALLBACK_CASES = [
    ('gelu', {'act_layer': 'gelu'}, torch.float32, False, 'not ReLU'),
    ('autograd-beta', {'closed_form': False}, torch.float32, False, 'closed_form=False'),
    ('dropout-train', {'drop_rate': 0.5}, torch.float32, True, 'dropout'),
    ('float64', {}, torch.float64, False, 'float64'),
    ('spatial-gate', {'parts': 'channel-spatial-gated'}, torch.float32, False, "parts='channel-spatial-gated'"),
]


@needs_kernels
@pytest.mark.parametrize('case', FALLBACK_CASES, ids=[c[0] for c in FALLBACK_CASES])
def test_uncovered_options_fall_back(case):
    _, options, dtype, train, reason = case
    head = _head(**options).to(dtype).train(train)
    x = _features((2, C, 3, 4)).to(dtype)
    assert reason in head.fused_unsupported(x)
    assert not head.uses_fused(x)  # fused='auto': the PyTorch path, silently
    head.fused = True
    with pytest.raises(ValueError, match='fused=True'):
        head.forward_ggam(x)
    head.fused = False
    if not train:
        torch.manual_seed(0)
        want = head.forward_ggam(x)
        head.fused = 'auto'
        torch.manual_seed(0)
        got = head.forward_ggam(x)
        for a, b in zip(got, want):
            assert torch.equal(a, b)


@needs_kernels
def test_cpu_without_interpreter_falls_back(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    head = _head().cpu()
    x = _features((2, C, 3, 4)).cpu()
    assert 'TRITON_INTERPRET' in head.fused_unsupported(x)
    head.fused = True
    with pytest.raises(ValueError, match='TRITON_INTERPRET'):
        head.forward_ggam(x)
    with pytest.raises(ValueError, match='fused must be'):
        GGAMHead(8, 2, fused='yes')


def test_the_documented_cover_and_fallbacks_are_what_the_dispatch_does(monkeypatch):
    """Each line of `kernels.COVERED` names options the fused path takes, and each line of `kernels.FALLBACK` a case
    it refuses, with its reason (the dispatch alone: no kernel runs, so this runs wherever Triton is installed)."""
    from ggam_layers.kernels import dispatch
    monkeypatch.setenv('TRITON_INTERPRET', '1')  # read when called: CPU tensors count as covered
    x = _features((2, C, 3, 4))
    covered = [  # one group per line of COVERED: (head, features, for forward_ggam rather than forward)
        [(_head(spatial_norm=n), x, True) for n in ('softmax', 'sum', 'sigmoid')],
        [(_head(pool_type=p), x, True) for p in ('avg', 'sum', 'auto')],
        [(_head(cam_layer=c), x, True) for c in ('features', 'attended')],
        [(_head(**o), x, True) for o in ({'parts': 'spatial'}, {'parts': 'channel'}, {'temperature': 0.5},
                                         {'parts': 'channel-rescaled'}, {'rd_channels': 3})],
        [(_head().train(), x, True), (_head().eval(), x, True), (_head(drop_rate=0.5).train(), x, False)],
        [(_head(), x.to(dt), True) for dt in (torch.float16, torch.bfloat16)]
        + [(_head(), x.contiguous(memory_format=torch.channels_last), True), (_head(), x.transpose(2, 3), True)],
    ]
    assert len(covered) == len(COVERED)
    for line, group in zip(COVERED, covered):
        for head, feats, ggam in group:
            assert dispatch.fused_unsupported(head, feats, ggam) is None, line
    not_linear = _head()
    not_linear.fc = torch.nn.Sequential(not_linear.fc)
    refused = [  # in the order of FALLBACK: (head, features, words of the reason)
        (_head(act_layer='gelu'), x, 'act_layer GELU is not ReLU'),
        (_head(closed_form=False), x, 'closed_form=False'),
        (_head(parts='channel-spatial-gated'), x, "parts='channel-spatial-gated'"),
        (_head(drop_rate=0.5).train(), x, 'dropout in train mode'),
        (not_linear, x, 'classifier Sequential is not nn.Linear'),
        (_head(), x.double(), 'dtype torch.float64'),
        (_head(), x.to('meta'), 'device meta'),
    ]
    reasons = [dispatch.fused_unsupported(head, feats, True) for head, feats, _ in refused]
    with monkeypatch.context() as m:
        m.setattr(dispatch, 'TRITON_AVAILABLE', False)
        reasons.append(dispatch.fused_unsupported(_head(), x, True))
    with monkeypatch.context() as m:
        m.setattr(torch.jit, 'is_tracing', lambda: True)
        reasons.append(dispatch.fused_unsupported(_head(), x, True))
    words = [w for _, _, w in refused] + ['Triton is not installed', 'torch.jit tracing or scripting']
    assert len(reasons) == len(FALLBACK)
    for line, reason, word in zip(FALLBACK, reasons, words):
        assert reason is not None and word in reason, (line, reason)


@needs_kernels
def test_compile_fullgraph_no_graph_breaks():
    """torch.compile(fullgraph=True) of forward_ggam + GGAMLoss sees the custom ops: no graph break, same numbers."""
    head = _head()
    head.fused = True
    crit = GGAMLoss()
    x = _features((2, C, 3, 4))
    y = torch.tensor([1, 4], device=DEVICE)

    def loss_fn(a, t):
        return crit(head.forward_ggam(a), t)

    graphs = []

    def backend(gm, example_inputs):  # count the graphs, then compile them (aot_eager on the CPU: the interpreter
        graphs.append(gm)             # is Python, nothing for inductor to lower)
        targets = {str(node.target) for node in gm.graph.nodes if node.op == 'call_function'}
        assert any('ggam_layers.attend' in t for t in targets), targets
        return torch._dynamo.lookup_backend('inductor' if ON_GPU else 'aot_eager')(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)  # fullgraph: any graph break raises
    results = []
    for fn in (loss_fn, compiled):
        a = x.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        loss = fn(a, y)
        loss.backward()
        results.append([loss.detach(), a.grad] + [p.grad for p in head.parameters()])
    assert len(graphs) == 1
    for got, want in zip(*results[::-1]):
        _close(got, want, 1e-5, 'compiled vs eager')


@needs_kernels
def test_opcheck_custom_ops():
    """torch.library.opcheck: schema, fake implementation, autograd registration and AOT tracing of the fused ops."""
    from ggam_layers.kernels import load_ops
    ops = load_ops()
    head = _head()
    attn = head.attn
    x = _features((2, C, 3, 4)).requires_grad_(True)
    args = (x, attn.fc1.weight, attn.fc1.bias, attn.fc2.weight, attn.fc2.bias, 1.0, 'softmax', True, 1.0, 1e-6)
    torch.library.opcheck(ops.attend, args)  # schema, autograd registration, fake tensor, AOT dispatch (dynamic)
    a3 = x.detach().flatten(2)
    v = torch.rand(2, C, device=DEVICE)
    torch.library.opcheck(ops.channel_contract, (a3, v, 0.5), test_utils=('test_schema', 'test_faketensor'))
    torch.library.opcheck(ops.position_contract, (a3, None, 0.5), test_utils=('test_schema', 'test_faketensor'))
    q = torch.rand(2, 12, device=DEVICE)
    xl = x.detach().contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(ops.input_grad, (xl, v, q, v, q, v), test_utils=('test_schema', 'test_faketensor'))
    da = ops.input_grad(xl, v, q, None, None, v)
    assert da.is_contiguous(memory_format=torch.channels_last) and da.dtype == xl.dtype
    _close(da, v[:, :, None, None] * q.view(2, 1, 3, 4) + v[:, :, None, None], 1e-6, 'input_grad')


@pytest.mark.skipif(INTERPRETED, reason='checked once, in the parent process')
def test_import_never_needs_triton():
    """With Triton absent, `import ggam_layers` works and the head runs the PyTorch path (fused=True says why not)."""
    code = '\n'.join([
        'import importlib.util, sys',
        '_find = importlib.util.find_spec',
        "importlib.util.find_spec = lambda n, p=None: None if n.split('.')[0] == 'triton' else _find(n, p)",
        'class Block:',
        '    def find_spec(self, name, path=None, target=None):',
        "        if name.split('.')[0] == 'triton':",
        '            raise ModuleNotFoundError(name)',
        'sys.meta_path.insert(0, Block())',
        'import torch, ggam_layers',
        'head = ggam_layers.GGAMHead(8, 3, fused=True)',
        'x = torch.randn(2, 8, 3, 3)',
        'try:',
        '    head.forward_ggam(x)',
        'except ValueError as e:',
        "    assert 'Triton is not installed' in str(e), e",
        'else:',
        "    raise AssertionError('fused=True ran without Triton')",
        "head.fused = 'auto'",
        'head.forward_ggam(x)',
        "assert 'triton' not in sys.modules",
        "print('ok')",
    ])
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-2000:]


@needs_kernels
@pytest.mark.skipif(not ON_GPU, reason='full-size check needs a CUDA device')
def test_fused_full_size_bf16_channels_last_gpu():
    """The benchmark's shape: 32 x 2048 x 14 x 14 bf16 channels_last, 200 classes, default head."""
    head = _head(c=2048, k=200, rd_channels=None)
    x = _features((32, 2048, 14, 14)).bfloat16().contiguous(memory_format=torch.channels_last)
    classes = torch.arange(32, device=DEVICE) % 200
    got = _run(head, x, True, classes, amp=torch.bfloat16)
    assert head.uses_fused(x)
    _check(got, _run(head.double(), x.double(), False, classes), 3e-2, 'full size bf16 vs float64')

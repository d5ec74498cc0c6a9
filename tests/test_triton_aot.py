"""The fused head's Triton kernels compile for a real GPU (CUDA sm_90: H100, H200), ahead of time, without one.

Without a GPU the kernel tests (test_fused.py) run in Triton's interpreter, which accepts code the GPU compiler may
reject. Here the launchers of `ggam_layers.kernels.triton_kernels` are called on CPU tensors with the kernels replaced
by recorders, each recorded launch is specialised by Triton's own launch code (as on a GPU), and compiled for sm_90
through PTX to the cubin with the `ptxas` Triton ships. Every kernel, in each dtype the ops accept, NCHW and
channels_last. Skipped without Triton, its CUDA backend or ptxas, or under TRITON_INTERPRET=1. Every specialisation
the ops launch, with registers and shared memory: benchmarks/triton_aot_check.py.
"""
import os
from typing import Any, Dict, List, Sequence, Tuple

import pytest
import torch

triton = pytest.importorskip('triton')

__all__ = []

ARCH = 90
MAX_SHARED = 227 * 1024  # dynamic shared memory a block may use on sm_90
Launch = Tuple[Any, Sequence[Any], Dict[str, Any]]


def _aot_unavailable() -> str:
    """Why this Triton cannot compile for CUDA here ('' when it can)."""
    if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
        return 'TRITON_INTERPRET is set: the kernels are interpreted functions'
    try:
        from triton.backends import backends
        from triton.compiler import ASTSource  # noqa: F401
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
    except ImportError as e:
        return f'this Triton lacks an AOT entry point: {e}'
    if 'nvidia' not in backends:
        return "Triton's CUDA backend is not installed"
    if not hasattr(JITFunction, '_pack_args'):
        return 'this Triton has no JITFunction._pack_args'
    try:
        from triton import knobs

        ptxas = knobs.nvidia.ptxas.path
    except Exception as e:  # noqa: BLE001 - any failure to find ptxas means no compile
        return f'no ptxas: {e}'
    return '' if ptxas and os.access(ptxas, os.X_OK) else 'no ptxas'


REASON = _aot_unavailable()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON)


class _Recorder:
    def __init__(self, kernel: Any, sink: List[Launch]) -> None:
        self.kernel, self.sink = kernel, sink

    def __getitem__(self, grid: Any):
        return lambda *args, **kwargs: self.sink.append((self.kernel, args, kwargs))


def _record(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, channels_last: bool) -> List[Launch]:
    """The launches of every kernel variant the ops use, for B x C x H x W = 2 x 37 x 5 x 5 features."""
    from ggam_layers.kernels import triton_kernels as tk

    launches: List[Launch] = []
    for name in ('_position_contract_kernel', '_channel_contract_kernel', '_outer_write_kernel'):
        monkeypatch.setattr(tk, name, _Recorder(getattr(tk, name), launches))
    b, c, n = 2, 37, 25
    a = torch.randn(b, c, 5, 5).to(dtype)
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
    a3 = a.flatten(2)
    tk.position_contract(a3, None, 1.0 / n)                        # GAP
    tk.position_contract(a3, torch.rand(b, n), 1.0)                # pooled, dS
    tk.channel_contract(a3, torch.rand(b, c), 1.0)                 # u, dT, g
    vec_c, vec_n = torch.rand(b, c), torch.rand(b, n)
    tk.outer_write(torch.empty_like(a).flatten(2), vec_c, vec_n, vec_c, vec_n, vec_c)  # dA, both attentions
    tk.outer_write(torch.empty_like(a).flatten(2), vec_c, vec_n)                       # dA, no spatial attention
    return launches


def _compile(kernel: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    """Compile one launch's specialisation for sm_90 as `JITFunction.run` would on that GPU."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget('cuda', ARCH, 32)
    backend = make_backend(target)
    kwargs = dict(kwargs, debug=kwargs.get('debug', kernel.debug) or knobs.runtime.debug,
                  instrumentation_mode=knobs.compilation.instrumentation_mode)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:])
def test_kernels_compile_for_sm90(monkeypatch, tmp_path, dtype, channels_last):
    monkeypatch.setenv('TRITON_CACHE_DIR', str(tmp_path))  # compiled here, not found in a cache
    launches = _record(monkeypatch, dtype, channels_last)
    names = sorted({k.__name__ for k, _, _ in launches})
    assert names == ['_channel_contract_kernel', '_outer_write_kernel', '_position_contract_kernel']
    assert len(launches) == 5
    for kernel, args, kwargs in launches:
        compiled = _compile(kernel, args, kwargs)
        ptx = compiled.asm['ptx']
        assert f'.target sm_{ARCH}' in ptx and f'.entry {kernel.__name__}' in ptx, kernel.__name__
        assert isinstance(compiled.kernel, bytes) and len(compiled.kernel) > 0  # the cubin from ptxas
        assert compiled.metadata.shared <= MAX_SHARED
        assert compiled.metadata.name == kernel.__name__

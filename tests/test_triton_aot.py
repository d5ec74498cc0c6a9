"""The fused head's Triton kernels compile for a real GPU (CUDA sm_90: H100, H200), ahead of time, without one.

Without a GPU the kernel tests (test_fused.py) run in Triton's interpreter, which accepts code the GPU compiler may
reject. Here the launchers of `ggam_layers.kernels.triton_kernels` are called on CPU tensors with the kernels replaced
by recorders, each recorded launch is specialised by Triton's own launch code (as on a GPU), and compiled for sm_90
through PTX to the cubin with the `ptxas` Triton ships. Every kernel, in each dtype the ops accept, NCHW and
channels_last. Skipped without Triton, its CUDA backend or ptxas, or under TRITON_INTERPRET=1. Every specialisation
the ops launch, with registers and shared memory: benchmarks/triton_aot_check.py, whose recording and compiling
code this test calls.
"""
import os

import pytest
import torch
from conftest import load_benchmark

triton = pytest.importorskip('triton')

__all__ = []

ARCH = 90
MAX_SHARED = 227 * 1024  # dynamic shared memory a block may use on sm_90


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


def _aot_module():
    """benchmarks/triton_aot_check.py, which records the ops' launches and compiles each specialisation."""
    return load_benchmark('triton_aot_check')


@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:])
def test_kernels_compile_for_sm90(monkeypatch, tmp_path, dtype, layout):
    monkeypatch.setenv('TRITON_CACHE_DIR', str(tmp_path))  # compiled here, not found in a cache
    aot = _aot_module()
    target = aot.make_target(ARCH)
    # the launches of both attention heads (with and without the spatial map) on 2 x 37 x 5 x 5 features
    specs, launches = aot.collect_specs(target, shapes=[(2, 37, 5, 5)], dtypes=[dtype], layouts=[layout],
                                        heads=[(True, True), (True, False)], wide=False)
    assert sorted({s.name for s in specs}) == sorted(aot.KERNELS) and launches >= len(specs)
    for spec in specs:
        row = aot.compile_spec(spec, target)
        assert row['status'] == 'ok', row.get('error')
        assert row['ptx_target'].startswith(f'sm_{ARCH}') and row['ptx_entry'], spec.name
        assert row['cubin_bytes'] and row['cubin_bytes'] > 0  # the cubin from ptxas
        assert row['shared'] <= MAX_SHARED

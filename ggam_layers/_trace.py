"""Whether code runs eagerly, or under torch.fx symbolic tracing / torch.jit tracing.

Input checks raise clear errors in eager mode and step aside while a tracer records the graph (FX proxies have no
values to check). Callers guard with `if not torch.jit.is_scripting():` first, as timm does, so that TorchScript
never compiles this module's Python-only code.
"""
import torch
import torch.fx._symbolic_trace as _fx

__all__ = ['is_eager']

# torch >= 2.9 tells symbolic tracing apart from torch.export; older versions only have is_fx_tracing
_is_symbolic_tracing = getattr(_fx, 'is_fx_symbolic_tracing', _fx.is_fx_tracing)


def is_eager() -> bool:
    """False under torch.fx symbolic tracing and torch.jit.trace; True otherwise (also under torch.compile/export)."""
    return not (_is_symbolic_tracing() or torch.jit.is_tracing())

"""Fused Triton kernels of the GGAM head, registered as `torch.library` custom ops (`ggam_layers::attend`, ...).

`dispatch` decides when they run (CUDA, Triton installed, covered options) and never imports Triton itself;
`ops` holds the custom ops and their backward, `triton_kernels` the kernels. Pass counts over A: `ops`' docstring.
"""
from .dispatch import COVERED, FALLBACK, fused_unsupported, interpreter_enabled, load_ops, triton_available

__all__ = ['COVERED', 'FALLBACK', 'fused_unsupported', 'interpreter_enabled', 'load_ops', 'triton_available']

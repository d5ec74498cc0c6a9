"""When the GGAM head takes the fused Triton path, and the calls that take it.

Importing this module never imports Triton: `ggam_layers.kernels.ops` (and with it Triton) is loaded on the first
fused call. The fused path is used for CUDA tensors when Triton is installed and the head's options are covered
(`COVERED`); everything in `FALLBACK` runs the PyTorch path with the same results. On the CPU it runs only when asked
for (`GGAMHead(fused=True)`) under Triton's interpreter (`TRITON_INTERPRET=1` set before Triton is imported), which
is how the tests check the kernels without a GPU.
"""
import importlib.util
import os
from types import ModuleType
from typing import Any, Optional

import torch
import torch.nn as nn

__all__ = ['COVERED', 'FALLBACK', 'FUSED_DTYPES', 'triton_available', 'interpreter_enabled', 'fused_unsupported',
           'load_ops']

# torch.library.custom_op arrived in torch 2.4
TRITON_AVAILABLE = importlib.util.find_spec('triton') is not None and hasattr(torch.library, 'custom_op')
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

COVERED = (
    "spatial_norm 'softmax', 'sum' (with its softmax fallback) and 'sigmoid'",
    "pool_type 'avg' and 'sum' (and 'auto')",
    "cam_layer 'features' and 'attended'",
    "parts 'channel-spatial', 'channel', 'spatial', 'none' and 'channel-rescaled', any temperature, any rd_channels",
    'predicted or given classes; train and eval mode; dropout before the classifier in forward()',
    'float32, float16 and bfloat16 features, with or without autocast; NCHW and channels_last strides (read in '
    'place), other strides copied once',
)
FALLBACK = (
    'an activation other than ReLU between fc1 and fc2 (the closed form needs ReLU)',
    'closed_form=False (forward_ggam asks for the autograd beta)',
    "parts 'channel-spatial-gated' and 'spatial-gated' (the learned gate on T; the PyTorch path has its closed form)",
    'dropout > 0 in train mode in forward_ggam (no closed form there)',
    'a classifier that is not nn.Linear in forward_ggam',
    'float64 features (the kernels accumulate in float32)',
    'a device other than CUDA (the CPU only with fused=True under TRITON_INTERPRET=1)',
    'Triton not installed, or torch older than 2.4',
    'torch.jit tracing or scripting, ONNX export',
)

_OPS: Optional[ModuleType] = None


def triton_available() -> bool:
    """Whether Triton is installed (checked without importing it)."""
    return TRITON_AVAILABLE


def interpreter_enabled() -> bool:
    """Whether Triton's interpreter is asked for (TRITON_INTERPRET=1): kernels then run on CPU tensors."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def load_ops() -> ModuleType:
    """`ggam_layers.kernels.ops`, imported on first use (this imports Triton and registers the custom ops)."""
    global _OPS
    if _OPS is None:
        from . import ops
        _OPS = ops
    return _OPS


def fused_unsupported(head: Any, x: torch.Tensor, ggam: bool) -> Optional[str]:
    """Why the fused path cannot run `head` on `x` (None when it can).

    Args:
        head: A `GGAMHead`.
        x: Features, B x C x H x W.
        ggam: For `forward_ggam` (beta in closed form needed) rather than `forward`.
    """
    attn = head.attn
    if attn.channel_attn and not isinstance(attn.act, nn.ReLU):
        return f'act_layer {type(attn.act).__name__} is not ReLU'
    if getattr(attn, 'gate', None) is not None:
        return f'parts={attn.parts!r} (a learned gate on T)'
    if ggam:  # beta in closed form: what the head itself covers
        reason = head.closed_form_unsupported()
        if reason is not None:
            return reason
    if x.dtype not in FUSED_DTYPES:
        return f'dtype {x.dtype} (covered: float32, float16, bfloat16)'
    if not TRITON_AVAILABLE:
        return 'Triton is not installed'
    if x.device.type == 'cpu':
        if not interpreter_enabled():
            return 'CPU tensors need TRITON_INTERPRET=1'
    elif x.device.type != 'cuda':
        return f'device {x.device.type} (covered: cuda)'
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return 'torch.jit tracing or scripting, or ONNX export'
    return None

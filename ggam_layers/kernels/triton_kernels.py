"""Triton kernels of the fused GGAM head: weighted reductions of A over channels or positions, and the dA write.

A is read as B x C x N (N = H W) through its own strides, so NCHW (position stride 1) and channels_last (channel
stride 1) are both read in place; only layouts whose H and W do not merge into one stride are copied, by the
caller's `flatten(2)`. A is loaded in its own dtype (float32, float16 or bfloat16) and every sum is accumulated in
float32. Each kernel reads A exactly once (or writes dA exactly once):

- `position_contract(a, q)`: out[b, c] = scale * sum_n q[b, n] a[b, c, n] (q = 1 gives the GAP). One read of A.
- `channel_contract(a, v)`: out[b, n] = scale * sum_c v[b, c] a[b, c, n]. One read of A (split over chunks of
  channels when there are few positions, then a sum over the chunks' B x N partials).
- `outer_write(...)`: dA[b, c, n] = x1[b, c] y1[b, n] + x2[b, c] y2[b, n] + x3[b, c]. One write of dA, no read.

Importing this module imports Triton; `ggam_layers.kernels.dispatch` decides when that happens.
"""
from contextlib import nullcontext
from typing import ContextManager, Optional

import torch
import triton
import triton.language as tl

__all__ = ['position_contract', 'channel_contract', 'outer_write', 'BLOCK_C', 'BLOCK_N']

BLOCK_C = 64
BLOCK_N = 64


@triton.jit
def _position_contract_kernel(
        a_ptr, q_ptr, out_ptr, C, N, scale,
        sa_b, sa_c, sa_n, sq_b,
        USE_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    a_base = a_ptr + b.to(tl.int64) * sa_b
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        a = tl.load(a_base + offs_c[:, None] * sa_c + offs_n[None, :] * sa_n,
                    mask=mask_c[:, None] & mask_n[None, :], other=0.).to(tl.float32)
        if USE_Q:
            q = tl.load(q_ptr + b * sq_b + offs_n, mask=mask_n, other=0.).to(tl.float32)
            a = a * q[None, :]
        acc += a
    tl.store(out_ptr + b * C + offs_c, tl.sum(acc, axis=1) * scale, mask=mask_c)


@triton.jit
def _channel_contract_kernel(
        a_ptr, v_ptr, out_ptr, C, N, scale, C_PER,
        sa_b, sa_c, sa_n, sv_b,
        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    split = tl.program_id(2)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    a_base = a_ptr + b.to(tl.int64) * sa_b
    c_start = split * C_PER  # this program's chunk of channels (C_PER is a multiple of BLOCK_C)
    c_end = tl.minimum(c_start + C_PER, C)
    for c0 in range(c_start, c_end, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        a = tl.load(a_base + offs_c[:, None] * sa_c + offs_n[None, :] * sa_n,
                    mask=mask_c[:, None] & mask_n[None, :], other=0.).to(tl.float32)
        v = tl.load(v_ptr + b * sv_b + offs_c, mask=mask_c, other=0.).to(tl.float32)
        acc += a * v[:, None]
    tl.store(out_ptr + (b * tl.num_programs(2) + split) * N + offs_n, tl.sum(acc, axis=0) * scale, mask=mask_n)


@triton.jit
def _outer_write_kernel(
        out_ptr, x1_ptr, y1_ptr, x2_ptr, y2_ptr, x3_ptr, C, N,
        so_b, so_c, so_n,
        HAS_2: tl.constexpr, HAS_3: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = offs_c < C
    mask_n = offs_n < N
    x1 = tl.load(x1_ptr + b * C + offs_c, mask=mask_c, other=0.)
    y1 = tl.load(y1_ptr + b * N + offs_n, mask=mask_n, other=0.)
    val = x1[:, None] * y1[None, :]
    if HAS_2:
        x2 = tl.load(x2_ptr + b * C + offs_c, mask=mask_c, other=0.)
        y2 = tl.load(y2_ptr + b * N + offs_n, mask=mask_n, other=0.)
        val += x2[:, None] * y2[None, :]
    if HAS_3:
        x3 = tl.load(x3_ptr + b * C + offs_c, mask=mask_c, other=0.)
        val += x3[:, None]
    ptrs = out_ptr + b.to(tl.int64) * so_b + offs_c[:, None] * so_c + offs_n[None, :] * so_n
    tl.store(ptrs, val.to(out_ptr.dtype.element_ty), mask=mask_c[:, None] & mask_n[None, :])


def _on_device(t: torch.Tensor) -> ContextManager:
    """Triton launches on the current CUDA device: make it t's (a process may drive several GPUs)."""
    return torch.cuda.device(t.device) if t.is_cuda and t.device.index != torch.cuda.current_device() else nullcontext()


def _block(size: int, limit: int) -> int:
    return max(16, min(limit, triton.next_power_of_2(size)))


def position_contract(a: torch.Tensor, q: Optional[torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """scale * sum_n q[b, n] a[b, c, n] as float32 B x C (q None: the plain sum over positions). a: B x C x N."""
    b, c, n = a.shape
    out = torch.empty(b, c, device=a.device, dtype=torch.float32)
    if q is not None:
        q = q.float().contiguous()
    bc, bn = _block(c, BLOCK_C), _block(n, BLOCK_N)
    with _on_device(a):
        _position_contract_kernel[(b, triton.cdiv(c, bc))](
            a, q if q is not None else out, out, c, n, scale, a.stride(0), a.stride(1), a.stride(2),
            q.stride(0) if q is not None else 0, USE_Q=q is not None, BLOCK_C=bc, BLOCK_N=bn)
    return out


def channel_contract(a: torch.Tensor, v: torch.Tensor, scale: float = 1.0, split: Optional[int] = None) -> torch.Tensor:
    """scale * sum_c v[b, c] a[b, c, n] as float32 B x N. a: B x C x N, v: B x C.

    With few positions (B x N / BLOCK_N programs would leave most of a GPU idle) the channels are split into `split`
    chunks of at least 4 blocks, reduced by separate programs into a B x split x N buffer that one small sum adds up
    (deterministic, no atomics); default: up to 8 chunks.
    """
    b, c, n = a.shape
    v = v.float().contiguous()
    bc, bn = _block(c, BLOCK_C), _block(n, BLOCK_N)
    if split is None:
        split = min(8, triton.cdiv(c, 4 * bc))
    per = triton.cdiv(triton.cdiv(c, split), bc) * bc
    split = triton.cdiv(c, per)
    out = torch.empty(b, split, n, device=a.device, dtype=torch.float32)
    with _on_device(a):
        _channel_contract_kernel[(b, triton.cdiv(n, bn), split)](
            a, v, out, c, n, scale, per, a.stride(0), a.stride(1), a.stride(2), v.stride(0), BLOCK_C=bc, BLOCK_N=bn)
    return out.sum(1) if split > 1 else out.view(b, n)


def outer_write(
        out: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, x2: Optional[torch.Tensor] = None,
        y2: Optional[torch.Tensor] = None, x3: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fill out (B x C x N, any strides) with x1 (x) y1 + x2 (x) y2 + x3 broadcast over positions; returns out."""
    b, c, n = out.shape
    has_2, has_3 = x2 is not None, x3 is not None
    x1, y1 = x1.float().contiguous(), y1.float().contiguous()
    x2 = x2.float().contiguous() if x2 is not None else x1
    y2 = y2.float().contiguous() if y2 is not None else y1
    x3 = x3.float().contiguous() if has_3 else x1
    bc, bn = _block(c, BLOCK_C), _block(n, BLOCK_N)
    with _on_device(out):
        _outer_write_kernel[(b, triton.cdiv(c, bc), triton.cdiv(n, bn))](
            out, x1, y1, x2, y2, x3, c, n, out.stride(0), out.stride(1), out.stride(2),
            HAS_2=has_2, HAS_3=has_3, BLOCK_C=bc, BLOCK_N=bn)
    return out

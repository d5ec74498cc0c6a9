"""Compile every Triton kernel specialisation of the fused GGAM head ahead of time for a GPU, without one.

The kernels in `ggam_layers.kernels.triton_kernels` run in Triton's interpreter on machines without a GPU, which
accepts code the GPU compiler may reject. This script runs the compiler instead, for a chosen target (default
CUDA sm_90, the H100/H200), through every stage Triton runs before a launch: Triton IR, TritonGPU IR, LLVM IR, PTX
and, with the `ptxas` that ships with Triton, the cubin.

Which specialisations: the launches the fused ops make (`ggam_layers.kernels.ops`: the `attend` forward, the
closed-form beta `fused_cam_weights` and the `attend` backward, with channel and spatial attention each on or off)
are recorded on small CPU tensors, with the three kernels replaced by recorders, so nothing runs. Inputs cover every
dtype the ops accept (float32, bfloat16, float16), feature layouts (NCHW, channels_last, a view at an unaligned
address, H and W not mergeable) and shapes that reach every block size the launchers choose (16, 32 and 64 along
channels and positions) and Triton's integer specialisations (a value of 1 compiled in as a constant, multiples of
16 marked divisible). Each launch is turned into its signature, constexprs and attributes by Triton's own launch
code (`JITFunction` binder and `_pack_args`), exactly as a launch on the GPU would; identical ones are compiled once.
One more row per kernel and dtype widens the batch stride to 64 bits (a sample of over 2**31 elements, which the
tests cannot allocate).

Registers, spills (local memory) and static shared memory come from `cuobjdump --dump-resource-usage` on the cubin;
dynamic shared memory from Triton's metadata. A fresh Triton cache is used, so everything is compiled, not looked up.

Examples::

    python -m benchmarks.triton_aot_check                  # sm_90, writes benchmarks/results/triton_aot_sm90.*
    python -m benchmarks.triton_aot_check --arch 80 --out-dir /tmp/aot   # A100
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from benchmarks.common import command_line, machine_info, write_results

__all__ = ['KERNELS', 'DTYPES', 'SHAPES', 'LAYOUTS', 'Spec', 'parse_arch', 'make_target', 'Specialiser',
           'record_launches', 'drive_ops', 'collect_specs', 'compile_spec', 'main']

KERNELS = ('_position_contract_kernel', '_channel_contract_kernel', '_outer_write_kernel')
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# B, C, H, W: block sizes (C, N = H W) 64 x 64 (ResNet-50 at 224, N = 196), 64 x 64 (C = 96, N = 49), 16 x 64
# (C = 7, N = 63), 64 x 32 (C = 37, N = 25), 32 x 16 (C = 20, N = 9), 16 x 16 with N = 1 (a constant), 16 x 16 with C
# and N multiples of 16, and 64 x 64 with C = 300 (channel_contract splits C into 2 chunks).
SHAPES = ((1, 2048, 14, 14), (1, 96, 7, 7), (1, 7, 7, 9), (2, 37, 5, 5), (2, 20, 3, 3), (2, 12, 1, 1),
          (2, 16, 4, 4), (3, 300, 8, 8))
LAYOUTS = ('nchw', 'channels_last', 'unaligned', 'unmergeable')
HEADS = ((True, True), (True, False), (False, True), (False, False))  # (channel_attn, spatial_attn)
WIDE_STRIDES = ('sa_b', 'so_b')  # batch strides: the ones that pass 2**31 first


@dataclass
class Spec:
    """One specialisation of a kernel: what Triton would compile for a launch, plus the launches that need it."""

    kernel: Any
    signature: Dict[str, str]
    constexprs: Dict[Tuple[int, ...], Any]
    attrs: Dict[Tuple[int, ...], Any]
    options: Any
    scenarios: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def key(self) -> Tuple[Any, ...]:
        """Identity of the compiled kernel (signature, constants, attributes, options)."""
        return (self.name, tuple(self.signature.items()), repr(sorted(self.constexprs.items())),
                repr(sorted(self.attrs.items())), self.options.hash())

    def dtype(self) -> str:
        """The feature map's element type: the first pointer argument's (A, or dA for `_outer_write_kernel`)."""
        return self.signature[self.kernel.arg_names[0]].lstrip('*')

    def constexpr_text(self) -> str:
        """The compile-time constants, `NAME=value`, including integers Triton specialised to 1."""
        return ' '.join(f'{self.kernel.arg_names[k[0]]}={v}' for k, v in sorted(self.constexprs.items()))

    def args_text(self) -> str:
        """The runtime arguments' types, `/16` marking those Triton assumes divisible by 16 (pointers: aligned)."""
        out = []
        for i, name in enumerate(self.kernel.arg_names):
            ty = self.signature[name]
            if ty == 'constexpr':
                continue
            div = any(a[0] == 'tt.divisibility' for a in self.attrs.get((i,), []))
            out.append(f'{name.replace("_ptr", "")}:{ty}{"/16" if div else ""}')
        return ' '.join(out)


def parse_arch(text: str) -> int:
    """Compute capability as an integer from '90', 'sm_90', 'sm90a' or 'cuda:90'."""
    m = re.fullmatch(r'(?:cuda:|sm_?)?(\d+)a?', text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f'expected e.g. 90, sm_90 or cuda:90, got {text!r}')
    return int(m.group(1))


def make_target(arch: int) -> Any:
    """Triton's description of a CUDA GPU of compute capability `arch` (what `driver.active` gives on one)."""
    from triton.backends.compiler import GPUTarget

    return GPUTarget('cuda', arch, 32)


class Specialiser:
    """Turns a kernel launch (arguments and keywords) into a `Spec` with Triton's own launch code, for `target`."""

    def __init__(self, target: Any) -> None:
        from triton.compiler.compiler import make_backend

        self.target = target
        self.backend = make_backend(target)
        self._binders: Dict[str, Callable[..., Any]] = {}

    def __call__(self, kernel: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> Spec:
        from triton import knobs
        from triton.runtime.jit import create_function_from_signature

        kwargs = dict(kwargs)  # as JITFunction.run does before binding
        kwargs['debug'] = kwargs.get('debug', kernel.debug) or knobs.runtime.debug
        kwargs['instrumentation_mode'] = knobs.compilation.instrumentation_mode
        binder = self._binders.get(kernel.__name__)
        if binder is None:
            binder = self._binders[kernel.__name__] = create_function_from_signature(
                kernel.signature, kernel.params, self.backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(self.backend, kwargs, bound, specialization, options)
        return Spec(kernel, signature, constexprs, attrs, options)


class _Recorder:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args)` records the launch's `Spec` instead of running."""

    def __init__(self, kernel: Any, sink: Callable[[Any, Sequence[Any], Dict[str, Any]], None]) -> None:
        self.kernel = kernel
        self.sink = sink

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.sink(self.kernel, args, kwargs)
        return launch


@contextmanager
def record_launches(sink: Callable[[Any, Sequence[Any], Dict[str, Any]], None]) -> Iterator[None]:
    """Replace the three kernels of `ggam_layers.kernels.triton_kernels` by recorders feeding `sink`, then restore."""
    from ggam_layers.kernels import triton_kernels as tk

    saved = {name: getattr(tk, name) for name in KERNELS}
    for name, kernel in saved.items():
        if not hasattr(kernel, 'params'):
            raise RuntimeError(f'{name} is not a compiled Triton kernel (TRITON_INTERPRET is set?)')
        setattr(tk, name, _Recorder(kernel, sink))
    try:
        yield
    finally:
        for name, kernel in saved.items():
            setattr(tk, name, kernel)


def _features(shape: Tuple[int, int, int, int], dtype: torch.dtype, layout: str) -> torch.Tensor:
    b, c, h, w = shape
    if layout == 'nchw':
        return torch.randn(shape).to(dtype)
    if layout == 'channels_last':
        return torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == 'unaligned':  # one element past an aligned address: pointers not divisible by 16
        return torch.randn(b * c * h * w + 1).to(dtype)[1:].view(shape)
    if layout == 'unmergeable':  # H and W strides do not merge: flatten(2) copies
        return torch.randn(b, c, h, w + 1).to(dtype)[..., :w]
    raise ValueError(layout)


def drive_ops(a: torch.Tensor, channel: bool, spatial: bool) -> None:
    """The fused ops' calls for one head configuration, as `GGAMHead` makes them: `attend`, `fused_cam_weights`
    and the `attend` backward (A needs a gradient). Meant to run under `record_launches` (outputs are garbage)."""
    from ggam_layers.kernels import load_ops

    ops = load_ops()
    b, c, h, w = a.shape
    n, rd, k = h * w, 5, 3
    g = torch.Generator().manual_seed(0)
    fc1_w = torch.randn(rd, c, generator=g).requires_grad_() if channel else None
    fc1_b = torch.randn(rd, generator=g).requires_grad_() if channel else None
    fc2_w = torch.randn(c, rd, generator=g).requires_grad_() if channel else None
    fc2_b = torch.randn(c, generator=g).requires_grad_() if channel else None
    class_w = torch.randn(k, c, generator=g)[torch.zeros(b, dtype=torch.long)]
    a = a.detach().requires_grad_()
    kappa, gain = 1.0 / n, float(c) if channel and not spatial else 1.0
    pooled, s, t, m, u, z1 = ops.attend(a, fc1_w, fc1_b, fc2_w, fc2_b, 1.0, 'softmax', spatial, kappa, 1e-6, gain)
    ops.fused_cam_weights(a, class_w, s, t, m, u, z1, fc1_w, fc2_w, 1.0, 'softmax', spatial, kappa, 1e-6,
                          'features', gain)
    (pooled.sum() + s.sum() + t.sum()).backward()


def collect_specs(target: Any, shapes: Sequence[Tuple[int, int, int, int]] = SHAPES,
                  dtypes: Sequence[torch.dtype] = DTYPES, layouts: Sequence[str] = LAYOUTS,
                  heads: Sequence[Tuple[bool, bool]] = HEADS, wide: bool = True) -> Tuple[List[Spec], int]:
    """The distinct specialisations the ops launch over every combination given, in first-seen order, and the
    number of launches recorded. `wide` adds one per kernel and dtype with the batch stride widened to 64 bits."""
    specialise = Specialiser(target)
    specs: Dict[Tuple[Any, ...], Spec] = {}
    launches = [0]
    scenario = ['']
    wide_done = set()

    def add(spec: Spec, where: str) -> None:
        spec = specs.setdefault(spec.key(), spec)
        spec.scenarios.append(where)

    def sink(kernel: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
        launches[0] += 1
        spec = specialise(kernel, args, kwargs)
        add(spec, scenario[0])
        if wide and (kernel.__name__, spec.dtype()) not in wide_done:
            wide_done.add((kernel.__name__, spec.dtype()))
            names = kernel.arg_names
            args = tuple(v + 2 ** 31 if names[i] in WIDE_STRIDES else v for i, v in enumerate(args))
            add(specialise(kernel, args, kwargs), 'batch stride + 2**31 (synthetic: 64-bit strides)')

    with record_launches(sink), torch.autocast('cpu', enabled=False):
        for dtype in dtypes:
            for shape in shapes:
                for layout in layouts:
                    for channel, spatial in heads:
                        heads_text = '+'.join([x for x, on in (('channel', channel), ('spatial', spatial)) if on])
                        scenario[0] = (f'{str(dtype).replace("torch.", "")} {"x".join(map(str, shape))} {layout} '
                                       f'{heads_text or "plain"}')
                        drive_ops(_features(shape, dtype, layout), channel, spatial)
    return list(specs.values()), launches[0]


def _resource_usage(cubin: bytes) -> Dict[str, int]:
    """REG, STACK, SHARED, LOCAL ... of the cubin's kernel, from cuobjdump (empty when it is unavailable)."""
    try:
        from triton import knobs

        tool = knobs.nvidia.cuobjdump.path
    except Exception:  # no cuobjdump shipped with this Triton
        return {}
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        try:
            text = subprocess.run([tool, '--dump-resource-usage', f.name], capture_output=True, text=True,
                                  timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
    line = next((ln for ln in text.splitlines() if 'REG:' in ln), '')
    return {k: int(v) for k, v in re.findall(r'(\w+(?:\[\d+\])?):(\d+)', line)}


def compile_spec(spec: Spec, target: Any) -> Dict[str, Any]:
    """Compile one specialisation through every stage for `target`; a table row (status 'ok' or 'error')."""
    import triton
    from triton.compiler import ASTSource

    row: Dict[str, Any] = {
        'kernel': spec.name.strip('_').replace('_kernel', ''), 'dtype': spec.dtype(),
        'constexprs': spec.constexpr_text(), 'args': spec.args_text(), 'launches': len(spec.scenarios),
        'example': spec.scenarios[0],
    }
    start = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(spec.kernel, spec.signature, spec.constexprs, spec.attrs),
                                  target=target, options=spec.options.__dict__)
    except Exception as e:  # noqa: BLE001 - any compiler failure is a result to report
        row.update(status='error', seconds=time.perf_counter() - start,
                   error=f'{type(e).__name__}: {" ".join(str(e).split())[:600]}')
        return row
    row['seconds'] = time.perf_counter() - start
    row['status'] = 'ok'
    md = compiled.metadata
    ptx = compiled.asm.get('ptx', '')
    row['ptx_bytes'] = len(ptx)
    target_line = re.search(r'^\.target (\S+)', ptx, re.M)
    row['ptx_target'] = target_line.group(1) if target_line else None
    row['ptx_entry'] = f'.entry {spec.name}' in ptx
    binary = compiled.kernel if isinstance(compiled.kernel, bytes) else None
    row['cubin_bytes'] = len(binary) if binary is not None else None
    usage = _resource_usage(binary) if binary is not None and target.backend == 'cuda' else {}
    row['registers'] = usage.get('REG')
    row['local_bytes'] = usage.get('LOCAL')
    row['static_shared'] = usage.get('SHARED')
    row['shared'] = getattr(md, 'shared', None)
    row['num_warps'] = getattr(md, 'num_warps', None)
    row['num_stages'] = getattr(md, 'num_stages', None)
    return row


@contextmanager
def _fresh_cache() -> Iterator[str]:
    """A temporary TRITON_CACHE_DIR, so every specialisation is compiled rather than read from a cache."""
    old = os.environ.get('TRITON_CACHE_DIR')
    with tempfile.TemporaryDirectory(prefix='triton_aot_') as d:
        os.environ['TRITON_CACHE_DIR'] = d
        try:
            yield d
        finally:
            if old is None:
                os.environ.pop('TRITON_CACHE_DIR', None)
            else:
                os.environ['TRITON_CACHE_DIR'] = old


def _tool_version(name: str) -> Optional[str]:
    try:
        from triton import knobs

        return getattr(knobs.nvidia, name).version
    except Exception:  # noqa: BLE001 - reported as unknown
        return None


COLUMNS = ['kernel', 'dtype', 'constexprs', 'status', 'ptx_bytes', 'cubin_bytes', 'registers', 'local_bytes',
           'shared', 'seconds', 'launches', 'args', 'error']


def _print_table(rows: Sequence[Dict[str, Any]]) -> None:
    cols = ['kernel', 'dtype', 'constexprs', 'status', 'ptx_bytes', 'registers', 'local_bytes', 'shared', 'seconds',
            'args']
    cells = [[c] + [f'{r[c]:.2f}' if c == 'seconds' else str(r.get(c, '')) for r in rows] for c in cols]
    widths = [max(map(len, col)) for col in cells]
    for i in range(len(rows) + 1):
        print('  '.join(col[i].ljust(wd) for col, wd in zip(cells, widths)).rstrip())
    for r in rows:
        if r['status'] != 'ok':
            print(f'ERROR {r["kernel"]} {r["dtype"]} {r["constexprs"]}: {r["error"]}')


def _summary(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """One phrase per kernel and dtype: how many compiled, register and shared-memory ranges, worst spill."""
    out = []
    for key in dict.fromkeys((r['kernel'], r['dtype']) for r in rows):
        group = [r for r in rows if (r['kernel'], r['dtype']) == key]
        ok = [r for r in group if r['status'] == 'ok']
        spill = max((r['local_bytes'] or 0 for r in ok), default=0)
        out.append(f'{key[0]} {key[1]}: {len(ok)}/{len(group)}, {_span(ok, "registers")} registers, '
                   f'{_span(ok, "shared")} B shared, {spill} B spilled')
    return out


def _span(rows: Sequence[Dict[str, Any]], col: str) -> str:
    vals = [r[col] for r in rows if r.get(col) is not None]
    return f'{min(vals)}-{max(vals)}' if vals else 'n/a'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: record, compile, print the table and write `<out-dir>/triton_aot_sm<arch>.{json,md}`.
    Returns 0 when every specialisation compiled, else 1."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--arch', type=parse_arch, default=90, help='CUDA compute capability: 90 (default), sm_80, ...')
    p.add_argument('--out-dir', default='benchmarks/results', help='where the JSON and Markdown go')
    p.add_argument('--no-write', action='store_true', help='print the table only')
    p.add_argument('--no-wide', dest='wide', action='store_false', help='skip the synthetic 64-bit-stride rows')
    args = p.parse_args(argv)
    import triton

    target = make_target(args.arch)
    start = time.perf_counter()
    specs, launches = collect_specs(target, wide=args.wide)
    record_s = time.perf_counter() - start
    print(f'{launches} launches recorded in {record_s:.1f} s: {len(specs)} specialisations; compiling for '
          f'{target.backend}:{target.arch}', flush=True)
    with _fresh_cache():
        start = time.perf_counter()
        rows = [compile_spec(spec, target) for spec in specs]
        compile_s = time.perf_counter() - start
    _print_table(rows)
    failed = sum(r['status'] != 'ok' for r in rows)
    print(f'{len(rows) - failed}/{len(rows)} compiled in {compile_s:.1f} s (first includes Triton start-up)')
    if not args.no_write:
        meta = {
            'machine': machine_info(),
            'command': command_line('triton_aot_check', argv),
            'target': f'{target.backend}:{target.arch} (sm_{target.arch}{"a" if args.arch >= 90 else ""} cubin)',
            'triton': triton.__version__, 'ptxas': _tool_version('ptxas'), 'python': platform.python_version(),
            'launches_recorded': launches, 'specialisations': len(rows), 'compiled': len(rows) - failed,
            'failed': failed, 'record_seconds': round(record_s, 2), 'compile_seconds': round(compile_s, 2),
            'dtypes': [str(d).replace('torch.', '') for d in DTYPES], 'shapes': [list(s) for s in SHAPES],
            'layouts': list(LAYOUTS),
        }
        notes = [
            'Each row is one distinct specialisation (what Triton compiles for a launch): `constexprs` are the '
            'compile-time constants, including integer arguments equal to 1 that Triton compiles in; `args` the '
            'runtime arguments, `/16` marking values (or pointer addresses) Triton assumes divisible by 16. '
            '`launches` counts the recorded launches needing it; the JSON lists one example of each.',
            '`registers` and `local_bytes` (spills) come from cuobjdump on the cubin, `shared` is the dynamic '
            'shared memory Triton requests. Compiled without a GPU from recorded launches of the ops on CPU '
            'tensors; no kernel ran.',
        ]
        notes.append('Per kernel and dtype (specialisations compiled / recorded, registers, dynamic shared memory '
                     'in bytes, spilled bytes): ' + '; '.join(_summary(rows)) + '.')
        paths = write_results(f'triton_aot_sm{args.arch}', rows, meta, out_dir=args.out_dir, columns=COLUMNS,
                              notes=notes)
        print('wrote', ', '.join(map(str, paths)))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

"""The machine a result was measured on, as every result file records it (`results.json`, `seeds.json`, benchmarks).

A seeded run is bit-identical on one machine, not across CPU types: the kernels torch and oneDNN pick depend on the
CPU's instruction sets (AVX2, AVX-512, AMX), and so does the float rounding. The CPU model alone does not say which:
a virtual machine may report only 'AMD EPYC'. So the record holds the model, the features that select kernels and
the kernel set torch dispatches to (`torch.backends.cpu.get_cpu_capability()`), beside the versions.
"""
import os
import platform
from typing import Any, Dict, List, Optional

__all__ = ['CPU_FEATURES', 'cpu_model', 'cpu_features', 'machine_info', 'machine_line']

# the instruction sets that select CPU kernels (x86: torch's ATen dispatch and oneDNN; Arm: NEON / SVE)
CPU_FEATURES = ('sse4_2', 'avx', 'avx2', 'fma', 'f16c', 'avx_vnni', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni',
                'avx512_bf16', 'avx512_fp16', 'amx_tile', 'amx_bf16', 'amx_int8', 'asimd', 'sve', 'sve2')


def _cpuinfo() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: Dict[str, str] = {}
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(':')
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) Platinum 8480+', ...)."""
    info = _cpuinfo()
    return info.get('model name') or platform.processor() or platform.machine() or 'unknown'


def cpu_features() -> Optional[List[str]]:
    """The `CPU_FEATURES` this CPU has, from /proc/cpuinfo's flags; None where they cannot be read (not Linux)."""
    info = _cpuinfo()
    flags = info.get('flags') or info.get('features')
    if flags is None:
        return None
    have = set(flags.split())
    return [f for f in CPU_FEATURES if f in have]


def machine_info() -> Dict[str, Any]:
    """The machine and software a result was measured on: CPU model, its kernel-selecting features and torch's CPU
    kernel set, cores, threads, platform, versions, GPU (if any)."""
    import numpy as np
    import timm
    import torch

    info: Dict[str, Any] = {
        'cpu': cpu_model(),
        'cpu_features': cpu_features(),
        'torch_cpu_capability': torch.backends.cpu.get_cpu_capability(),
        'cpu_cores': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'numpy': np.__version__,
        'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if info['gpu']:
        info.update(gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda)
    return info


def machine_line(info: Dict[str, Any]) -> str:
    """One line naming the machine of `machine_info()`, for a log or a Markdown header."""
    where = f'{info.get("gpu")} GPU, ' if info.get('gpu') else ''
    features = info.get('cpu_features')
    shown = ' '.join(features) if features else ('no listed features' if features == [] else 'features unrecorded')
    return (f'{where}{info.get("cpu")} [{shown}; torch kernels {info.get("torch_cpu_capability") or "unrecorded"}] '
            f'({info.get("cpu_cores")} cores, {info.get("torch_threads")} torch threads), torch {info.get("torch")}, '
            f'timm {info.get("timm")}, Python {info.get("python")}')

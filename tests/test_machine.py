"""Every result file records the machine it was measured on, with the CPU features that change the numbers: seeded runs
are bit-identical on one machine and differ across CPU types (AVX2 against AVX-512 kernels round differently)."""
import json
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark

from ggam_layers.cli import main
from ggam_layers.train.machine import CPU_FEATURES, cpu_features, machine_info, machine_line

pytestmark = pytest.mark.timeout(300)


def _proc_flags():
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.lower().startswith(('flags', 'features'))), None)
    return set(line.split(':', 1)[1].split()) if line else None


def test_machine_info_names_the_cpu_features_and_torch_kernels():
    info = machine_info()
    assert info['cpu'] and info['torch_cpu_capability'] == torch.backends.cpu.get_cpu_capability()
    flags = _proc_flags()
    if flags is None:
        assert info['cpu_features'] is None
    else:
        assert info['cpu_features'] == [f for f in CPU_FEATURES if f in flags] == cpu_features()
    assert {'avx2', 'avx512f', 'amx_tile'} <= set(CPU_FEATURES)
    line = machine_line(info)
    assert info['cpu'] in line and f'torch kernels {info["torch_cpu_capability"]}' in line
    assert machine_line({'cpu': 'AMD EPYC', 'cpu_features': None}).startswith('AMD EPYC [features unrecorded;')


def test_benchmark_results_record_the_cpu_features():
    common = load_benchmark('common')
    info = common.machine_info()
    assert {'cpu', 'cpu_features', 'torch_cpu_capability', 'torch', 'timm'} <= set(info)
    assert 'torch kernels' in common.machine_line(info)


def test_a_training_run_records_its_machine(tmp_path):
    out = tmp_path / 'run'
    assert main(['train', '--preset', 'synthetic', '--model', 'test_resnet', '--img-size', '32', '--epochs', '1',
                 '--data-arg', 'num_classes=4', '--data-arg', 'samples_per_class=4', '--batch-size', '8',
                 '--threads', '1', '--no-progress', '--output', str(out)]) == 0
    machine = json.loads((out / 'results.json').read_text())['machine']
    assert machine == {**machine_info(), 'torch_threads': machine['torch_threads']}
    assert machine['cpu_features'] is None or isinstance(machine['cpu_features'], list)


def test_the_main_job_record_says_what_it_knows_of_its_machine(repo_root):
    record = json.loads((repo_root / 'benchmarks' / 'results' / 'main_job_seeds.json').read_text())
    machine = record['machine']
    assert machine['cpu'] == 'AMD EPYC' and machine['cpu_features'] is None and 'unrecorded' in machine['note']

"""benchmarks/timm_coverage.py keeps working: its --quick mode runs in a temp dir and writes a well-formed report."""
import json
import os
import subprocess

import pytest
from conftest import REPO_ROOT, benchmark_command

__all__ = []



@pytest.fixture(scope='module')
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp('coverage')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        benchmark_command('timm_coverage', '--quick', '--out-dir', str(out), '--no-progress'),
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / 'timm_coverage_quick.json').read_text()), (out / 'timm_coverage_quick.md').read_text()


@pytest.mark.slow
def test_quick_json_structure(quick_report):
    data, _ = quick_report
    assert {'command', 'machine', 'settings', 'wrap', 'sample'} <= set(data)
    assert {'cpu', 'torch', 'timm'} <= set(data['machine'])
    summary, rows = data['wrap']['summary'], data['wrap']['models']
    assert summary['total'] == len(rows) > 0
    assert summary['wrapped'] + summary['refused'] + summary['failed'] == summary['total']
    for r in rows:
        assert {'model', 'module', 'status', 'seconds'} <= set(r)
        assert r['status'] in ('wrapped', 'refused', 'failed')
    sample = data['sample']
    assert sample['summary']['modules'] == len(sample['modules']) > 0
    for e in sample['modules']:
        assert {'module', 'model', 'status'} <= set(e)


@pytest.mark.slow
def test_quick_sample_passes_or_is_refused_with_reason(quick_report):
    data, md = quick_report
    for r in data['wrap']['models']:
        assert r['status'] != 'failed', r
        if r['status'] == 'refused':
            assert r['reason']
        else:
            assert r['fmt'] in ('NCHW', 'NHWC', 'NLC') and r['num_prefix_tokens'] >= 0
    layouts = {r['fmt'] for r in data['wrap']['models'] if r['status'] == 'wrapped'}
    assert layouts == {'NCHW', 'NHWC', 'NLC'}
    statuses = {e['status'] for e in data['sample']['modules']}
    assert statuses <= {'pass', 'refused'} and 'pass' in statuses
    for e in data['sample']['modules']:
        if e['status'] == 'refused':
            assert e['reason']
        else:
            assert e['checks']['beta_rel_err'] <= data['settings']['beta_rtol']
            assert e['checks']['loss'] == e['checks']['loss']  # finite, not NaN
    assert '## Totals' in md and '| module |' in md and data['machine']['timm'] in md

"""The fused path can never crash a run: a failing self-test turns the kernels off on that device, with one warning.

Without a GPU the kernels run in Triton's interpreter, which must be on before Triton is first imported, so each case
runs in a fresh process with TRITON_INTERPRET=1. Failures are injected into the kernels the self-test launches: an
exception (a compile or launch error) and wrong numbers (a miscompiled kernel).
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ggam_layers.kernels import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason='Triton is not installed (or torch < 2.4)')

_SCRIPT = """
import json, logging, torch
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger('ggam_layers').addHandler(Keep())
from ggam_layers import GGAMHead
from ggam_layers.head import fused_self_test
from ggam_layers.kernels import load_ops
ops = load_ops()
real_attend, calls = ops.attend, []
def attend(*args, **kwargs):
    calls.append(1)
    if INJECT == 'raise':
        raise RuntimeError('injected launch failure')
    out = real_attend(*args, **kwargs)
    return (out[0] * 1.5, *out[1:]) if INJECT == 'wrong' else out
ops.attend = attend
result = {'first': fused_self_test('cpu'), 'again': fused_self_test(torch.device('cpu'))}
result['calls_after_tests'] = len(calls)
torch.manual_seed(0)
x = torch.randn(2, 16, 3, 3)
auto = GGAMHead(16, 4, fused='auto')
ref = GGAMHead(16, 4, fused=False)
ref.load_state_dict(auto.state_dict())
result['auto_equals_pytorch'] = bool(torch.equal(auto.forward_ggam(x).logits, ref.forward_ggam(x).logits))
result['auto_unsupported'] = auto.fused_unsupported(x)
try:
    GGAMHead(16, 4, fused=True).forward_ggam(x)
    result['forced'] = 'ran'
except ValueError as e:
    result['forced'] = str(e)
result['calls_at_end'] = len(calls)
result['warnings'] = [m for m in records if 'fused GGAM kernels are off' in m]
print('RESULT ' + json.dumps(result))
"""


def _run(inject: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONWARNINGS='ignore')
    code = f'INJECT = {inject!r}\n' + textwrap.dedent(_SCRIPT)
    # cwd: not the checkout root, so an installed wheel stays the one tested
    proc = subprocess.run([sys.executable, '-c', code], cwd=Path(__file__).resolve().parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith('RESULT '))
    return json.loads(line[len('RESULT '):])


def test_self_test_passes_with_working_kernels():
    r = _run('none')
    assert r['first'] is None and r['again'] is None and r['warnings'] == []
    assert r['calls_after_tests'] == 1  # the self-test ran once and is cached
    assert r['forced'] == 'ran' and r['calls_at_end'] == 2  # fused=True then runs the kernels


@pytest.mark.parametrize('inject, cause', [
    ('raise', 'RuntimeError: injected launch failure'),
    ('wrong', 'disagree with the PyTorch path on logits'),
])
def test_a_failing_self_test_turns_the_fused_path_off_with_one_warning(inject, cause):
    r = _run(inject)
    assert cause in r['first'] and r['again'] == r['first']
    assert r['calls_after_tests'] == 1  # not retried: the device stays on the PyTorch path for the process
    assert len(r['warnings']) == 1 and cause in r['warnings'][0] and 'cpu' in r['warnings'][0]
    assert r['auto_equals_pytorch'] and cause in r['auto_unsupported']
    assert r['forced'].startswith('fused=True, but the fused GGAM kernels cannot run') and cause in r['forced']
    assert r['calls_at_end'] == 1  # neither head launched a kernel after the failure

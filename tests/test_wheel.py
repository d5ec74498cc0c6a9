"""The built wheel ships the embedded pretrained model, and the installed copy loads it with the network off."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(os.environ.get('GGAM_REPO_ROOT') or Path(__file__).resolve().parents[1])
TAG = 'ggam_test_resnet.synthetic'
EMBEDDED = (f'ggam_layers/pretrained/{TAG}.safetensors', f'ggam_layers/pretrained/{TAG}.json')


@pytest.mark.slow
def test_wheel_ships_and_loads_the_embedded_model(tmp_path):
    # build from a copy of the sources, so the shared checkout gets no build/ or *.egg-info
    src = tmp_path / 'src'
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info')
    shutil.copytree(ROOT / 'ggam_layers', src / 'ggam_layers', ignore=ignore)
    for name in ('pyproject.toml', 'README.md', 'LICENSE'):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, src / name)
    dist = tmp_path / 'dist'
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK='1', PIP_NO_INDEX='1')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist),
                    str(src)], check=True, env=env, timeout=300)
    (wheel,) = dist.glob('ggam_layers-*.whl')
    names = zipfile.ZipFile(wheel).namelist()
    for name in EMBEDDED:
        assert name in names, f'{name} is missing from {wheel.name}'
    assert zipfile.ZipFile(wheel).read(EMBEDDED[0]) == (ROOT / EMBEDDED[0]).read_bytes()

    site = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', '--target', str(site),
                    str(wheel)], check=True, env=env, timeout=300)
    code = f"""
import json, sys
from pathlib import Path
import timm, torch
import ggam_layers
site = Path(sys.argv[1]).resolve()
assert Path(ggam_layers.__file__).resolve().is_relative_to(site), ggam_layers.__file__
model = timm.create_model({TAG!r}, pretrained=True).eval()
file = Path(model.pretrained_cfg['file']).resolve()
assert file.is_relative_to(site / 'ggam_layers' / 'pretrained'), file
meta = json.loads(file.with_suffix('.json').read_text())
size = tuple(model.pretrained_cfg['input_size'])
with torch.no_grad():
    logits = model(torch.zeros(1, *size))
print(json.dumps(dict(file=str(file), num_classes=model.num_classes, shape=list(logits.shape),
                      recorded=meta['ggam_layers']['metrics']['test_top1'])))
"""
    # the network is off for huggingface_hub, and nothing but the installed copy of ggam_layers is importable
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', code, str(site)], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result['shape'] == [1, result['num_classes']]

"""Progress output: tqdm bars on a terminal, plain lines without carriage returns in a log file."""
import io
import os
import subprocess
import sys

import pytest

from ggam_layers.train.progress import LineProgress, progress, progress_interval


def test_line_progress_writes_plain_lines_at_the_interval_and_at_the_end():
    buf = io.StringIO()
    bar = LineProgress(range(5), desc='epoch 1/2', interval=0.0, file=buf)
    for i in bar:
        bar.set_postfix(loss=f'{i:.1f}')
    lines = buf.getvalue().splitlines()
    assert len(lines) == 5 and '\r' not in buf.getvalue()
    assert lines[0].startswith('epoch 1/2: 1/5 (20%)') and lines[-1].startswith('epoch 1/2: 5/5 (100%)')
    assert lines[-1].endswith('loss=4.0')
    quiet = io.StringIO()
    for _ in LineProgress(range(5), desc='x', interval=3600.0, file=quiet):
        pass
    assert quiet.getvalue().splitlines() == [quiet.getvalue().splitlines()[0]]  # only the final line
    assert quiet.getvalue().startswith('x: 5/5 (100%)')


def test_progress_is_plain_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, 'stderr', io.StringIO())
    assert isinstance(progress(range(3), desc='d'), LineProgress)
    assert list(progress(range(3), disable=True)) == [0, 1, 2]


def test_progress_interval_is_validated(monkeypatch):
    monkeypatch.setenv('GGAM_PROGRESS_INTERVAL', 'soon')
    with pytest.raises(ValueError, match='GGAM_PROGRESS_INTERVAL'):
        progress_interval()


def test_train_log_file_has_no_carriage_returns(tmp_path):
    """`ggam-layers train ... > log 2>&1`: no tqdm fragments, the per-epoch lines as before, progress lines."""
    log = tmp_path / 'log'
    env = {**os.environ, 'GGAM_PROGRESS_INTERVAL': '0'}
    with open(log, 'wb') as f:
        subprocess.run([sys.executable, '-m', 'ggam_layers', 'train', '--model', 'test_resnet', '--data-arg',
                        'num_classes=4', '--data-arg', 'samples_per_class=6', '--epochs', '2', '--batch-size', '8',
                        '--threads', '1', '--img-size', '32', '--plain', '--output', str(tmp_path / 'run')],
                       stdout=f, stderr=subprocess.STDOUT, env=env, check=True, timeout=300, cwd=tmp_path)
    text = log.read_bytes().decode()
    assert '\r' not in text and '\x1b[' not in text
    assert 'epoch 1/2: 1/3 (33%)' in text and 'epoch 2/2: 3/3 (100%)' in text
    assert not any(line.strip() == '' and i + 1 < len(text.splitlines()) and text.splitlines()[i + 1].strip() == ''
                   for i, line in enumerate(text.splitlines()))  # no runs of blank lines

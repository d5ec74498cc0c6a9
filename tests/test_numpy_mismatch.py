"""torch 2.1 / 2.2 were built against numpy 1: beside numpy 2 (what pip resolves for `ggam-layers torch==2.1.0`
without other pins) `torch.from_numpy` raises 'Numpy is not available' and every image fails to become a tensor.
The command line says so, and what to install, before any work."""
import pytest
import torch

from ggam_layers.cli import main, numpy_problem


def test_the_command_line_names_a_numpy_torch_mismatch(monkeypatch, capsys):
    assert numpy_problem() is None  # this environment's torch and numpy work together

    def unavailable(*args, **kwargs):
        raise RuntimeError('Numpy is not available')

    monkeypatch.setattr(torch, 'from_numpy', unavailable)
    with pytest.raises(SystemExit) as exc:
        main(['eval', '--checkpoint', 'no-such-run'])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f'ggam-layers eval: error: torch {torch.__version__} cannot use numpy' in err
    assert '(Numpy is not available)' in err and 'pip install "numpy<2" (or torch>=2.3)' in err

"""Fault injection (issue 16): unreadable images, damaged or foreign checkpoints, refused runs, interruptions, a full
disk and garbage in the dataset index files.

Every fault is real: broken files written to tmp_path, signals sent with os.kill to a real training process, a write
that fails part-way (RLIMIT_FSIZE: the kernel refuses to grow the file, as on a full disk), a real two-process gloo
job. Each test asserts the message (names the file, says what is wrong and what to do) and that nothing was lost.
"""
import hashlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from ggam_layers._files import TMP_PREFIX, WEIGHTS_NAME, CheckpointError, check_safetensors, load_weights
from ggam_layers.cli import main
from ggam_layers.data import check_image, create_dataset, scan_images
from ggam_layers.data.synthetic import SyntheticFineGrained
from ggam_layers.train import TrainConfig, evaluate, train
from ggam_layers.train.checkpoint import (
    CHECKPOINT_DIR,
    STATE_NAME,
    CheckpointWriteError,
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    save_checkpoint,
)
from ggam_layers.train.signals import InterruptGuard, TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model='test_resnet', img_size=32, epochs=1, batch_size=4, eval_batch_size=8, threads=1, progress=False)
SYN = dict(TINY, dataset_kwargs={'num_classes': 2, 'samples_per_class': 4})
SYN_ARGS = ['--preset', 'synthetic',
            '--model', 'test_resnet', '--img-size', '32', '--batch-size', '4', '--threads', '1', '--no-progress',
            '--data-arg', 'num_classes=2', '--data-arg', 'samples_per_class=4']
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]), OMP_NUM_THREADS='1')


# --- helpers ---------------------------------------------------------------------------------------------------------
def _image(path: Path, seed: int = 0, mode: str = 'RGB', fmt: str = 'JPEG', size=(32, 32)) -> Path:
    """A real image of noise (so that a JPEG is a few KB and half of it is cut inside the compressed data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format=fmt)
    return path


def _break(path: Path, kind: str) -> Path:
    """Turn an image file into a bad one, the ways scraped datasets have them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == 'text':
        path.write_text('<html>404 Not Found</html>')
    elif kind == 'truncated':  # cut inside the compressed data: the header is intact, Image.open succeeds
        data = _image(path, seed=99, size=(128, 128)).read_bytes()
        path.write_bytes(data[:len(data) * 2 // 3])
        with Image.open(path) as img:
            assert img.size == (128, 128)
    elif kind == 'empty':
        path.write_bytes(b'')
    else:
        raise ValueError(kind)
    return path


def _folder(root: Path, n_train: int = 4, n_test: int = 2) -> Path:
    for split, n in (('train', n_train), ('test', n_test)):
        for c in ('a', 'b'):
            for i in range(n):
                _image(root / split / c / f'{i}.jpg', seed=hash((split, c, i)) % 1000)
    return root


def _syn(**kw) -> TrainConfig:
    return TrainConfig.from_preset('synthetic', **{**SYN, **kw})


def _snapshot(root: Path) -> Optional[Dict[str, str]]:
    """Every file under root with its content hash and mtime (None if root does not exist)."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): f'{hashlib.md5(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}'
            for p in sorted(root.rglob('*')) if p.is_file()} | {'.': str(sorted(os.listdir(root)))}


def _same_weights(a: Path, b: Path, atol: float = 0.0, rtol: float = 0.0) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=rtol, msg=k)


def _no_leftovers(out: Path) -> None:
    assert not [p for p in out.rglob('*') if p.name.startswith(TMP_PREFIX)]


# --- 1. bad samples --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', ['text', 'truncated', 'empty'])
def test_bad_image_is_found_and_named(tmp_path, kind):
    bad = _break(tmp_path / 'bad.jpg', kind)
    reason = check_image(str(bad))
    assert reason is not None
    # a file PIL cannot identify, or one whose decoding stops early: the reason says which
    if kind == 'truncated':
        assert reason.startswith('truncated (image file is truncated'), reason
    else:
        assert reason == 'not an image file PIL can read'
    _folder(tmp_path / 'ds')
    shutil.copy(bad, tmp_path / 'ds' / 'train' / 'a' / 'zz_bad.jpg')
    ds = create_dataset('folder', root=tmp_path / 'ds', split='train')
    clean, report = scan_images(ds, max_bad_fraction=0.5, name='folder train')
    assert len(ds) == 9 and len(clean) == 8 and report.skipped == 1
    assert report.bad[0].path.endswith('zz_bad.jpg') and report.bad[0].reason == reason
    assert clean.num_classes == 2 and clean.class_names == ['a', 'b']
    assert all(clean[i][0].size == (32, 32) for i in range(len(clean)))  # every kept sample loads


@pytest.mark.parametrize('mode,fmt', [('L', 'JPEG'), ('RGBA', 'PNG'), ('CMYK', 'JPEG'), ('P', 'PNG'), ('I;16', 'PNG')])
def test_unusual_but_valid_images_are_not_bad(tmp_path, mode, fmt):
    assert check_image(str(_image(tmp_path / f'x.{fmt.lower()}', mode=mode, fmt=fmt))) is None


def test_training_skips_bad_images_and_reports_them(tmp_path, caplog):
    root = _folder(tmp_path / 'ds', n_train=6)
    bad_train = _break(root / 'train' / 'b' / 'cut.jpg', 'truncated')
    bad_test = _break(root / 'test' / 'a' / 'page.jpg', 'text')
    out = tmp_path / 'run'
    with caplog.at_level('WARNING'):
        result = train(TrainConfig.from_preset('synthetic', **TINY, dataset='folder', data_root=str(root),
                                               max_bad_fraction=0.25,
                                   output=str(out)))
    warned = caplog.text
    assert str(bad_train) in warned and str(bad_test) in warned and 'skipping unreadable image' in warned
    assert result['finished'] and result['skipped_train_images'] == 1 and result['skipped_eval_images'] == 1
    import json
    saved = json.loads((out / 'results.json').read_text())
    assert saved['skipped_train_images'] == 1 and saved['skipped_eval_images'] == 1
    assert {f['path'] for f in saved['skipped_files']} == {str(bad_train), str(bad_test)}
    res = evaluate(str(out), progress=False)  # eval skips the same file and says so
    assert res['count'] == 4 and res['skipped_images'] == 1 and res['top1'] == result['test_top1']


def test_strict_data_stops_at_the_first_bad_file(tmp_path):
    root = _folder(tmp_path / 'ds')
    bad = _break(root / 'train' / 'a' / '0.jpg', 'truncated')
    out = tmp_path / 'run'
    with pytest.raises(ValueError, match=f'{bad}.*truncated.*--strict-data'):
        train(TrainConfig.from_preset('synthetic', **TINY, dataset='folder', data_root=str(root), strict_data=True,
                                      output=str(out)))
    assert not out.exists()


def test_a_broken_dataset_stops_the_run(tmp_path):
    root = _folder(tmp_path / 'ds', n_train=6)
    for i in range(3):
        _break(root / 'train' / 'a' / f'{i}.jpg', 'empty')
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'notes.txt').write_text('keep me')
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r'3 of 12 images \(25.0%\) are unreadable.*max_bad_fraction=0.05.*broken'):
        train(TrainConfig.from_preset('synthetic', **TINY, dataset='folder', data_root=str(root), output=str(out),
                                      overwrite=True))
    assert _snapshot(out) == before


def _cub(root: Path, n: int = 4) -> Path:
    base = root / 'CUB_200_2011'
    (base / 'images').mkdir(parents=True)
    (base / 'classes.txt').write_text('1 001.A\n2 002.B\n')
    (base / 'images.txt').write_text(''.join(f'{i} {"001.A" if i % 2 else "002.B"}/{i}.jpg\n' for i in range(1, n + 1)))
    (base / 'image_class_labels.txt').write_text(''.join(f'{i} {2 - i % 2}\n' for i in range(1, n + 1)))
    (base / 'train_test_split.txt').write_text(''.join(f'{i} 1\n' for i in range(1, n + 1)))
    for i in range(1, n + 1):
        _image(base / 'images' / ('001.A' if i % 2 else '002.B') / f'{i}.jpg', seed=i)
    return base / 'images' / '002.B' / '2.jpg'


def _aircraft(root: Path, n: int = 4) -> Path:
    data = root / 'fgvc-aircraft-2013b' / 'data'
    data.mkdir(parents=True)
    (data / 'variants.txt').write_text('707-320\nA300B4\n')
    (data / 'images_variant_train.txt').write_text(
        ''.join(f'{1000 + i} {"707-320" if i % 2 else "A300B4"}\n' for i in range(n)))
    for i in range(n):
        _image(data / 'images' / f'{1000 + i}.jpg', seed=i)
    return data / 'images' / '1001.jpg'


def _cars_devkit(root: Path, n: int = 4) -> Path:
    sio = pytest.importorskip('scipy.io')
    base = root / 'stanford_cars'
    (base / 'devkit').mkdir(parents=True)
    sio.savemat(base / 'devkit' / 'cars_meta.mat', {'class_names': np.array(['Car A', 'Car B'], dtype=object)})
    annos = np.array([(f'{k + 1:05d}.jpg', 1 + k % 2) for k in range(n)], dtype=[('fname', 'O'), ('class', 'O')])
    sio.savemat(base / 'devkit' / 'cars_train_annos.mat', {'annotations': annos})
    for k in range(n):
        _image(base / 'cars_train' / f'{k + 1:05d}.jpg', seed=k)
    return base / 'cars_train' / '00002.jpg'


def _cars_folder(root: Path, n: int = 4) -> Path:
    for k in range(n):
        _image(root / 'train' / ('Car A' if k % 2 else 'Car B') / f'{k}.jpg', seed=k)
    return root / 'train' / 'Car A' / '1.jpg'


def _pets(root: Path, n: int = 4) -> Path:
    base = root / 'oxford-iiit-pet'
    (base / 'annotations').mkdir(parents=True)
    rows = [(f'Abyssinian_{k}', 1, 1) if k % 2 else (f'great_pyrenees_{k}', 2, 2) for k in range(n)]
    (base / 'annotations' / 'trainval.txt').write_text(''.join(f'{i} {c} {s} {c}\n' for i, c, s in rows))
    for k, (i, _, _) in enumerate(rows):
        _image(base / 'images' / f'{i}.jpg', seed=k)
    return base / 'images' / 'Abyssinian_1.jpg'


def _plain_folder(root: Path, n: int = 4) -> Path:
    for k in range(n):
        _image(root / 'train' / ('x' if k % 2 else 'y') / f'{k}.jpg', seed=k)
    return root / 'train' / 'x' / '1.jpg'


READERS = {'cub': _cub, 'aircraft': _aircraft, 'cars': _cars_folder, 'cars-devkit': _cars_devkit, 'pets': _pets,
           'folder': _plain_folder}


@pytest.mark.parametrize('reader', list(READERS))
def test_every_reader_skips_or_stops_at_a_bad_file(tmp_path, reader):
    """Flowers-102 is not here: torchvision checks its .mat files against the official md5 sums, so it cannot be
    built from a test layout; it exposes its files as Aircraft does (`_image_files`)."""
    bad = READERS[reader](tmp_path)
    _break(bad, 'truncated')
    ds = create_dataset(reader.split('-')[0], root=tmp_path, split='train')
    assert len(ds) == 4
    clean, report = scan_images(ds, max_bad_fraction=0.3, name=reader)
    assert len(clean) == 3 and [b.path for b in report.bad] == [str(bad)]
    assert clean.num_classes == 2 and {clean[i][1] for i in range(3)} <= {0, 1}
    with pytest.raises(ValueError, match=f'{reader}: image {bad} is unreadable'):
        scan_images(ds, strict=True, name=reader)
    with pytest.raises(ValueError, match='1 of 4 images .* unreadable'):
        scan_images(ds, max_bad_fraction=0.2, name=reader)


# --- 2. damaged or foreign checkpoints -------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('faults') / 'run'
    train(_syn(epochs=2, output=str(out)))
    return out


def _damage(path: Path, kind: str) -> str:
    """Damage a weights file in place; returns the words the error must use."""
    data = path.read_bytes()
    path.unlink()  # OUT/model.safetensors is a hard link to the newest checkpoint's: leave that one alone
    if kind == 'truncated':
        path.write_bytes(data[:len(data) // 2])
        return 'is truncated'
    if kind == 'header-only':
        path.write_bytes(data[:6])
        return 'is truncated'
    if kind == 'empty':
        path.write_bytes(b'')
        return 'is empty'
    if kind == 'pickle':
        torch.save({'state_dict': {'w': torch.zeros(2)}}, path)
        return 'torch.save file.*not safetensors.*safetensors.torch.save_file'
    if kind == 'text':
        path.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n')  # an LFS pointer
        return 'not a safetensors file'
    if kind == 'architecture':
        save_file({'weight': torch.zeros(3, 3)}, str(path))
        return 'another architecture'
    raise ValueError(kind)


DAMAGES = ['truncated', 'header-only', 'empty', 'pickle', 'text', 'architecture']


def _load_eval(d: Path, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(['eval', '--checkpoint', str(d), '--no-progress'])
    assert e.value.code == 2
    return capsys.readouterr().err


def _load_publish(d: Path, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(['publish', str(d), '--repo-id', 'me/model', '--dry-run', str(d.parent / 'pub')])
    assert e.value.code == 2
    assert not (d.parent / 'pub').exists()
    return capsys.readouterr().err


def _load_cam(d: Path, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(['cam', 'synthetic:test:0', '--model', str(d), '--out', str(d.parent / 'cam.png')])
    assert e.value.code == 2
    assert not (d.parent / 'cam.png').exists()
    return capsys.readouterr().err


def _raises(fn):
    def load(d: Path, capsys) -> str:
        with pytest.raises(ValueError) as e:  # CheckpointError, or load_model's explanation of a key mismatch
            fn(d)
        return str(e.value)
    return load


def _load_model(d: Path) -> None:
    from ggam_layers.hub import load_model
    load_model(d)


def _hub_checkpoint(d: Path) -> None:
    from ggam_layers.hub import load_checkpoint as hub_load_checkpoint
    hub_load_checkpoint(d)


LOADERS = {
    'eval-cli': _load_eval, 'publish-cli': _load_publish, 'cam-cli': _load_cam,
    'evaluate': _raises(lambda d: evaluate(str(d), progress=False)), 'load_model': _raises(_load_model),
    'hub.load_checkpoint': _raises(_hub_checkpoint),
}


@pytest.mark.parametrize('kind', DAMAGES)
@pytest.mark.parametrize('loader', list(LOADERS))
def test_damaged_weights_give_one_clear_error_on_every_load_path(run_dir, tmp_path, capsys, kind, loader):
    d = tmp_path / 'run'
    shutil.copytree(run_dir, d)
    words = _damage(d / WEIGHTS_NAME, kind)
    before = _snapshot(d)
    message = LOADERS[loader](d, capsys)
    assert str(d / WEIGHTS_NAME) in message, message
    assert pytest.importorskip('re').search(words, message), message
    assert 'Traceback' not in message
    if kind != 'architecture':
        assert 'restore' in message or 'convert' in message or 'model.safetensors written by' in message
    assert _snapshot(d) == before  # a failed load changes nothing


@pytest.mark.parametrize('kind', DAMAGES)
def test_damaged_epoch_checkpoint_gives_one_clear_error(run_dir, tmp_path, kind):
    d = tmp_path / 'run'
    shutil.copytree(run_dir, d)
    ckpt = d / CHECKPOINT_DIR / 'epoch-0002'
    words = _damage(ckpt / WEIGHTS_NAME, kind)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=words) as e:
        load_training_state(ckpt, model)
    assert str(ckpt / WEIGHTS_NAME) in str(e.value)
    from ggam_layers.hub import load_checkpoint as hub_load_checkpoint
    with pytest.raises(CheckpointError, match=words):
        hub_load_checkpoint(ckpt)  # `ggam-layers publish RUN/checkpoints/epoch-0002`


def test_damaged_training_state_and_config_are_named(run_dir, tmp_path):
    d = tmp_path / 'run'
    shutil.copytree(run_dir, d)
    (d / CHECKPOINT_DIR / 'epoch-0002' / STATE_NAME).write_bytes(b'\x80\x04garbage')
    with pytest.raises(CheckpointError, match=f'{d / CHECKPOINT_DIR / "epoch-0002" / STATE_NAME} is damaged'):
        load_training_state(d / CHECKPOINT_DIR / 'epoch-0002')
    (d / 'config.json').write_text('{"architecture": "ggam", ')
    with pytest.raises(ValueError, match=f'{d / "config.json"} is damaged'):
        evaluate(str(d), progress=False)


def test_weights_of_another_model_name_what_differs(run_dir):
    model = torch.nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match=r'another architecture than Linear.*keys missing: weight, bias'):
        load_weights(model, run_dir / WEIGHTS_NAME)
    assert torch.isfinite(model.weight).all()  # untouched (a failed load copies nothing)


@pytest.mark.parametrize('kind', ['truncated', 'pickle', 'architecture'])
def test_damaged_or_foreign_pretrained_file_refuses_the_run(run_dir, tmp_path, kind):
    f = tmp_path / ('w.pth' if kind == 'pickle' else 'w.safetensors')
    shutil.copy(run_dir / WEIGHTS_NAME, f)
    words = _damage(f, kind)
    if kind == 'architecture':
        words = 'does not fit backbone'
    out = tmp_path / 'run'
    with pytest.raises(ValueError, match=words) as e:
        train(_syn(pretrained_file=str(f), output=str(out)))
    assert str(f) in str(e.value)
    assert not out.exists()


@pytest.mark.parametrize('part', [WEIGHTS_NAME, STATE_NAME])
def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, capsys, part):
    train(_syn(epochs=3, output=str(tmp_path / 'full')))
    out = tmp_path / 'part'
    train(_syn(epochs=3, stop_after=2, output=str(out)))
    damaged = out / CHECKPOINT_DIR / 'epoch-0002' / part
    damaged.write_bytes(damaged.read_bytes()[:100])  # in place: OUT/model.safetensors, its hard link, too
    capsys.readouterr()
    result = train(_syn(epochs=3, resume=True, output=str(out)))
    err = capsys.readouterr().err
    assert 'resuming from epoch-0001, the newest intact checkpoint: epoch-0002 damaged' in err
    assert result['finished'] and result['epochs_done'] == 3
    _same_weights(tmp_path / 'full' / WEIGHTS_NAME, out / WEIGHTS_NAME)


def test_resume_with_every_checkpoint_damaged_names_them(tmp_path):
    out = tmp_path / 'run'
    train(_syn(epochs=3, stop_after=2, output=str(out)))
    for ckpt in list_checkpoints(out):
        (ckpt / STATE_NAME).write_bytes(b'')
    before = _snapshot(out)
    with pytest.raises(CheckpointError, match='every checkpoint of .* is damaged.*epoch-0002.*epoch-0001'):
        train(_syn(epochs=3, resume=True, output=str(out)))
    assert _snapshot(out) == before


# --- 3. validate, then touch the disk --------------------------------------------------------------------------------
REFUSALS = {
    'batch size': (dict(batch_size=64), 'batch_size 64 is larger than the training set \\(8 images\\)'),
    'model name': (dict(model='resnet_nope'), "model 'resnet_nope' is not a timm backbone; did you mean"),
    'setting': (dict(lr=-1.0), 'lr must be > 0'),
    'data root': (dict(dataset='folder', data_root='/nonexistent/ggam', dataset_kwargs={}), 'is not a directory'),
    'data layout': (dict(dataset='cub', data_root='.', dataset_kwargs={}), 'images.txt'),
    'pretrained file': (dict(pretrained_file='/nonexistent/w.safetensors'), 'does not exist'),
}


@pytest.mark.parametrize('existing', [False, True])
@pytest.mark.parametrize('case', list(REFUSALS))
def test_a_refused_run_leaves_the_output_directory_as_it_was(tmp_path, monkeypatch, case, existing):
    monkeypatch.chdir(tmp_path)
    overrides, message = REFUSALS[case]
    out = tmp_path / 'run'
    if existing:
        out.mkdir()
        (out / 'notes.txt').write_text('keep me')
    before = _snapshot(out)
    train_ds = SyntheticFineGrained('train', num_classes=2, samples_per_class=4, image_size=32)
    data = {} if 'data_root' in overrides else dict(train_dataset=train_ds)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train(TrainConfig.from_preset('synthetic', **{**SYN, **overrides, 'output': str(out),
                                      'overwrite': existing}), **data)
    assert _snapshot(out) == before
    assert not train_ds._images  # nothing was generated


def test_cli_corrected_command_runs_after_a_refusal(tmp_path, capsys):
    out = tmp_path / 'run'
    with pytest.raises(SystemExit) as e:
        main(['train', *SYN_ARGS, '--epochs', '1', '--batch-size', '64', '--output', str(out)])
    assert e.value.code == 2 and 'batch_size 64 is larger than the training set' in capsys.readouterr().err
    assert not out.exists()
    assert main(['train', *SYN_ARGS, '--epochs', '1', '--output', str(out)]) == 0  # no --overwrite needed


# --- 4. interruptions ------------------------------------------------------------------------------------------------
def test_a_signal_waits_for_the_checkpoint_being_written():
    old = signal.getsignal(signal.SIGTERM)
    with InterruptGuard() as guard:
        with pytest.raises(TrainingInterrupted) as e:
            with guard.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                completed = True  # the block was not cut short
        assert completed and e.value.signum == signal.SIGTERM
        with pytest.raises(TrainingInterrupted):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == old  # handlers restored


def _start(out: Path, epochs: int = 30, extra=()) -> subprocess.Popen:
    cmd = [sys.executable, '-m', 'ggam_layers', 'train', *SYN_ARGS, '--epochs', str(epochs), '--output', str(out),
           *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.time() + 300
    while latest_checkpoint(out) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_the_run_cleanly_and_resume_matches_an_uninterrupted_run(tmp_path, sig):
    out = tmp_path / 'run'
    proc = _start(out)
    try:
        _wait_for_checkpoint(proc, out)
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err[-2000:]
    done = latest_checkpoint(out)
    n = int(done.name.split('-')[1])
    assert f'interrupted by {sig.name}: the last complete checkpoint is {done} (epoch {n})' in err
    assert f'ggam-layers train --resume {out}' in err and 'Traceback' not in err
    _no_leftovers(out)
    check_safetensors(done / WEIGHTS_NAME) and load_training_state(done)  # complete and readable
    result = train(_syn(epochs=30, stop_after=n + 1, resume=True, output=str(out)))
    assert result['epochs_done'] == n + 1
    train(_syn(epochs=30, stop_after=n + 1, output=str(tmp_path / 'ref')))
    _same_weights(out / WEIGHTS_NAME, tmp_path / 'ref' / WEIGHTS_NAME)


def _limit_file_size(limit: int):
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    def restore():
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    return restore


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    out = tmp_path / 'run'
    model = torch.nn.Linear(256, 256)  # 257 KB of weights
    save_checkpoint(out, 1, model, {'epoch': 1})
    before = _snapshot(out)
    with torch.no_grad():
        model.weight.add_(1)
    restore = _limit_file_size(100_000)  # the weights file fails part-way, as on a full disk
    try:
        with pytest.raises(CheckpointWriteError) as e:
            save_checkpoint(out, 2, model, {'epoch': 2})
    finally:
        restore()
    msg = str(e.value)
    assert 'could not write checkpoint' in msg and 'File too large' in msg
    assert f'the previous checkpoint {out / CHECKPOINT_DIR / "epoch-0001"} is intact' in msg
    assert f'ggam-layers train --resume {out}' in msg
    assert _snapshot(out) == before  # nothing lost, nothing half-written
    _no_leftovers(out)


@pytest.mark.slow
def test_full_disk_during_training_stops_with_a_clear_error_then_resume_finishes(tmp_path):
    out = tmp_path / 'run'
    assert main(['train', *SYN_ARGS, '--epochs', '2', '--stop-after', '1', '--output', str(out)]) == 0
    ckpt = out / CHECKPOINT_DIR / 'epoch-0001'
    before = _snapshot(ckpt)
    proc = subprocess.run([sys.executable, '-m', 'ggam_layers', 'train', '--resume', str(out), '--no-progress'],
                          env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: _limit_file_size((out / WEIGHTS_NAME).stat().st_size // 2))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f'could not write checkpoint {out / CHECKPOINT_DIR / "epoch-0002"}' in proc.stderr
    assert f'the previous checkpoint {ckpt} is intact' in proc.stderr and 'Traceback' not in proc.stderr
    assert [p.name for p in list_checkpoints(out)] == ['epoch-0001'] and _snapshot(ckpt) == before
    _no_leftovers(out)
    assert train(_syn(epochs=2, resume=True, output=str(out)))['finished']
    train(_syn(epochs=2, output=str(tmp_path / 'ref')))
    _same_weights(out / WEIGHTS_NAME, tmp_path / 'ref' / WEIGHTS_NAME)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _children(pid: int):
    """Processes whose parent is `pid` (from /proc, Linux)."""
    kids = []
    for d in Path('/proc').iterdir():
        if d.name.isdigit():
            try:
                stat = (d / 'stat').read_text()
            except OSError:
                continue
            if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _rank_of(pid: int) -> Optional[int]:
    try:
        env = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
    except OSError:
        return None
    for kv in env:
        if kv.startswith(b'RANK='):
            return int(kv[5:])
    return None


DDP = dict(model='test_convnext', img_size=32, batch_size=8, eval_batch_size=8, opt='sgd', lr=0.05, threads=1,
           progress=False, dataset_kwargs={'num_classes': 4, 'samples_per_class': 8})
DDP_ARGS = ['--preset', 'synthetic',
            '--model', 'test_convnext', '--img-size', '32', '--batch-size', '8', '--eval-batch-size', '8',
            '--opt', 'sgd', '--lr', '0.05', '--threads', '1', '--no-progress', '--data-arg', 'num_classes=4',
            '--data-arg', 'samples_per_class=8']


def _torchrun(args, **kw) -> subprocess.Popen:
    env = dict(ENV, GLOO_SOCKET_IFNAME='lo') if sys.platform.startswith('linux') else ENV
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc-per-node', '2', '--master-addr',
           '127.0.0.1', '--master-port', str(_free_port()), '-m', 'ggam_layers', 'train', *DDP_ARGS, *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='finds the worker processes in /proc')
def test_torchrun_with_one_process_killed_then_resume(tmp_path):
    """Kill rank 1 of a two-process CPU job after its first checkpoint: torchrun stops rank 0 (SIGTERM), the last
    complete checkpoint is intact, and the same torchrun command with --resume ends with the weights one process
    trains (to float32 rounding of the all-reduce, as in test_ddp)."""
    out = tmp_path / 'run'
    epochs = 12
    proc = _torchrun(['--epochs', str(epochs), '--output', str(out)])
    try:
        _wait_for_checkpoint(proc, out)
        workers = {_rank_of(p): p for p in _children(proc.pid)}
        assert 1 in workers, workers
        os.kill(workers[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode != 0
    done = latest_checkpoint(out)
    n = int(done.name.split('-')[1])
    assert n < epochs, 'the job finished before the kill: make it longer'
    assert f'the last complete checkpoint is {done} (epoch {n}). Continue with: ggam-layers train --resume {out}' in err
    _no_leftovers(out)
    check_safetensors(done / WEIGHTS_NAME) and load_training_state(done)
    resumed = _torchrun(['--epochs', str(epochs), '--stop-after', str(n + 1), '--resume', str(out)])
    _, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err[-3000:]
    train(TrainConfig.from_preset('synthetic', **DDP, epochs=epochs, stop_after=n + 1, output=str(tmp_path / 'ref')))
    _same_weights(out / WEIGHTS_NAME, tmp_path / 'ref' / WEIGHTS_NAME, atol=1e-5, rtol=1e-4)


# --- 5. garbage in the index files -----------------------------------------------------------------------------------
GARBAGE = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.text(min_size=1, max_size=40).map(lambda t: t.encode('utf-8', 'surrogatepass')),
    st.tuples(st.integers(-3, 12), st.text(max_size=12)).map(lambda p: f'{p[0]} {p[1]}'.encode('utf-8',
                                                                                                'surrogatepass')),
)


def _is_named(message: str, files) -> bool:
    return 'line ' in message and any(f in message for f in files)


@pytest.fixture(scope='module')
def index_roots(tmp_path_factory):
    root = tmp_path_factory.mktemp('index')
    _cub(root / 'cub')
    _aircraft(root / 'aircraft')
    _pets(root / 'pets')
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(['images.txt', 'train_test_split.txt', 'image_class_labels.txt']),
       line=st.integers(0, 4), garbage=GARBAGE)
def test_cub_index_garbage_names_the_file_and_line(index_roots, name, line, garbage):
    path = index_roots / 'cub' / 'CUB_200_2011' / name
    original = path.read_bytes()
    lines = original.split(b'\n')
    lines[line] = garbage
    path.write_bytes(b'\n'.join(lines))
    try:
        for split in ('train', 'test'):
            try:
                create_dataset('cub', root=index_roots / 'cub', split=split)
            except (ValueError, FileNotFoundError) as e:
                assert _is_named(str(e), ('images.txt', 'train_test_split.txt', 'image_class_labels.txt')), str(e)
    finally:
        path.write_bytes(original)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.integers(0, 3), garbage=GARBAGE)
def test_aircraft_list_garbage_names_the_file_and_line(index_roots, line, garbage):
    path = index_roots / 'aircraft' / 'fgvc-aircraft-2013b' / 'data' / 'images_variant_train.txt'
    _load_with_garbage_line(path, line, garbage, 'aircraft', index_roots / 'aircraft', 'train')


def _load_with_garbage_line(path, line: int, garbage: bytes, name: str, root, split: str) -> None:
    """Replace one line of an index file, build the dataset: it loads, or its error names the file (and line)."""
    original = path.read_bytes()
    lines = original.split(b'\n')
    lines[line] = garbage
    path.write_bytes(b'\n'.join(lines))
    try:
        create_dataset(name, root=root, split=split)
    except (ValueError, FileNotFoundError) as e:
        assert _is_named(str(e), (path.name,)), str(e)
    finally:
        path.write_bytes(original)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.integers(0, 3), garbage=GARBAGE)
def test_pets_list_garbage_names_the_file_and_line(index_roots, line, garbage):
    path = index_roots / 'pets' / 'oxford-iiit-pet' / 'annotations' / 'trainval.txt'
    _load_with_garbage_line(path, line, garbage, 'pets', index_roots / 'pets', 'trainval')


def test_compare_scans_once_and_both_models_report_the_skipped_file(tmp_path, caplog):
    from ggam_layers.train import train_compare
    root = _folder(tmp_path / 'ds', n_train=6)
    bad = _break(root / 'train' / 'a' / 'bad.jpg', 'text')
    with caplog.at_level('WARNING'):
        results = train_compare(TrainConfig.from_preset('synthetic', **TINY, dataset='folder', data_root=str(root),
                                                        max_bad_fraction=0.1,
                                            output=str(tmp_path / 'cmp')))
    assert caplog.text.count(f'skipping unreadable image {bad}') == 1
    for r in results.values():
        assert r['skipped_train_images'] == 1 and r['skipped_files'][0]['path'] == str(bad)

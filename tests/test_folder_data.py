"""Image folders as users keep them: hidden entries (.ipynb_checkpoints, .DS_Store, ._name.jpg) are neither classes
nor images in training, eval and predict; a data set with fewer than two classes is refused before any work."""
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ggam_layers.train.build as build_module
from ggam_layers.cli import main
from ggam_layers.data import create_dataset
from ggam_layers.predict import collect_images
from ggam_layers.train import TrainConfig, train, train_compare

TINY = dict(model='test_resnet', img_size=32, epochs=1, batch_size=4, eval_batch_size=8, threads=1, progress=False)
ARGS = ['--preset', 'synthetic', '--model', 'test_resnet', '--img-size', '32', '--epochs', '1', '--batch-size', '4',
        '--threads', '1', '--no-progress', '--dataset', 'folder']


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _split(folder: Path, classes=('a', 'b'), n: int = 2, hidden: bool = True) -> Path:
    """`folder/<class>/<i>.jpg`, and what Jupyter, macOS and thumbnailers leave beside them."""
    for c in classes:
        for i in range(n):
            _image(folder / c / f'{i}.jpg', seed=hash((str(folder), c, i)) % 1000)
    if hidden:
        (folder / '.ipynb_checkpoints').mkdir()
        (folder / '.ipynb_checkpoints' / 'notes-checkpoint.ipynb').write_text('{}')  # the case: no images
        _image(folder / classes[0] / '.ipynb_checkpoints' / '0-checkpoint.jpg')   # a hidden folder inside a class
        (folder / classes[0] / '._0.jpg').write_bytes(b'\x00\x05\x16\x07AppleDouble')  # macOS resource fork
        _image(folder / classes[-1] / '.thumb.png')                                 # a hidden image file
        (folder / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
    return folder


def _hidden_parts(path: str, root: Path) -> list:
    return [p for p in Path(os.path.relpath(path, root)).parts if p.startswith('.')]


# --- hidden entries --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('split, folder', [('train', 'train'), ('val', 'validation'), ('test', 'test'), ('', '')])
def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path, caplog, split, folder):
    root = tmp_path / 'ds'
    _split(root / folder)
    with caplog.at_level(logging.INFO, logger='ggam_layers'):
        ds = create_dataset('folder', root=root, split=split)
    assert ds.class_names == ['a', 'b'] and ds.num_classes == 2
    assert len(ds) == 4 and not [p for p, _ in ds.samples if _hidden_parts(p, root)]
    assert f"folder: '{root / folder}': ignored 4 hidden entries" in caplog.text
    assert '.ipynb_checkpoints' in caplog.text


def test_a_split_with_only_hidden_folders_names_them(tmp_path):
    (tmp_path / 'train' / '.ipynb_checkpoints').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r'holds no class folders.*only hidden ones: \.ipynb_checkpoints'):
        create_dataset('folder', root=tmp_path, split='train')


def test_predict_folders_skip_hidden_entries_but_named_files_are_read(tmp_path, caplog):
    root = _split(tmp_path / 'images')
    with caplog.at_level(logging.INFO, logger='ggam_layers'):
        paths = collect_images(root)
    assert sorted(os.path.relpath(p, root) for p in paths) == ['a/0.jpg', 'a/1.jpg', 'b/0.jpg', 'b/1.jpg']
    assert f"'{root}': ignored 5 hidden entries" in caplog.text
    named = root / 'b' / '.thumb.png'
    assert collect_images([named]) == [str(named)]  # a file given by name is the user's choice
    hidden_root = _split(tmp_path / '.cache' / 'images', hidden=False)
    assert len(collect_images(hidden_root)) == 4  # only what lies below the given folder is filtered


def test_stanford_dogs_breed_folders_skip_hidden_ones(tmp_path, caplog):
    for folder in ('n02085620-Chihuahua', 'n02085782-Japanese_spaniel'):
        _image(tmp_path / 'Images' / folder / 'x.jpg')
    (tmp_path / 'Images' / '.ipynb_checkpoints').mkdir()
    for split in ('train', 'test'):
        (tmp_path / f'{split}_list.txt').write_text('n02085620-Chihuahua/x.jpg\nn02085782-Japanese_spaniel/x.jpg\n')
    with caplog.at_level(logging.INFO, logger='ggam_layers'):
        ds = create_dataset('dogs', root=tmp_path, split='train')
    assert ds.class_names == ['Chihuahua', 'Japanese_spaniel'] and ds.targets == [0, 1]
    assert 'ignored 1 hidden entry' in caplog.text


@pytest.mark.slow
def test_train_eval_and_predict_on_folders_with_hidden_entries(tmp_path, capsys, caplog):
    """The issue's case: `train/.ipynb_checkpoints/` stopped the run ('Found no valid file for the classes
    .ipynb_checkpoints'); the hidden entries of every split are passed over and counted."""
    root = tmp_path / 'ds'
    _split(root / 'train', n=4)
    _split(root / 'test')
    out = tmp_path / 'run'
    with caplog.at_level(logging.INFO, logger='ggam_layers'):
        assert main(['train', *ARGS, '--data-root', str(root), '--output', str(out)]) == 0
    assert f"'{root / 'train'}': ignored 4 hidden entries" in caplog.text
    assert f"'{root / 'test'}': ignored 4 hidden entries" in caplog.text
    capsys.readouterr()
    assert main(['eval', '--checkpoint', str(out), '--no-progress']) == 0
    assert '[test, 4 images' in capsys.readouterr().out
    assert main(['predict', str(out), str(root / 'test'), '--topk', '1', '--no-progress']) == 0
    table = capsys.readouterr().out
    assert table.count('.jpg') == 4 and '.thumb' not in table and 'checkpoint' not in table


# --- fewer than two classes ------------------------------------------------------------------------------------------
def _no_scan(*args, **kwargs):
    raise AssertionError('the images were scanned before the class check')


def test_one_class_is_refused_before_any_work(tmp_path, monkeypatch):
    root = tmp_path / 'ds'
    _split(root / 'train', classes=('only_cat',), n=4, hidden=False)
    _split(root / 'test', classes=('only_cat',), hidden=False)
    out = tmp_path / 'run'
    monkeypatch.setattr(build_module, 'scan_images', _no_scan)
    cfg = TrainConfig.from_preset('synthetic', **TINY, dataset='folder', data_root=str(root), output=str(out))
    for run in (train, train_compare):
        with pytest.raises(ValueError, match=f"split 'train' of dataset 'folder' under '{root}' has 1 class: "
                                             "'only_cat': a classifier needs at least two"):
            run(cfg)
        assert not out.exists()


def test_one_class_on_the_command_line_names_the_split_and_class(tmp_path, capsys):
    """The issue's case: one class folder trained to 100% top-1 (cross-entropy 0)."""
    root = tmp_path / 'ds'
    _split(root / 'train', classes=('a',), n=4, hidden=False)
    _split(root / 'test', classes=('a',), hidden=False)
    with pytest.raises(SystemExit) as e:
        main(['train', *ARGS, '--data-root', str(root), '--output', str(tmp_path / 'run')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"split 'train' of dataset 'folder' under '{root}' has 1 class: 'a': a classifier needs at least two" in err
    assert not (tmp_path / 'run').exists()


def test_an_evaluation_split_of_one_class_is_named_too(tmp_path):
    root = tmp_path / 'ds'
    _split(root / 'train', classes=('a', 'b'), n=4, hidden=False)
    _split(root / 'test', classes=('b',), hidden=False)
    cfg = TrainConfig.from_preset('synthetic', **TINY, dataset='folder', data_root=str(root),
                                  output=str(tmp_path / 'r'))
    with pytest.raises(ValueError, match="split 'test' of dataset 'folder' under .* has 1 class: 'b'"):
        train(cfg)

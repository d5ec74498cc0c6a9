"""Image folders as users keep them: hidden entries (.ipynb_checkpoints, .DS_Store, ._name.jpg) are neither classes
nor images in training, eval and predict."""
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ggam_layers.cli import main
from ggam_layers.data import create_dataset
from ggam_layers.predict import collect_images

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

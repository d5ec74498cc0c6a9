"""Tests of the dataset readers (on tiny native layouts with real JPEG files) and the synthetic dataset."""

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import ToTensor

from ggam_layers.data import (
    DATASET_LAYOUTS,
    PART_COLORS,
    Cub2011,
    SyntheticFineGrained,
    create_dataset,
    list_datasets,
)

__all__: List[str] = []


def _jpeg(path: Path, color: Tuple[int, int, int], size: Tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, color).save(path, format='JPEG', quality=90)


def _write(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(f'{line}\n' for line in lines))


def _color(i: int) -> Tuple[int, int, int]:
    return (40 * i % 256, 255 - 30 * i % 256, 90)


# --------------------------------------------------------------------------------------------------------- CUB
CUB_CLASSES = ['001.Black_footed_Albatross', '002.Laysan_Albatross', '003.Sooty_Albatross']
# image id -> (class id 1-based, is_train)
CUB_IMAGES = {1: (1, 1), 2: (1, 0), 3: (2, 1), 4: (2, 1), 5: (3, 0), 6: (3, 1), 7: (2, 0)}


def _cub_path(i: int) -> str:
    cls = CUB_CLASSES[CUB_IMAGES[i][0] - 1]
    return f'{cls}/{cls[4:]}_{i:04d}.jpg'


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    root = tmp_path / 'CUB_200_2011'
    _write(root / 'classes.txt', [f'{i + 1} {c}' for i, c in enumerate(CUB_CLASSES)])
    _write(root / 'images.txt', [f'{i} {_cub_path(i)}' for i in CUB_IMAGES])
    _write(root / 'image_class_labels.txt', [f'{i} {c}' for i, (c, _) in CUB_IMAGES.items()])
    _write(root / 'train_test_split.txt', [f'{i} {t}' for i, (_, t) in CUB_IMAGES.items()])
    for i in CUB_IMAGES:
        _jpeg(root / 'images' / _cub_path(i), _color(i), size=(24 + i, 16))
    return root


def test_cub_splits_labels_and_images(cub_root: Path) -> None:
    train = Cub2011(cub_root, split='train')
    test = Cub2011(cub_root, split='test')
    assert len(train) == 4 and len(test) == 3
    assert train.num_classes == test.num_classes == 3
    assert train.class_names == CUB_CLASSES
    assert train.targets == [0, 1, 1, 2]  # ids 1, 3, 4, 6 (labels 0-based)
    assert test.targets == [0, 2, 1]  # ids 2, 5, 7
    img, label = train[3]
    assert isinstance(img, Image.Image) and img.mode == 'RGB' and img.size == (30, 16)
    assert label == 2
    # parent folder also accepted, through the factory, with a transform; 'val' maps to 'test'
    ds = create_dataset('cub', root=cub_root.parent, split='val', transform=lambda im: im.size)
    assert len(ds) == 3 and ds.num_classes == 3 and ds[0] == ((26, 16), 0)


@pytest.mark.parametrize('missing', ['classes.txt', 'images.txt', 'image_class_labels.txt', 'train_test_split.txt'])
def test_cub_missing_file_is_named(cub_root: Path, missing: str) -> None:
    (cub_root / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing) as info:
        Cub2011(cub_root)
    assert 'images/' in str(info.value)  # the expected layout is shown


def test_cub_missing_image_and_bad_split(cub_root: Path) -> None:
    (cub_root / 'images' / _cub_path(4)).unlink()
    with pytest.raises(FileNotFoundError, match=os.path.basename(_cub_path(4))):
        Cub2011(cub_root, split='train')
    assert len(Cub2011(cub_root, split='test')) == 3  # the other split is intact
    with pytest.raises(ValueError, match='split'):
        Cub2011(cub_root, split='trainval')
    with pytest.raises(FileNotFoundError, match='not a directory'):
        Cub2011(cub_root / 'nope')


# ----------------------------------------------------------------------------------------------- FGVC-Aircraft
AIRCRAFT = {  # image id -> (variant, family, manufacturer, split)
    '0034309': ('707-320', 'Boeing 707', 'Boeing', 'train'),
    '0034958': ('737-200', 'Boeing 737', 'Boeing', 'train'),
    '0037511': ('A300B4', 'A300', 'Airbus', 'train'),
    '0041019': ('707-320', 'Boeing 707', 'Boeing', 'val'),
    '0056978': ('A300B4', 'A300', 'Airbus', 'test'),
    '0062001': ('737-200', 'Boeing 737', 'Boeing', 'test'),
    '1020393': ('Cessna 172', 'Cessna 172', 'Cessna', 'test'),
}


@pytest.fixture
def aircraft_root(tmp_path: Path) -> Path:
    data = tmp_path / 'fgvc-aircraft-2013b' / 'data'
    for level, pos, fname in (
        ('variant', 0, 'variants'),
        ('family', 1, 'families'),
        ('manufacturer', 2, 'manufacturers'),
    ):
        _write(data / f'{fname}.txt', sorted({v[pos] for v in AIRCRAFT.values()}))
        for split in ('train', 'val', 'test'):
            _write(
                data / f'images_{level}_{split}.txt', [f'{i} {v[pos]}' for i, v in AIRCRAFT.items() if v[3] == split]
            )
        lines = [f'{i} {v[pos]}' for i, v in AIRCRAFT.items() if v[3] in ('train', 'val')]
        _write(data / f'images_{level}_trainval.txt', lines)
    for n, i in enumerate(AIRCRAFT):
        _jpeg(data / 'images' / f'{i}.jpg', _color(n))
    return tmp_path


def test_aircraft_levels_and_splits(aircraft_root: Path) -> None:
    ds = create_dataset('aircraft', root=aircraft_root, split='train')
    assert len(ds) == 3 and ds.num_classes == 4
    assert ds.class_names == ['707-320', '737-200', 'A300B4', 'Cessna 172']
    assert [ds[i][1] for i in range(3)] == [0, 1, 2]
    assert isinstance(ds[0][0], Image.Image)
    assert len(create_dataset('aircraft', root=aircraft_root, split='trainval')) == 4
    assert len(create_dataset('aircraft', root=aircraft_root, split='validation')) == 1
    test = create_dataset('fgvc-aircraft', root=aircraft_root / 'fgvc-aircraft-2013b', split='test')
    assert [test[i][1] for i in range(len(test))] == [2, 1, 3]
    fam = create_dataset('aircraft', root=aircraft_root, split='test', annotation_level='manufacturer')
    assert fam.class_names == ['Airbus', 'Boeing', 'Cessna'] and fam.num_classes == 3
    assert [fam[i][1] for i in range(len(fam))] == [0, 1, 2]
    with pytest.raises(ValueError, match='annotation_level'):
        create_dataset('aircraft', root=aircraft_root, annotation_level='model')
    with pytest.raises(ValueError, match='split'):
        create_dataset('aircraft', root=aircraft_root, split='everything')


@pytest.mark.parametrize('missing', ['images_variant_test.txt', 'variants.txt', 'images/0062001.jpg'])
def test_aircraft_missing_file_is_named(aircraft_root: Path, missing: str) -> None:
    (aircraft_root / 'fgvc-aircraft-2013b' / 'data' / missing).unlink()
    with pytest.raises(FileNotFoundError, match=os.path.basename(missing)):
        create_dataset('aircraft', root=aircraft_root, split='test')


def test_aircraft_empty_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match='fgvc-aircraft-2013b') as info:
        create_dataset('aircraft', root=tmp_path)
    assert 'images_<level>_<split>.txt' in str(info.value)


# ------------------------------------------------------------------------------------ Stanford Cars / folders
CARS = {
    'train': {'AM General Hummer SUV 2000': 2, 'Audi R8 Coupe 2012': 3},
    'test': {'AM General Hummer SUV 2000': 1, 'Audi R8 Coupe 2012': 2},
}


def _class_folders(root: Path, spec: Dict[str, Dict[str, int]]) -> None:
    n = 0
    for split, classes in spec.items():
        for cls, count in classes.items():
            for _ in range(count):
                n += 1
                _jpeg(root / split / cls / f'{n:05d}.jpg', _color(n))


def test_cars_folder_layout(tmp_path: Path) -> None:
    _class_folders(tmp_path, CARS)
    train = create_dataset('cars', root=tmp_path, split='train')
    test = create_dataset('stanford_cars', root=tmp_path, split='val')  # no val split: maps to test
    assert len(train) == 5 and len(test) == 3
    assert train.num_classes == test.num_classes == 2
    assert train.class_names == ['AM General Hummer SUV 2000', 'Audi R8 Coupe 2012']
    assert sorted(train[i][1] for i in range(5)) == [0, 0, 1, 1, 1]
    assert isinstance(test[0][0], Image.Image)


def test_cars_devkit_missing_file_is_named(tmp_path: Path) -> None:
    (tmp_path / 'stanford_cars' / 'devkit').mkdir(parents=True)
    (tmp_path / 'stanford_cars' / 'cars_test').mkdir()
    with pytest.raises(FileNotFoundError, match='cars_meta.mat'):
        create_dataset('cars', root=tmp_path, split='test')


def test_cars_devkit_layout(tmp_path: Path) -> None:
    sio = pytest.importorskip('scipy.io')
    base = tmp_path / 'stanford_cars'
    names = np.array(['AM General Hummer SUV 2000', 'Audi R8 Coupe 2012'], dtype=object)
    (base / 'devkit').mkdir(parents=True)
    sio.savemat(base / 'devkit' / 'cars_meta.mat', {'class_names': names})
    annos = np.array([('00001.jpg', 1), ('00002.jpg', 2), ('00003.jpg', 2)], dtype=[('fname', 'O'), ('class', 'O')])
    sio.savemat(base / 'devkit' / 'cars_train_annos.mat', {'annotations': annos})
    for k in range(3):
        _jpeg(base / 'cars_train' / f'{k + 1:05d}.jpg', _color(k))
    ds = create_dataset('cars', root=tmp_path, split='train')
    assert len(ds) == 3 and ds.num_classes == 2 and [ds[i][1] for i in range(3)] == [0, 1, 1]


def test_image_folder_splits_and_errors(tmp_path: Path) -> None:
    _class_folders(tmp_path, {'train': {'cat': 2, 'dog': 1}, 'validation': {'cat': 1, 'dog': 1}})
    train = create_dataset('folder', root=tmp_path, split='train')
    val = create_dataset('imagefolder', root=tmp_path, split='val')  # finds the 'validation' folder
    assert (len(train), len(val)) == (3, 2)
    assert train.class_names == ['cat', 'dog'] and train.num_classes == 2
    assert [val[i][1] for i in range(2)] == [0, 1]
    whole = create_dataset('folder', root=tmp_path / 'train', split='')
    assert len(whole) == 3
    with pytest.raises(FileNotFoundError, match='test'):
        create_dataset('folder', root=tmp_path, split='test')
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='class folders'):
        create_dataset('folder', root=tmp_path / 'empty', split='train')


# ----------------------------------------------------------------------------------------------- pets / flowers
def test_pets_layout(tmp_path: Path) -> None:
    base = tmp_path / 'oxford-iiit-pet'
    ids = {'trainval': [('Abyssinian_1', 1, 1), ('great_pyrenees_12', 2, 2)], 'test': [('Abyssinian_7', 1, 1)]}
    for split, rows in ids.items():
        _write(base / 'annotations' / f'{split}.txt', [f'{i} {c} {s} {c}' for i, c, s in rows])
        for n, (i, _, _) in enumerate(rows):
            _jpeg(base / 'images' / f'{i}.jpg', _color(n))
    ds = create_dataset('pets', root=tmp_path, split='train')  # maps to trainval
    assert len(ds) == 2 and ds.num_classes == 2 and ds.class_names == ['Abyssinian', 'Great Pyrenees']
    assert [ds[i][1] for i in range(2)] == [0, 1]
    (base / 'images' / 'Abyssinian_7.jpg').unlink()
    with pytest.raises(FileNotFoundError, match='Abyssinian_7.jpg'):
        create_dataset('pets', root=tmp_path, split='test')
    (base / 'annotations' / 'test.txt').unlink()
    with pytest.raises(FileNotFoundError, match='test.txt'):
        create_dataset('pets', root=tmp_path, split='test')


def test_flowers_missing_file_is_named(tmp_path: Path) -> None:
    base = tmp_path / 'flowers-102'
    _jpeg(base / 'jpg' / 'image_00001.jpg', (10, 200, 10))
    (base / 'imagelabels.mat').write_bytes(b'not checked before setid.mat')
    with pytest.raises(FileNotFoundError, match='setid.mat'):
        create_dataset('flowers', root=tmp_path)


# ----------------------------------------------------------------------------------------------------- factory
def test_factory_errors() -> None:
    with pytest.raises(ValueError, match='known names') as info:
        create_dataset('imagenet-21k')
    for known in ('synthetic', 'cub', 'aircraft', 'cars', 'flowers', 'pets', 'folder', 'hfds/'):
        assert known in str(info.value)
    with pytest.raises(ValueError, match='root is required'):
        create_dataset('cub')
    with pytest.raises(TypeError, match='name'):
        create_dataset(3)
    assert set(list_datasets()) >= {'synthetic', 'cub', 'aircraft', 'cars', 'flowers', 'pets', 'folder'}
    assert set(DATASET_LAYOUTS) >= {'cub', 'aircraft', 'cars', 'flowers', 'pets', 'folder'}


# -------------------------------------------------------------------------------------------------- synthetic
def _digest(arr: np.ndarray) -> str:
    return hashlib.sha1(arr.tobytes()).hexdigest()


def test_synthetic_default_via_factory() -> None:
    ds = create_dataset(split='val', samples_per_class=2, transform=np.asarray)
    assert isinstance(ds, SyntheticFineGrained) and ds.split == 'val'
    assert len(ds) == 40 and ds.num_classes == 20
    assert len(ds.class_names) == len(set(ds.class_names)) == 20 and ds.classes == ds.label_names
    img, label = ds[21]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and label == 1
    assert len(SyntheticFineGrained('train')) == 2000 and len(SyntheticFineGrained('test')) == 1000
    loader = torch.utils.data.DataLoader(create_dataset('synthetic', split='test', transform=ToTensor()), batch_size=8)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32 and y.tolist() == list(range(8))


def test_synthetic_classes_differ_only_in_parts() -> None:
    ds = SyntheticFineGrained(samples_per_class=1)
    attrs = ds.class_attributes
    pairs = {(a['wing_bar'], a['eye_ring']) for a in attrs}
    assert len(pairs) == 20  # the (wing bar, eye ring) pair identifies the class
    assert all(len({a[k] for a in attrs}) > 1 for k in ('beak', 'crest', 'eye_ring', 'wing_bar'))
    for a in attrs:  # no single attribute identifies a class
        for key in ('wing_bar', 'eye_ring'):
            assert sum(b[key] == a[key] for b in attrs) >= 4


def test_synthetic_determinism_and_seeds() -> None:
    a = SyntheticFineGrained('train', samples_per_class=1, seed=3)
    b = SyntheticFineGrained('train', samples_per_class=1, seed=3, cache=False)
    c = SyntheticFineGrained('train', samples_per_class=1, seed=4)
    for i in (0, 7, 19):
        assert np.array_equal(np.asarray(a[i][0]), np.asarray(b[i][0]))
        assert np.array_equal(a.generate(i)[0], b.generate(i)[0])  # uncached path regenerates identically
        assert a.part_box(i) == b.part_box(i)
        assert not np.array_equal(a.generate(i)[0], c.generate(i)[0])
    assert np.array_equal(a.generate(-1)[0], a.generate(19)[0])
    with pytest.raises(IndexError):
        a.generate(20)


def test_synthetic_splits_are_disjoint() -> None:
    kw = dict(num_classes=10, samples_per_class=6)
    digests = {
        s: {_digest(SyntheticFineGrained(s, **kw).generate(i)[0]) for i in range(60)} for s in ('train', 'val', 'test')
    }
    assert all(len(d) == 60 for d in digests.values())
    assert not digests['train'] & digests['test'] and not digests['train'] & digests['val']
    assert not digests['val'] & digests['test']


def test_synthetic_labels_shapes_and_options() -> None:
    ds = SyntheticFineGrained('test', num_classes=7, samples_per_class=3, image_size=40, seed=1)
    assert len(ds) == 21 and ds.targets == [i % 7 for i in range(21)]
    img, label = ds[9]
    assert isinstance(img, Image.Image) and img.mode == 'RGB' and img.size == (40, 40) and label == 2
    assert ds.materialize().shape == (21, 40, 40, 3)
    # classes are defined independently of the sample seed and the split
    assert ds.class_names == SyntheticFineGrained('train', num_classes=7, seed=9).class_names
    many = SyntheticFineGrained(num_classes=64, samples_per_class=1)
    assert len(set(many.class_names)) == 64
    for kwargs in (
        dict(split='validation'),
        dict(num_classes=1),
        dict(num_classes=65),
        dict(samples_per_class=0),
        dict(image_size=8),
        dict(difficulty=-1.0),
        dict(difficulty=float('nan')),
        dict(num_distractors=float('nan')),
        dict(occlusion_prob=1.5),
        dict(part_scale=0.0),
        dict(part_scale=float('nan')),
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            SyntheticFineGrained(**kwargs)


def _inside(box: Tuple[float, float, float, float], size: int) -> bool:
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), index=st.integers(0, 1999), difficulty=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_synthetic_part_boxes_inside_image(seed: int, index: int, difficulty: float) -> None:
    ds = SyntheticFineGrained('train', seed=seed, difficulty=difficulty, cache=False)
    ann = ds.annotation(index)
    assert ann['label'] == index % 20
    assert set(ann['part_boxes']) == {'beak', 'crest', 'eye_ring', 'wing_bar'}
    for box in (ann['part_box'], ann['object_box'], *ann['part_boxes'].values()):
        assert _inside(box, 64)
    cx, cy = ds.object_center(index)
    assert 0 <= cx <= 64 and 0 <= cy <= 64
    ox0, oy0, ox1, oy1 = ann['object_box']
    assert ox0 <= cx <= ox1 and oy0 <= cy <= oy1
    # the wing bar lies on the body
    wx0, wy0, wx1, wy1 = ann['part_boxes']['wing_bar']
    assert ox0 - 1 <= (wx0 + wx1) / 2 <= ox1 + 1 and oy0 - 1 <= (wy0 + wy1) / 2 <= oy1 + 1


def test_synthetic_parts_are_drawn_where_annotated() -> None:
    """At difficulty 0 (no jitter, noise, occlusion or distractors) the boxes hold the class colours."""
    ds = SyntheticFineGrained('train', samples_per_class=1, difficulty=0.0, image_size=96)
    for i in range(len(ds)):
        img, ann = ds.generate(i)
        attrs = ds.class_attributes[ds.targets[i]]
        for part, key in (('wing_bar', 'wing_bar'), ('eye_ring', 'eye_ring')):
            x0, y0, x1, y1 = (int(round(v)) for v in ann['part_boxes'][part])
            patch = img[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).astype(int)
            dist = np.abs(patch - np.array(PART_COLORS[attrs[key]])).sum(1)
            assert dist.min() < 60, (i, part)

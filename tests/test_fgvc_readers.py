"""NABirds, Stanford Dogs and iNaturalist read from tiny copies of their release layouts, written here with real
image files; a broken layout is refused with the file named."""
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ggam_layers.data import (
    DATASET_LAYOUTS,
    INaturalist,
    NABirds,
    StanfordDogs,
    create_dataset,
    list_datasets,
    sample_paths,
    scan_images,
)


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)  # JPEG or PNG by suffix


def _lines(path: Path, rows) -> None:
    path.write_text(''.join(' '.join(str(v) for v in row) + '\n' for row in rows), encoding='utf-8')


def test_registered_with_their_layouts_and_aliases():
    for name in ('nabirds', 'dogs', 'inat'):
        assert name in list_datasets() and name in DATASET_LAYOUTS
    assert 'hierarchy.txt' in DATASET_LAYOUTS['nabirds'] and 'train_list.mat' in DATASET_LAYOUTS['dogs']
    assert 'train2018.json' in DATASET_LAYOUTS['inat']
    with pytest.raises(ValueError, match="root is required for dataset 'inat'"):
        create_dataset('inaturalist')
    with pytest.raises(ValueError, match="split for dataset 'dogs' must be one of"):
        create_dataset('stanford_dogs', root='.', split='trainval')


# --- NABirds ---------------------------------------------------------------------------------------------------------
# a slice of the real taxonomy: sparse ids, a parent chain, one leaf without images (it gets no label)
NABIRDS_CLASSES = [(0, 'Birds'), (1, 'Ducks, Geese, and Swans'), (22, 'Dabbling Ducks'),
                   (295, 'Wood Duck (Breeding male)'), (296, 'Wood Duck (Female/Eclipse male)'),
                   (313, 'Mallard (Breeding male)'), (400, 'Gadwall (Breeding male)')]
NABIRDS_HIERARCHY = [(1, 0), (22, 1), (295, 22), (296, 22), (313, 22), (400, 22)]


@pytest.fixture
def nabirds(tmp_path):
    base = tmp_path / 'nabirds'
    base.mkdir()
    images, labels, split = [], [], []
    for n, (class_id, is_train) in enumerate([(313, 1), (295, 1), (296, 1), (295, 0), (313, 0), (296, 0), (295, 1)]):
        image_id = str(uuid.UUID(int=n + 1))
        rel = f'{class_id:04d}/{image_id.replace("-", "")}.jpg'
        _image(base / 'images' / rel, n)
        images.append((image_id, rel))
        labels.append((image_id, class_id))
        split.append((image_id, is_train))
    _lines(base / 'images.txt', images)
    _lines(base / 'image_class_labels.txt', labels)
    _lines(base / 'train_test_split.txt', split)
    _lines(base / 'classes.txt', NABIRDS_CLASSES)
    _lines(base / 'hierarchy.txt', NABIRDS_HIERARCHY)
    return tmp_path


def test_nabirds_reads_its_layout(nabirds):
    train = create_dataset('nabirds', root=nabirds, split='train')
    test = create_dataset('na_birds', root=nabirds / 'nabirds', split='val')  # the folder itself; val -> test
    assert isinstance(train, NABirds) and test.split == 'test'
    # the three classes with images, in class-id order; 400 has none
    names = ['Wood Duck (Breeding male)', 'Wood Duck (Female/Eclipse male)', 'Mallard (Breeding male)']
    assert train.class_names == test.class_names == names and train.num_classes == 3
    assert train.class_ids == [295, 296, 313]
    assert train.hierarchy[295] == 22 and train.hierarchy[22] == 1
    assert train.targets == [2, 0, 1, 0] and test.targets == [0, 2, 1]
    img, label = train[0]
    assert isinstance(img, Image.Image) and img.size == (16, 12) and label == 2
    assert sample_paths(train)[0].endswith(os.path.join('images', '0313', f'{uuid.UUID(int=1).hex}.jpg'))
    assert scan_images(train)[1].skipped == 0


def test_nabirds_refuses_a_broken_layout(nabirds):
    base = nabirds / 'nabirds'
    labels = (base / 'image_class_labels.txt').read_text()
    _lines(base / 'image_class_labels.txt', [line.split() for line in labels.splitlines()[:-1]]
           + [(str(uuid.UUID(int=7)), 999)])
    with pytest.raises(ValueError, match=r"image_class_labels\.txt', line 7: image .* has class 999, which .*classes"
                                         r"\.txt' does not list"):
        create_dataset('nabirds', root=nabirds)
    (base / 'image_class_labels.txt').write_text(labels)
    os.remove(base / 'images' / '0295' / f'{uuid.UUID(int=2).hex}.jpg')
    with pytest.raises(FileNotFoundError, match=r"image '.*0295.*\.jpg' listed in '.*images\.txt', line 2"):
        create_dataset('nabirds', root=nabirds)
    assert len(create_dataset('nabirds', root=nabirds, check_files=False)) == 4
    os.remove(base / 'hierarchy.txt')
    with pytest.raises(FileNotFoundError, match=r"NABirds: missing '.*hierarchy\.txt'.\nNABirds layout expected"):
        create_dataset('nabirds', root=nabirds)


# --- Stanford Dogs ---------------------------------------------------------------------------------------------------
DOG_FOLDERS = ['n02085620-Chihuahua', 'n02085782-Japanese_spaniel', 'n02085936-Maltese_dog']


def _dog_lists(root: Path):
    lists = {'train': [], 'test': []}
    for c, folder in enumerate(DOG_FOLDERS):
        wnid = folder.split('-')[0]
        for n in range(3):
            rel = f'{folder}/{wnid}_{100 + n}.jpg'
            _image(root / 'Images' / rel, 10 * c + n)
            lists['test' if n == 2 else 'train'].append((rel, c + 1))
    return lists


def _savemat(path: Path, rows) -> None:
    """A list the way lists.tar holds it: cell arrays file_list / annotation_list (N x 1) and labels (N x 1)."""
    scipy_io = pytest.importorskip('scipy.io')
    files = np.empty((len(rows), 1), dtype=object)
    annotations = np.empty((len(rows), 1), dtype=object)
    for i, (rel, _) in enumerate(rows):
        files[i, 0] = rel
        annotations[i, 0] = rel[:-len('.jpg')]
    labels = np.array([[float(label)] for _, label in rows])
    scipy_io.savemat(str(path), {'file_list': files, 'annotation_list': annotations, 'labels': labels})


def test_dogs_reads_the_mat_lists(tmp_path):
    lists = _dog_lists(tmp_path)
    for split, rows in lists.items():
        _savemat(tmp_path / f'{split}_list.mat', rows)
    train = create_dataset('stanford_dogs', root=tmp_path, split='train')
    test = create_dataset('dogs', root=tmp_path, split='test')
    assert isinstance(train, StanfordDogs) and train.list_file.endswith('train_list.mat')
    assert train.class_names == ['Chihuahua', 'Japanese_spaniel', 'Maltese_dog']
    assert train.wnids == ['n02085620', 'n02085782', 'n02085936']
    assert train.targets == [0, 0, 1, 1, 2, 2] and test.targets == [0, 1, 2]
    img, label = test[1]
    assert img.size == (16, 12) and label == 1
    assert sample_paths(test)[1] == str(tmp_path / 'Images' / 'n02085782-Japanese_spaniel' / 'n02085782_102.jpg')

    bad = [(rel, 3 if i == 0 else label) for i, (rel, label) in enumerate(lists['test'])]
    _savemat(tmp_path / 'test_list.mat', bad)
    with pytest.raises(ValueError, match=r"test_list\.mat', entry 1: .*Chihuahua.* has label 3, but its folder is "
                                         'breed 1'):
        create_dataset('dogs', root=tmp_path, split='test')
    (tmp_path / 'train_list.mat').write_bytes(b'not a MATLAB file')
    with pytest.raises(ValueError, match=r"train_list\.mat' is not a readable MATLAB file"):
        create_dataset('dogs', root=tmp_path, split='train')


def test_dogs_reads_text_lists_and_refuses_a_broken_layout(tmp_path):
    lists = _dog_lists(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"Stanford Dogs: missing '.*train_list\.mat' \(or '.*train_list\.txt'"
                                                r"\)\.\nStanford Dogs layout"):
        create_dataset('dogs', root=tmp_path)
    for split, rows in lists.items():
        (tmp_path / f'{split}_list.txt').write_text(''.join(f'{rel}\n' for rel, _ in rows))
    train = create_dataset('dogs', root=tmp_path)
    assert train.list_file.endswith('train_list.txt') and train.targets == [0, 0, 1, 1, 2, 2]
    assert train.class_names == ['Chihuahua', 'Japanese_spaniel', 'Maltese_dog']

    with (tmp_path / 'test_list.txt').open('a') as f:
        f.write('n02099999-Unknown_breed/n02099999_1.jpg\n')
    with pytest.raises(ValueError, match=r"test_list\.txt', entry 4: .*Unknown_breed.* is not in a breed folder"):
        create_dataset('dogs', root=tmp_path, split='test')
    os.remove(tmp_path / 'Images' / DOG_FOLDERS[0] / 'n02085620_100.jpg')
    with pytest.raises(FileNotFoundError, match=r"n02085620_100\.jpg' listed in '.*train_list\.txt', entry 1"):
        create_dataset('dogs', root=tmp_path)
    os.rename(tmp_path / 'Images', tmp_path / 'images')
    if not (tmp_path / 'Images').exists():  # a case-sensitive file system
        with pytest.raises(FileNotFoundError, match=r"Stanford Dogs: missing '.*Images'"):
            create_dataset('dogs', root=tmp_path)


# --- iNaturalist -----------------------------------------------------------------------------------------------------
INAT_CATEGORIES = [
    {'id': 0, 'name': 'Quercus robur', 'supercategory': 'Plantae', 'kingdom': 'Plantae'},
    {'id': 1, 'name': 'Danaus plexippus', 'supercategory': 'Insecta', 'kingdom': 'Animalia'},
    {'id': 2, 'name': 'Cardinalis cardinalis', 'supercategory': 'Aves', 'kingdom': 'Animalia'},
]


def _inat_json(root: Path, name: str, folder: str, labels, start_id: int = 0, layout: str = '2018') -> Path:
    """A COCO-style annotation file like the release's, with its images (file_name relative to root)."""
    images, annotations = [], []
    for n, cid in enumerate(labels):
        image_id = start_id + n
        cat = INAT_CATEGORIES[cid]
        sub = f"{cat['supercategory']}/{cid}" if layout == '2018' else f"{cid:05d}_{cat['name'].replace(' ', '_')}"
        file_name = f'{folder}/{sub}/{uuid.UUID(int=image_id + 1).hex}.jpg'
        _image(root / file_name, image_id)
        images.append({'id': image_id, 'file_name': file_name, 'width': 16, 'height': 12, 'license': 0})
        annotations.append({'id': image_id, 'image_id': image_id, 'category_id': cid})
    data = {'info': {'year': int(layout)}, 'images': images, 'annotations': annotations,
            'categories': INAT_CATEGORIES, 'licenses': []}
    path = root / name
    path.write_text(json.dumps(data))
    return path


def test_inat_reads_the_release_json(tmp_path):
    _inat_json(tmp_path, 'train2018.json', 'train_val2018', [2, 0, 1, 1])
    _inat_json(tmp_path, 'val2018.json', 'train_val2018', [0, 2], start_id=100)
    train = create_dataset('inat', root=tmp_path, split='train')
    val = create_dataset('inaturalist', root=tmp_path, split='test')  # the test set has no labels: val
    assert isinstance(train, INaturalist) and train.version == '2018' and val.split == 'val'
    assert train.class_names == ['Quercus robur', 'Danaus plexippus', 'Cardinalis cardinalis']
    assert train.supercategories == ['Plantae', 'Insecta', 'Aves'] and train.category_ids == [0, 1, 2]
    assert train.targets == [2, 0, 1, 1] and val.targets == [0, 2]
    img, label = val[1]
    assert img.size == (16, 12) and label == 2
    assert sample_paths(val)[0] == str(tmp_path / 'train_val2018' / 'Plantae' / '0' / f'{uuid.UUID(int=101).hex}.jpg')

    # a 2021 train_mini beside it: the version must be named then for 'train'; 'train_mini' is 2021's only
    _inat_json(tmp_path, 'train_mini.json', 'train_mini', [1, 2], layout='2021')
    _inat_json(tmp_path, 'train.json', 'train', [0], start_id=50, layout='2021')
    mini = create_dataset('inat', root=tmp_path, split='train_mini')
    assert mini.version == '2021' and mini.targets == [1, 2]
    assert create_dataset('inat', root=tmp_path, split='train', version='2021').targets == [0]
    with pytest.raises(ValueError, match=r'holds the train annotations of several releases \(2018, 2021\)'):
        create_dataset('inat', root=tmp_path, split='train')
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val'\) for iNaturalist 2018"):
        INaturalist(tmp_path, split='train_mini', version='2018')


def test_inat_refuses_a_broken_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no annotation file for split 'train' .*train2017\.json, "
                                                r'train2018\.json, train2019\.json, train\.json'):
        create_dataset('inat', root=tmp_path)
    path = _inat_json(tmp_path, 'val2019.json', 'train_val2019', [0, 1])
    data = json.loads(path.read_text())
    data['annotations'][1]['category_id'] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"val2019\.json': annotations\[1\] has category_id 7, which 'categories' "
                                         'does not list'):
        create_dataset('inat', root=tmp_path, split='val')
    del data['annotations']
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"val2019\.json' has no 'annotations' list \(a test set: it has no labels\)"):
        create_dataset('inat', root=tmp_path, split='val')
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"val2019\.json' is not valid JSON"):
        create_dataset('inat', root=tmp_path, split='val')
    path = _inat_json(tmp_path, 'val2019.json', 'train_val2019', [0, 1])
    missing = tmp_path / json.loads(path.read_text())['images'][1]['file_name']
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match=rf"image '{missing}' listed in '.*val2019\.json', images\[1\] is "
                                                'missing'):
        create_dataset('inat', root=tmp_path, split='val')

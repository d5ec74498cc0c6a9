"""NABirds (Cornell Lab of Ornithology) reader for the release's native layout (nabirds.tar.gz)."""
import os
from typing import Dict, List, Tuple

from ._listed import SplitImages, find_root, int_value, read_id_pairs

__all__ = ['NABIRDS_LAYOUT', 'NABirds']

NABIRDS_LAYOUT = """NABirds layout expected under root (root may also be the folder holding nabirds/):
  images.txt               '<image_id> <relative/path.jpg>' per line (the ids are UUIDs; paths relative to images/)
  image_class_labels.txt   '<image_id> <class_id>' per line
  train_test_split.txt     '<image_id> <1 = train, 0 = test>' per line
  classes.txt              '<class_id> <class name>' per line (ids 0..1010 over the whole taxonomy)
  hierarchy.txt            '<child_class_id> <parent_class_id>' per line
  images/                  '<class_id, 4 digits>/<file>.jpg' image files
Labels are 0..N-1 over the classes that have images, in class-id order (the release's 555 leaf classes)."""

_REQUIRED = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt', 'classes.txt', 'hierarchy.txt', 'images')


def _int(path: str, pair: Tuple[str, int], what: str) -> int:
    """`int_value`, worded for NABirds' ids (0 is one)."""
    return int_value(path, pair, what, 'a non-negative integer')


class NABirds(SplitImages):
    """NABirds: 48,562 photographs of 555 North American bird categories (23,929 train, 24,633 test).

    Class ids in the release are sparse (0..1010 over the whole taxonomy of `hierarchy.txt`; images carry only leaf
    ids), so labels are the classes that have images, numbered in class-id order over both splits: train and test
    agree. `class_ids[label]` is the release's id, `hierarchy` maps a class id to its parent's.

    Args:
        root: The ``nabirds`` folder (or its parent).
        split: 'train' or 'test', as given by ``train_test_split.txt``.
        transform: Optional transform applied to the PIL image.
        target_transform: Optional transform applied to the integer label.
        loader: Image loader; the default opens the file with PIL and converts it to RGB.
        check_files: Verify at construction that every image of the split exists.

    Raises:
        FileNotFoundError: A required file or folder is missing (the message names it and the expected layout).
        ValueError: Unknown split or malformed / inconsistent annotation files (file and line named).
    """

    _NAME = 'NABirds'
    _LAYOUT = NABIRDS_LAYOUT
    _REQUIRED = _REQUIRED

    @staticmethod
    def _find_root(root: str) -> str:
        """Accept the nabirds folder itself or a folder that contains it."""
        return find_root(root, ('nabirds',), 'images.txt')

    def _read(self, files: Dict[str, str], split: str) -> Tuple[List[Tuple[str, int]], List[str], List[str]]:
        names: Dict[int, str] = {}
        for class_id, (class_name, lineno) in read_id_pairs(files['classes.txt'], 'class name').items():
            names[_int(files['classes.txt'], (class_id, lineno), 'the class id')] = class_name
        self.hierarchy: Dict[int, int] = {}
        for child, (parent, lineno) in read_id_pairs(files['hierarchy.txt'], 'parent class id').items():
            ids = [_int(files['hierarchy.txt'], (v, lineno), 'a class id') for v in (child, parent)]
            unknown = next((i for i in ids if i not in names), None)
            if unknown is not None:
                raise ValueError(f"'{files['hierarchy.txt']}', line {lineno}: class {unknown} is not listed in "
                                 f"'{files['classes.txt']}'")
            self.hierarchy[ids[0]] = ids[1]

        paths = read_id_pairs(files['images.txt'], 'relative/path.jpg')
        labels = read_id_pairs(files['image_class_labels.txt'], 'class id')
        is_train = read_id_pairs(files['train_test_split.txt'], '1 or 0')
        image_class: Dict[str, int] = {}
        for image_id, (_, lineno) in paths.items():
            for table, file in ((labels, 'image_class_labels.txt'), (is_train, 'train_test_split.txt')):
                if image_id not in table:
                    raise ValueError(f"'{files['images.txt']}', line {lineno}: image id {image_id} has no entry in "
                                     f"'{files[file]}'")
            if is_train[image_id][0] not in ('0', '1'):
                raise ValueError(f"'{files['train_test_split.txt']}', line {is_train[image_id][1]}: the split of "
                                 f'image {image_id} must be 1 (train) or 0 (test), got {is_train[image_id][0]!r}')
            class_id = _int(files['image_class_labels.txt'], labels[image_id], f'the class of image {image_id}')
            if class_id not in names:
                raise ValueError(f"'{files['image_class_labels.txt']}', line {labels[image_id][1]}: image {image_id} "
                                 f"has class {class_id}, which '{files['classes.txt']}' does not list")
            image_class[image_id] = class_id
        self.class_ids: List[int] = sorted(set(image_class.values()))
        label_of = {c: i for i, c in enumerate(self.class_ids)}
        classes = [names[c] for c in self.class_ids]

        want = '1' if split == 'train' else '0'
        samples: List[Tuple[str, int]] = []
        where: List[str] = []
        for image_id, (rel_path, lineno) in paths.items():
            if is_train[image_id][0] == want:
                samples.append((os.path.join(self.root, 'images', rel_path), label_of[image_class[image_id]]))
                where.append(f"'{files['images.txt']}', line {lineno}")
        return samples, classes, where

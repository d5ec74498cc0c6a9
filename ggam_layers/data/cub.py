"""CUB-200-2011 reader for the dataset's native layout."""

import os
from typing import Dict, List, Tuple

from ._listed import SplitImages, find_root, int_value, read_id_pairs

__all__ = ['Cub2011', 'CUB_LAYOUT']

CUB_LAYOUT = """CUB-200-2011 layout expected under root (root may also be the folder holding CUB_200_2011/):
  images.txt               '<image_id> <relative/path.jpg>' per line
  image_class_labels.txt   '<image_id> <class_id>' per line (class ids start at 1)
  train_test_split.txt     '<image_id> <1 = train, 0 = test>' per line
  classes.txt              '<class_id> <class_name>' per line
  images/                  '<class_name>/<file>.jpg' image files"""

_REQUIRED = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt', 'classes.txt', 'images')


class Cub2011(SplitImages):
    """CUB-200-2011 birds (200 classes) read from its native layout; labels are 0-based.

    Args:
        root: The ``CUB_200_2011`` folder (or its parent).
        split: 'train' or 'test', as given by ``train_test_split.txt``.
        transform: Optional transform applied to the PIL image.
        target_transform: Optional transform applied to the integer label.
        loader: Image loader; the default opens the file with PIL and converts it to RGB.
        check_files: Verify at construction that every image of the split exists.

    Raises:
        FileNotFoundError: A required file or folder is missing (the message names it and the expected layout).
        ValueError: Unknown split or malformed / inconsistent annotation files.
    """

    _NAME = 'CUB-200-2011'
    _LAYOUT = CUB_LAYOUT
    _REQUIRED = _REQUIRED
    _listed_in = ' listed in images.txt'

    @staticmethod
    def _find_root(root: str) -> str:
        """Accept either the CUB_200_2011 folder itself or a folder that contains it."""
        return find_root(root, ('CUB_200_2011',), 'images.txt')

    def _read(self, files: Dict[str, str], split: str) -> Tuple[List[Tuple[str, int]], List[str], List[str]]:
        classes_file = files['classes.txt']
        class_rows = read_id_pairs(classes_file, 'class name', numeric_ids=True)
        class_ids = sorted(int(i) for i in class_rows)
        if class_ids != list(range(1, len(class_ids) + 1)):
            raise ValueError(f"'{classes_file}' must number classes 1..N, got ids {class_ids[:5]}...")
        classes = [class_rows[str(i)][0] for i in class_ids]

        images_file = files['images.txt']
        labels_file = files['image_class_labels.txt']
        split_file = files['train_test_split.txt']
        paths = read_id_pairs(images_file, 'relative/path.jpg', numeric_ids=True)
        labels = read_id_pairs(labels_file, 'class id', numeric_ids=True)
        is_train = read_id_pairs(split_file, '1 or 0', numeric_ids=True)
        for image_id, pair in is_train.items():
            if pair[0] not in ('0', '1'):
                raise ValueError(f"'{split_file}', line {pair[1]}: the split of image {image_id} must be 1 (train) or "
                                 f'0 (test), got {pair[0]!r}')
        want = '1' if split == 'train' else '0'
        samples: List[Tuple[str, int]] = []
        where: List[str] = []
        for image_id, (rel_path, lineno) in paths.items():
            if image_id not in labels or image_id not in is_train:
                missing = labels_file if image_id not in labels else split_file
                raise ValueError(f"'{images_file}', line {lineno}: image id {image_id} has no entry in '{missing}'")
            if is_train[image_id][0] != want:
                continue
            label = int_value(labels_file, labels[image_id], f'the class of image {image_id}') - 1
            if not 0 <= label < len(classes):
                raise ValueError(f"'{labels_file}', line {labels[image_id][1]}: image {image_id} has class "
                                 f'{label + 1}, not in classes.txt (1..{len(classes)})')
            samples.append((os.path.join(self.root, 'images', rel_path), label))
            where.append(f"'{images_file}', line {lineno},")
        return samples, classes, where

"""Stanford Dogs reader for the release's native layout (images.tar and lists.tar)."""
import os
from typing import Any, Dict, List, Tuple

from ._listed import SplitImages, find_root, read_lines
from .folder import is_hidden, log_hidden

__all__ = ['DOGS_LAYOUT', 'StanfordDogs']

DOGS_LAYOUT = """Stanford Dogs layout expected under root (images.tar and lists.tar extracted there):
  Images/<wnid>-<breed>/<wnid>_<n>.jpg   120 breed folders, e.g. Images/n02085620-Chihuahua/n02085620_10074.jpg
  train_list.mat, test_list.mat          'file_list' (paths relative to Images/) and 'labels' (1..120); needs scipy
                                         (pip install "ggam-layers[datasets]")
or, instead of a .mat, train_list.txt / test_list.txt: one path relative to Images/ per line (the .mat's file_list).
Class names are the breed part of the folder names, in folder (wnid) order, the order the .mat labels number."""


def _mat_text(value: Any) -> str:
    """A MATLAB cell entry read by scipy (an array holding one string, or the string) as text."""
    import numpy as np

    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f'expected one string per entry, got an array of shape {value.shape}')
        value = value.reshape(-1)[0]
    return str(value)


def _read_mat(path: str) -> Tuple[List[str], List[int]]:
    """(file_list, labels) of a Stanford Dogs .mat list."""
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError(f"Stanford Dogs: reading '{path}' needs scipy: pip install scipy (or pip install "
                          f'"ggam-layers[datasets]"), or give the list as {os.path.splitext(path)[0]}.txt, one path '
                          'relative to Images/ per line') from e
    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises ValueError / MatReadError / TypeError on a damaged file
        raise ValueError(f"'{path}' is not a readable MATLAB file ({e}); restore it from lists.tar") from e
    for key in ('file_list', 'labels'):
        if key not in mat:
            held = sorted(k for k in mat if not k.startswith('__'))
            raise ValueError(f"'{path}' has no '{key}' variable (it holds {held}).\n{DOGS_LAYOUT}")
    files = [_mat_text(v) for v in mat['file_list'].reshape(-1)]
    labels = [int(v) for v in mat['labels'].reshape(-1)]
    if len(files) != len(labels):
        raise ValueError(f"'{path}': file_list has {len(files)} entries but labels has {len(labels)}")
    return files, labels


def _read_txt(path: str) -> List[str]:
    return [line for _, line in read_lines(path)]


class StanfordDogs(SplitImages):
    """Stanford Dogs: 20,580 images of 120 dog breeds from ImageNet (12,000 train, 8,580 test).

    Args:
        root: The folder holding ``Images/`` and the split lists.
        split: 'train' or 'test'.
        transform: Optional transform applied to the PIL image.
        target_transform: Optional transform applied to the integer label.
        loader: Image loader; the default opens the file with PIL and converts it to RGB.
        check_files: Verify at construction that every image of the split exists.

    Attributes:
        wnids: The WordNet id of each class (the folder name's first part), in label order.

    Raises:
        FileNotFoundError: A required file or folder is missing (the message names it and the expected layout).
        ValueError: Unknown split, or a list that does not match the breed folders (file and entry named).
        ImportError: Only a .mat list is there and scipy is not installed.
    """

    _NAME = 'Stanford Dogs'
    _LAYOUT = DOGS_LAYOUT

    @staticmethod
    def _find_root(root: str) -> str:
        """Accept the folder holding Images/ or one holding StanfordDogs/ or stanford_dogs/ with it."""
        return find_root(root, ('StanfordDogs', 'stanford_dogs'), 'Images', os.path.isdir)

    def _read(self, files: Dict[str, str], split: str) -> Tuple[List[Tuple[str, int]], List[str], List[str]]:
        images = os.path.join(self.root, 'Images')
        if not os.path.isdir(images):
            raise FileNotFoundError(f"Stanford Dogs: missing '{images}'.\n{DOGS_LAYOUT}")
        entries = [d.name for d in os.scandir(images) if d.is_dir()]
        folders = sorted(f for f in entries if not is_hidden(f))  # .ipynb_checkpoints is not a breed
        log_hidden(f"Stanford Dogs: '{images}'", {f for f in entries if is_hidden(f)})
        bad = next((f for f in folders if '-' not in f), None)
        if not folders or bad is not None:
            what = f"folder '{os.path.join(images, bad)}' is not named <wnid>-<breed>" if bad else 'no breed folders'
            raise ValueError(f'Stanford Dogs: {what} in {images}.\n{DOGS_LAYOUT}')
        self.wnids: List[str] = [f.split('-', 1)[0] for f in folders]
        classes = [f.split('-', 1)[1] for f in folders]
        index = {f: i for i, f in enumerate(folders)}

        mat = os.path.join(self.root, f'{split}_list.mat')
        txt = os.path.join(self.root, f'{split}_list.txt')
        use_txt = os.path.isfile(txt) and (not os.path.isfile(mat) or not _have_scipy())
        if use_txt:
            listed, labels, list_file = _read_txt(txt), None, txt
        elif os.path.isfile(mat):
            (listed, labels), list_file = _read_mat(mat), mat
        else:
            raise FileNotFoundError(f"Stanford Dogs: missing '{mat}' (or '{txt}').\n{DOGS_LAYOUT}")

        samples: List[Tuple[str, int]] = []
        where: List[str] = []
        for n, rel in enumerate(listed):
            folder = rel.replace('\\', '/').split('/', 1)[0]
            if folder not in index:
                raise ValueError(f"'{list_file}', entry {n + 1}: {rel!r} is not in a breed folder of {images}")
            label = index[folder]
            if labels is not None and labels[n] != label + 1:
                raise ValueError(f"'{list_file}', entry {n + 1}: {rel!r} has label {labels[n]}, but its folder is "
                                 f'breed {label + 1} of the {len(folders)} folders in {images} (folder order)')
            samples.append((os.path.join(images, rel), label))
            where.append(f"'{list_file}', entry {n + 1}")
        self.list_file = list_file
        return samples, classes, where


def _have_scipy() -> bool:
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        return False
    return True

"""Folders of images as users keep them: hidden entries (a leading dot) are neither classes nor images.

Jupyter leaves `.ipynb_checkpoints/` in every folder it opens, macOS leaves `.DS_Store` and `._name.jpg` files, sync
tools leave `.thumbnails/`. `ClassFolders` is torchvision's `ImageFolder` (root/<class>/<image>) without them, and
`visible_images` lists the images under a folder the same way; both log how many hidden entries they passed over.
A folder given by name is read even when its own name starts with a dot; only what is found below it is filtered.
"""
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension

__all__ = ['ClassFolders', 'is_hidden', 'log_hidden', 'visible_images']

_logger = logging.getLogger(__name__)
_EXAMPLES = 3  # hidden entries named in the log line


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (starts with a dot)."""
    return name.startswith('.')


def log_hidden(where: str, hidden: Set[str]) -> None:
    """Log (INFO) how many hidden entries were passed over in `where`, naming a few."""
    if hidden:
        names = sorted(hidden)
        shown = ', '.join(names[:_EXAMPLES]) + (', ...' if len(names) > _EXAMPLES else '')
        _logger.info("%s: ignored %d hidden %s (names starting with '.': %s)", where, len(names),
                     'entry' if len(names) == 1 else 'entries', shown)


class ClassFolders(ImageFolder):
    """torchvision's `ImageFolder` that skips hidden class folders, and hidden files and folders inside classes.

    Args:
        root: The folder holding one folder per class.
        name: How the log names the dataset ('folder', 'cars').
        **kwargs: Passed to `ImageFolder` (transform, target_transform, loader, is_valid_file, ...).

    Attributes:
        hidden: The hidden entries passed over, relative to `root`.
    """

    def __init__(self, root: str, name: str = 'folder', **kwargs: Any) -> None:
        self.hidden: Set[str] = set()
        self._top = os.fspath(root)
        user_check: Optional[Callable[[str], bool]] = kwargs.pop('is_valid_file', None)
        extensions = IMG_EXTENSIONS if user_check is None else None

        def is_valid_file(path: str) -> bool:
            rel = os.path.relpath(path, self._top).split(os.sep)
            hidden = next((i for i, part in enumerate(rel) if is_hidden(part)), None)
            if hidden is not None:
                self.hidden.add(os.path.join(*rel[:hidden + 1]))
                return False
            return user_check(path) if user_check is not None else has_file_allowed_extension(path, extensions)

        super().__init__(root, is_valid_file=is_valid_file, **kwargs)
        log_hidden(f"{name}: '{self._top}'", self.hidden)

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        """torchvision's class folders of `directory`, without the hidden ones."""
        classes, _ = find_classes(directory)
        visible = [c for c in classes if not is_hidden(c)]
        self.hidden.update(c for c in classes if is_hidden(c))
        if not visible:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory} (only hidden ones: "
                                    f"{', '.join(sorted(self.hidden))})")
        return visible, {c: i for i, c in enumerate(visible)}


def visible_images(folder: str, suffixes: Tuple[str, ...]) -> List[str]:
    """The files under `folder` (searched recursively, links followed) whose names end in one of `suffixes`
    (case-insensitive), sorted by folder then name, hidden files and folders passed over (their count is logged)."""
    found: List[str] = []
    hidden: Set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        rel = os.path.relpath(dirpath, folder)
        hidden.update(os.path.normpath(os.path.join(rel, d)) for d in dirnames if is_hidden(d))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))  # os.walk does not descend into the others
        for f in sorted(filenames):
            if is_hidden(f):
                hidden.add(os.path.normpath(os.path.join(rel, f)))
            elif f.lower().endswith(suffixes):
                found.append(os.path.join(dirpath, f))
    log_hidden(f"'{folder}'", hidden)
    return found

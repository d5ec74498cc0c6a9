"""docs/options.md, the table of every `ggam-layers train` option, made from the `TrainConfig` declarations.

Regenerate it with `python -m ggam_layers.train.options_doc > docs/options.md` (tests/test_config_declaration.py
fails while the file and the declarations differ).
"""
from .cli import DEFAULT_PRESET
from .config import PRESET_NOTES, PRESETS, TrainConfig
from .options import options_table

__all__ = ['REGENERATE', 'options_markdown']

REGENERATE = 'python -m ggam_layers.train.options_doc > docs/options.md'


def options_markdown() -> str:
    """The text of docs/options.md."""
    return options_table(TrainConfig, PRESETS, PRESET_NOTES, DEFAULT_PRESET, REGENERATE)


if __name__ == '__main__':
    print(options_markdown(), end='')

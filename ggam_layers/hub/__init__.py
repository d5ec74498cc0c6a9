"""Pretrained GGAM models on the Hugging Face Hub, the timm way.

`save_pretrained` (`save.py`) writes the folder timm reads (`config.json` with the architecture, `model_args` and the
data config, `model.safetensors`, a README model card from `card.py`), `push_to_hub` (`publish.py`) uploads it, and
after `import ggam_layers` `timm.create_model('hf-hub:ORG/NAME', pretrained=True)` or
`timm.create_model('local-dir:PATH')` loads it back. `load_model` (`load.py`) does the same with errors that name the
file, the key and the fix; `load_checkpoint` (`checkpoint.py`) reads a training run for `ggam-layers publish`
(`cli.py`).

Weights are safetensors only: nothing here writes or reads a pickle. A `.bin` / `.pth` / `.pt` / `.ckpt` offered
to `load_model` or to `ggam-layers publish` is refused with the one-line conversion to safetensors.
"""
from .._files import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME
from ._common import PAPER_BIBTEX
from .card import model_card
from .checkpoint import load_checkpoint
from .cli import register_cli
from .load import load_model
from .publish import push_to_hub
from .save import ggam_model_args, model_config_json, save_pretrained

__all__ = [
    'CONFIG_NAME', 'PAPER_BIBTEX', 'PICKLE_SUFFIXES', 'WEIGHTS_NAME', 'ggam_model_args', 'load_checkpoint',
    'load_model', 'model_card', 'model_config_json', 'push_to_hub', 'register_cli', 'save_pretrained',
]

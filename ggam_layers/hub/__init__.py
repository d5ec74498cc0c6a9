"""Pretrained GGAM models on the Hugging Face Hub, the timm way (saving, publishing, loading)."""
from .save import (
    CONFIG_NAME,
    PAPER_BIBTEX,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    ggam_model_args,
    load_checkpoint,
    load_model,
    model_card,
    push_to_hub,
    register_cli,
    save_pretrained,
)

__all__ = [
    'CONFIG_NAME', 'PAPER_BIBTEX', 'PICKLE_SUFFIXES', 'WEIGHTS_NAME', 'ggam_model_args', 'load_checkpoint',
    'load_model', 'model_card', 'push_to_hub', 'register_cli', 'save_pretrained',
]

"""Paper metadata and lazy package accessors shared by the `ggam_layers.hub` modules (file names: `_files`)."""
from types import ModuleType

__all__ = ['LIBRARY_URL', 'PAPER_BIBTEX', 'PAPER_ID', 'PAPER_NAME', 'package_version', 'registry_module']

PAPER_ID = 'arXiv:2101.09666'
PAPER_NAME = 'Grad-CAM Guided Channel-Spatial Attention Module for Fine-Grained Visual Classification'
PAPER_BIBTEX = """@article{xu2021gradcam,
  title         = {Grad-CAM Guided Channel-Spatial Attention Module for Fine-Grained Visual Classification},
  author        = {Xu, Shuai and Chang, Dongliang and Xie, Jiyang and Ma, Zhanyu},
  journal       = {arXiv preprint arXiv:2101.09666},
  year          = {2021},
  eprint        = {2101.09666},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2101.09666}
}"""
LIBRARY_URL = 'https://github.com/ggam-layers/ggam-layers'


def package_version() -> str:
    """`ggam_layers.__version__`, read when called (the package root is not imported at load time)."""
    from .. import __version__
    return __version__


def registry_module() -> ModuleType:
    """The `ggam_layers.registry` module (imported when called), which registers the GGAM models with timm."""
    from .. import registry
    return registry

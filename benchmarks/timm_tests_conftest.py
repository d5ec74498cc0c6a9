"""Point timm's tests/test_models.py at the ggam_* entrypoints of ggam-layers (no edit of the test file).

Use it outside this repository (docs/timm.md, "timm's own model tests"):

    G=$(git clone -q https://github.com/huggingface/pytorch-image-models /tmp/pim && echo /tmp/pim)
    mkdir -p /tmp/timm_tests && cp $G/tests/test_models.py /tmp/timm_tests/
    cp benchmarks/timm_tests_conftest.py /tmp/timm_tests/conftest.py && cd /tmp/timm_tests && python -m pytest -q -rA

Every list_models() call of the test file returns ggam_* names instead of timm's own. A GGAM model inherits its
backbone's classification: it is kept by `filter` / dropped by `exclude_filters` when its own name or its backbone's
name matches (so ggam_vit_* and ggam_deit_* go to the non-standard-output tests, as timm's vit_* and deit* do).
GGAM_OWN_NAMES=1 filters on the GGAM names alone; GGAM_MODELS=a,b runs a subset. `module=` filters are ignored
(every GGAM model delegates forward_intermediates to its backbone). Tests that need the network are left out:
list_pretrained('test_*') (timm's Hub test tensors) and pretrained weights not shipped in the package (only
ggam_test_resnet.synthetic is).
"""
import fnmatch
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import timm  # noqa: E402

import ggam_layers  # noqa: E402,F401  (registers the ggam_* entrypoints)
from ggam_layers.registry import GGAM_BACKBONES  # noqa: E402

_list_models = timm.list_models


def _patterns(p):
    return [x for x in ([p] if isinstance(p, str) else list(p or [])) if x]


def _matches(name, patterns):
    return any(fnmatch.fnmatch(name, p) for p in _patterns(patterns) if p)


def _backbone(name):
    base = name.split('.')[0]
    return GGAM_BACKBONES[base][0] if base in GGAM_BACKBONES else 'resnet50'  # 'ggam' defaults to resnet50


def _offline(name):
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is not None and bool(cfg.file) and os.path.exists(cfg.file)


def list_models(filter='', module='', pretrained=False, exclude_filters='', name_matches_cfg=False,
                include_tags=None):
    names = _list_models('ggam*', pretrained=pretrained, name_matches_cfg=name_matches_cfg,
                         include_tags=include_tags)
    only = os.environ.get('GGAM_MODELS')  # comma-separated subset, for quick runs
    out = []
    for n in names:
        b = n if os.environ.get('GGAM_OWN_NAMES') else _backbone(n)  # 1: filter on the GGAM names only
        if only and n.split('.')[0] not in only.split(','):
            continue
        if _patterns(filter) and not (_matches(n, filter) or _matches(b, filter)):
            continue
        if _matches(n, exclude_filters) or _matches(b, exclude_filters):
            continue
        if pretrained and not _offline(n):
            continue
        out.append(n)
    return out


def list_pretrained(filter='', exclude_filters=''):
    return []  # test_model_inference downloads timm's Hub test tensors


timm.list_models = list_models
timm.list_pretrained = list_pretrained


def pytest_configure(config):
    for m in ('base', 'cfg', 'torchscript', 'features', 'fxforward', 'fxbackward', 'timeout'):
        config.addinivalue_line('markers', f'{m}: timm test marker')


def pytest_collection_modifyitems(config, items):
    # keep the per-model tests; the naflexvit / gemma4 tests are about timm's own modules
    # test_model_forward_torchscript_with_features_fx is hard-wired to timm's regnetx_002 (not a GGAM model)
    keep = [i for i in items if getattr(i, 'callspec', None) is not None
            and str(i.callspec.params.get('model_name', '')).startswith('ggam')]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep

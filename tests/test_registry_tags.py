"""Only real weights are listed: every pretrained tag `timm.list_pretrained('ggam*')` returns either ships inside the
package (and loads offline), names its backbone's own timm weights, or is a published GGAM Hub repository listed in
`PUBLISHED`. Nothing here downloads."""
import json
from pathlib import Path
from typing import Dict

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
from timm.models import get_pretrained_cfg, split_model_name_tag

import ggam_layers
from ggam_layers.registry import GGAM_BACKBONES

PRETRAINED_DIR = Path(ggam_layers.__file__).resolve().parent / 'pretrained'
TAGS = timm.list_pretrained('ggam*')
EMBEDDED = [t for t in TAGS if get_pretrained_cfg(t).file]
# Whole-model GGAM weights on the Hub: tag -> hf_hub_id ('ORG/NAME@COMMIT'), added here only after the upload was
# checked (docs/predict.md, "Registering a trained model as a tag"). None is published yet.
PUBLISHED: Dict[str, str] = {}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)


def test_every_tag_is_embedded_or_its_backbones_timm_weights():
    assert TAGS, 'no ggam* tag is listed'
    for tag in TAGS:
        cfg = get_pretrained_cfg(tag)
        arch, name = split_model_name_tag(tag)
        if cfg.file:
            path = Path(cfg.file).resolve()
            assert path.parent == PRETRAINED_DIR and path.is_file(), f'{tag}: {path} is not shipped in the package'
            assert not cfg.hf_hub_id and not cfg.url, tag
            continue
        if tag in PUBLISHED:
            assert cfg.hf_hub_id == PUBLISHED[tag] and '@' in cfg.hf_hub_id, f'{tag}: pin the published commit'
            continue
        assert arch in GGAM_BACKBONES, f'{tag}: neither embedded nor a named backbone variant'
        backbone, backbone_tag = GGAM_BACKBONES[arch]
        assert name == backbone_tag, f'{tag}: names weights that are not its backbone {backbone}.{backbone_tag}'
        own = get_pretrained_cfg(f'{backbone}.{backbone_tag}')
        assert (cfg.hf_hub_id, cfg.url) == (own.hf_hub_id, own.url), tag
        assert (cfg.hf_hub_id or '').startswith('timm/') or (cfg.url or '').startswith('https://'), (
            f'{tag}: {cfg.hf_hub_id or cfg.url} is not a timm weights source')


def test_no_tag_points_at_unpublished_ggam_weights():
    assert 'ggam_resnet50.cub_448' not in TAGS
    for tag in TAGS:
        if tag not in PUBLISHED:
            assert not (get_pretrained_cfg(tag).hf_hub_id or '').startswith('ggam-layers/'), tag


def test_entrypoints_keep_a_default_cfg_without_ggam_weights():
    """ggam_resnet50 (the paper's model) keeps its entrypoint and its backbone's default tag, whose weights are
    timm's resnet50.a1_in1k; it builds with any number of classes."""
    assert 'ggam_resnet50' in timm.list_models('ggam*')
    cfg = get_pretrained_cfg('ggam_resnet50')
    assert cfg.tag == 'a1_in1k' and cfg.hf_hub_id == 'timm/resnet50.a1_in1k'
    model = timm.create_model('ggam_resnet50', num_classes=200, device='meta')
    assert model.num_classes == 200 and model.pretrained_cfg['tag'] == 'a1_in1k'


@pytest.mark.parametrize('tag', EMBEDDED)
def test_embedded_tags_load_offline_with_their_label_names(tag, offline):
    model = timm.create_model(tag, pretrained=True)
    weights = safetensors.torch.load_file(get_pretrained_cfg(tag).file)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items() if k in weights)
    assert set(weights) <= set(model.state_dict())
    meta = json.loads((PRETRAINED_DIR / f'{tag}.json').read_text())
    assert list(model.pretrained_cfg['label_names']) == meta['label_names']
    assert len(meta['label_names']) == model.num_classes

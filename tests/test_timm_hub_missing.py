"""Local saving and loading without timm's hub module: timm 1.0.16 - 1.0.20 cannot import huggingface_hub >= 2 and
then take the hub as missing (`timm.models._hub.has_hf_hub()` is False). Reproduced here on any versions by making
timm's hub report False: `save_pretrained`, `ggam-layers train` and `local-dir:` loading must not need it."""
import json

import pytest
import timm
import torch
from timm.models import _hub as timm_hub

import ggam_layers  # noqa: F401  (registers the ggam architectures with timm)
from ggam_layers import _timm_compat
from ggam_layers.cli import main
from ggam_layers.hub import load_model, save_pretrained

pytestmark = pytest.mark.timeout(300)

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model('ggam', backbone='test_resnet', num_classes=3).eval()


@pytest.fixture
def no_timm_hub(monkeypatch):
    """timm's hub as timm 1.0.16 sees huggingface_hub 2: its import failed."""
    monkeypatch.setattr(timm_hub, '_has_hf_hub', False)
    with pytest.raises(RuntimeError, match='package not installed'):
        timm_hub.has_hf_hub(True)  # what timm's own save_for_hf asserts


def test_save_pretrained_and_local_dir_load_without_timms_hub(tmp_path, monkeypatch):
    model = _model()
    with_hub = save_pretrained(model, tmp_path / 'hub', label_names=['a', 'b', 'c'])
    monkeypatch.setattr(timm_hub, '_has_hf_hub', False)
    assert not _timm_compat.timm_hub_available()
    without = save_pretrained(model, tmp_path / 'nohub', label_names=['a', 'b', 'c'])
    # the same files as where timm's hub works: timm's own config writer, the same weights
    for name in ('config.json', 'model.safetensors'):
        assert (with_hub / name).read_bytes() == (without / name).read_bytes(), name
    loaded = timm.create_model(f'local-dir:{without}', pretrained=True).eval()
    assert torch.equal(loaded(X), model(X))
    assert torch.equal(load_model(without).eval()(X), model(X))


def test_train_and_eval_without_timms_hub(tmp_path, no_timm_hub, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--model', 'test_resnet', '--epochs', '1', '--img-size', '32', '--data-arg',
                 'samples_per_class=4', '--data-arg', 'num_classes=4', '--batch-size', '8', '--threads', '1',
                 '--no-progress', '--output', str(out)]) == 0
    assert json.loads((out / 'config.json').read_text())['architecture'].startswith('ggam')
    assert main(['eval', '--checkpoint', str(out), '--no-progress']) == 0
    assert 'the same as recorded' in capsys.readouterr().out


def test_hub_mismatch_says_what_to_install(monkeypatch):
    if _timm_compat.timm_hub_available():
        assert _timm_compat.hub_mismatch() is None
    monkeypatch.setattr(timm_hub, '_has_hf_hub', False)
    msg = _timm_compat.hub_mismatch()
    assert msg and f'timm {timm.__version__} cannot import huggingface_hub' in msg and "'timm>=1.0.21'" in msg


def test_a_hub_download_says_what_to_install(no_timm_hub):
    from ggam_layers.train import TrainConfig, build_model

    with pytest.raises(ValueError, match=r"test_resnet.r160_in1k come from the Hugging Face Hub, and timm \S+ "
                                         r"cannot import huggingface_hub .* pip install 'timm>=1.0.21'"):
        build_model(TrainConfig(model='test_resnet.r160_in1k', pretrained=True), 4)


def test_load_model_from_the_hub_cache_without_timms_hub(tmp_path, no_timm_hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    model = _model()
    folder = save_pretrained(model, tmp_path / 'm')
    snapshot = tmp_path / 'cache' / 'models--org--toy' / 'snapshots' / ('1' * 40)  # a Hugging Face cache, offline
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (snapshot.parents[1] / 'refs').mkdir()
    (snapshot.parents[1] / 'refs' / 'main').write_text('1' * 40)
    loaded = load_model('hf-hub:org/toy', cache_dir=tmp_path / 'cache').eval()
    assert torch.equal(loaded(X), model(X))
    assert load_model('hf-hub:org/toy', cache_dir=tmp_path / 'cache', num_classes=5).num_classes == 5

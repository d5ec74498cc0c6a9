"""Saving, publishing and loading GGAM models the timm way, all offline.

The Hub side runs against a real Hugging Face cache laid out in a temp dir with the Hub offline; publishing runs
huggingface_hub's real `HfApi.create_repo` / `create_branch` / `upload_folder` code with only the HTTP transport
replaced (an `httpx2.MockTransport` installed through `huggingface_hub.set_client_factory`), which records what would
have been sent.
"""
import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import safetensors
import safetensors.torch
import timm
import torch

try:  # the HTTP client of huggingface_hub, whose transport the fake Hub replaces
    import httpx2
    from huggingface_hub.utils import _http as hf_http
except ImportError:  # an older huggingface_hub (requests): the publishing tests skip
    httpx2 = hf_http = None

import ggam_layers
from ggam_layers import hub
from ggam_layers._timm_compat import hub_mismatch, timm_hub_available

PACKAGE_PARENT = Path(ggam_layers.__file__).resolve().parents[1]  # the checkout, or site-packages under CI
REPO = 'ggam-test/ggam_test_resnet.toy'
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
# timm's own Hub functions (`timm.create_model('hf-hub:...')`, Hub-hosted backbone weights); off for timm 1.0.16 -
# 1.0.20 beside huggingface_hub >= 2, where the package's own saving and loading go on (tests/test_timm_hub_missing.py)
needs_timm_hub = pytest.mark.skipif(not timm_hub_available(), reason=hub_mismatch() or "timm's hub is off")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault('num_classes', 5)
    return timm.create_model(kwargs.pop('name', 'ggam_test_resnet'), **kwargs).eval()


def _logits(model, x=X):
    with torch.no_grad():
        return model.eval()(x)


def _cache_repo(cache: Path, repo_id: str, folder: Path, revision: str = None, ref: str = 'main') -> str:
    """Lay `folder` out as one snapshot of `repo_id` in a Hugging Face cache; return its 40-hex revision."""
    revision = revision or hashlib.sha1(f'{repo_id}:{folder}'.encode()).hexdigest()
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / 'snapshots' / revision
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    (repo_dir / 'refs').mkdir(exist_ok=True)
    (repo_dir / 'refs' / ref).write_text(revision)  # no trailing newline, as huggingface_hub writes it
    return revision


# --- saving ------------------------------------------------------------------------------------------------------
def test_save_pretrained_writes_what_timm_reads(tmp_path):
    model = _model()
    out = hub.save_pretrained(model, tmp_path / 'm', label_names=list('abcde'), dataset='synthetic',
                              metrics={'top1': 0.75}, recipe='ggam-layers train --dataset synthetic')
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'ggam_test_resnet'
    assert config['num_classes'] == 5 and config['label_names'] == list('abcde')
    args = config['model_args']
    assert args['backbone'] == 'test_resnet'
    expected = dict(num_classes=5, in_chans=3, parts='channel-spatial', spatial_norm='softmax',
                    temperature=1.0, pool_type='sum', drop_rate=0.0, cam_layer='features', closed_form=True,
                    rd_channels=model.head.attn.rd_channels, act_layer='relu')
    assert {k: args[k] for k in expected} == expected
    cfg = config['pretrained_cfg']
    assert cfg['num_classes'] == 5 and cfg['classifier'] == 'head.fc' and cfg['first_conv'] == 'backbone.conv1.0'
    assert {'input_size', 'mean', 'std', 'interpolation', 'crop_pct'} <= set(cfg)
    assert not {'hf_hub_id', 'url', 'file', 'source', 'tag'} & set(cfg)
    assert config['ggam_layers']['metrics'] == {'top1': 0.75}
    with safetensors.safe_open(str(out / 'model.safetensors'), framework='pt') as f:
        meta = f.metadata()
        assert set(f.keys()) == set(model.state_dict())
    assert meta['format'] == 'pt' and meta['architecture'] == 'ggam_test_resnet'
    card = (out / 'README.md').read_text()
    for text in ('library_name: timm', 'license: apache-2.0', 'arXiv:2101.09666', '@article{xu2021gradcam',
                 'Xu, Shuai and Chang, Dongliang and Xie, Jiyang and Ma, Zhanyu', 'import ggam_layers',
                 "timm.create_model('hf-hub:ORG/NAME', pretrained=True)", '| top1 | 0.75 |',
                 'ggam-layers train --dataset synthetic', '- **Dataset:** synthetic'):
        assert text in card, text

    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(_logits(loaded), _logits(model))
    assert loaded.pretrained_cfg['label_names'] == list('abcde')
    assert tuple(timm.data.resolve_model_data_config(loaded)['input_size']) == tuple(cfg['input_size'])


@pytest.mark.parametrize('name,kwargs,size', [
    ('ggam', dict(backbone='test_convnext', spatial_norm='sigmoid', temperature=0.5, rd_channels=3,
                  act_layer='gelu', cam_layer='attended'), 64),
    ('ggam', dict(backbone='test_efficientnet', parts='spatial', pool_type='avg', drop_rate=0.1), 64),
    ('ggam', dict(backbone='test_vit', img_size=64, spatial_norm='sum', closed_form=False), 64),
    ('ggam', dict(backbone='test_mambaout'), 64),
])
def test_round_trip_generic_backbones_and_options(tmp_path, name, kwargs, size):
    model = _model(name=name, **kwargs)
    out = hub.save_pretrained(model, tmp_path / 'm')
    args = json.loads((out / 'config.json').read_text())['model_args']
    for k, v in kwargs.items():
        assert args[k] == (list((v, v)) if k == 'img_size' else v), k
    x = torch.randn(2, 3, size, size)
    assert torch.equal(_logits(timm.create_model(f'local-dir:{out}', pretrained=True), x), _logits(model, x))


def test_round_trip_wrap_timm_model(tmp_path):
    torch.manual_seed(0)
    model = ggam_layers.wrap_timm_model('test_vit', num_classes=3, img_size=64, spatial_norm='sigmoid').eval()
    out = hub.save_pretrained(model, tmp_path / 'm')
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'ggam' and config['model_args']['backbone'] == 'test_vit'
    assert config['pretrained_cfg']['input_size'] == [3, 64, 64]
    assert torch.equal(_logits(hub.load_model(out)), _logits(model))


def test_save_refuses_non_empty_dir_unless_overwrite(tmp_path):
    model = _model()
    (tmp_path / 'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not empty.*overwrite=True'):
        hub.save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']
    hub.save_pretrained(model, tmp_path, overwrite=True)
    other = _model(seed=1)
    hub.save_pretrained(other, tmp_path, overwrite=True)
    assert (tmp_path / 'notes.txt').read_text() == 'keep me'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['README.md', 'config.json', 'model.safetensors', 'notes.txt']
    assert torch.equal(_logits(hub.load_model(tmp_path)), _logits(other))


def test_save_rejects_bad_arguments(tmp_path):
    model = _model()
    with pytest.raises(TypeError, match='GGAMModel'):
        hub.save_pretrained(timm.create_model('test_resnet'), tmp_path / 'a')
    with pytest.raises(ValueError, match='label_names has 2 names.*num_classes=5'):
        hub.save_pretrained(model, tmp_path / 'b', label_names=['x', 'y'])
    with pytest.raises(TypeError, match='metrics must be JSON-serialisable'):
        hub.save_pretrained(model, tmp_path / 'c', metrics={'top1': torch.tensor(1.0)})
    with pytest.raises(ValueError, match='would rebuild a different model'):
        hub.save_pretrained(model, tmp_path / 'd', model_args={'rd_channels': 7})
    assert not (tmp_path / 'd' / 'config.json').exists()


# --- loading from a Hugging Face cache, offline --------------------------------------------------------------------
@pytest.fixture
def hub_cache(tmp_path):
    """Two revisions of REPO in a cache: main holds model `new`, an older commit holds model `old`."""
    old, new = _model(seed=1), _model(seed=2)
    cache = tmp_path / 'cache'
    rev_old = _cache_repo(cache, REPO, hub.save_pretrained(old, tmp_path / 'old', label_names=list('vwxyz')),
                          revision='1' * 40, ref='v1')
    rev_new = _cache_repo(cache, REPO, hub.save_pretrained(new, tmp_path / 'new', label_names=list('vwxyz')),
                          revision='2' * 40)
    return dict(cache=cache, old=old, new=new, rev_old=rev_old, rev_new=rev_new)


@needs_timm_hub
def test_load_from_hub_cache_by_name_revision_and_num_classes(hub_cache, offline):
    cache = hub_cache['cache']
    model = timm.create_model(f'hf-hub:{REPO}', pretrained=True, cache_dir=cache)
    assert torch.equal(_logits(model), _logits(hub_cache['new']))
    assert model.pretrained_cfg['label_names'] == list('vwxyz')
    for rev in (hub_cache['rev_old'], 'v1'):  # a pinned commit, and a tag / branch name resolved through refs/
        pinned = timm.create_model(f'hf-hub:{REPO}@{rev}', pretrained=True, cache_dir=cache)
        assert torch.equal(_logits(pinned), _logits(hub_cache['old']))
    assert torch.equal(_logits(hub.load_model(f'hf-hub:{REPO}@v1', cache_dir=cache)), _logits(hub_cache['old']))

    tuned = timm.create_model(f'hf-hub:{REPO}', pretrained=True, num_classes=7, cache_dir=cache).eval()
    assert tuned.num_classes == 7 and tuned.head.fc.out_features == 7
    ref = hub_cache['new'].state_dict()
    for k, v in tuned.state_dict().items():
        if not k.startswith('head.fc.'):
            assert torch.equal(v, ref[k]), k
    assert not torch.equal(tuned.head.fc.weight[:5], ref['head.fc.weight'])
    assert torch.equal(tuned.forward_features(X), hub_cache['new'].forward_features(X))


@needs_timm_hub
def test_fresh_process_plain_timm_and_offline_env(hub_cache, tmp_path):
    """Plain timm fails with `Unknown model` before `import ggam_layers`; after it, HF_HUB_OFFLINE=1 and
    HF_HUB_CACHE are enough for `hf-hub:` to load the cached model."""
    code = (
        'import sys, timm, torch\n'
        'try:\n'
        f"    timm.create_model('hf-hub:{REPO}', pretrained=True)\n"
        'except RuntimeError as e:\n'
        '    print("timm:", e)\n'
        'import ggam_layers\n'
        f"m = timm.create_model('hf-hub:{REPO}', pretrained=True).eval()\n"
        "torch.save(m(torch.load(sys.argv[1], weights_only=True)).detach(), sys.argv[2])\n")
    torch.save(X, tmp_path / 'x.pt')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(hub_cache['cache']), PYTHONPATH=str(PACKAGE_PARENT),
               OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'x.pt'), str(tmp_path / 'y.pt')], env=env,
                         check=True, capture_output=True, text=True, timeout=300).stdout
    assert 'timm: Unknown model (ggam_test_resnet)' in out
    assert torch.equal(torch.load(tmp_path / 'y.pt', weights_only=True), _logits(hub_cache['new']))


@needs_timm_hub
def test_published_hub_repo_loads_from_the_hub_cache(tmp_path, offline):
    """A GGAM model published to the Hub loads back by its repo id (no tag is registered before weights exist)."""
    repo = 'ggam-layers/ggam_resnet50.cub_448'
    torch.manual_seed(0)
    model = timm.create_model('ggam_resnet50', num_classes=200).eval()
    cache = tmp_path / 'cache'
    _cache_repo(cache, repo, hub.save_pretrained(model, tmp_path / 'm'))
    loaded = timm.create_model(f'hf-hub:{repo}', pretrained=True, cache_dir=cache)
    assert loaded.pretrained_cfg['hf_hub_id'] == repo and loaded.num_classes == 200
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_logits(loaded, x), _logits(model, x))


@needs_timm_hub
def test_plain_backbone_checkpoint_loads_with_fresh_attention(tmp_path, offline):
    """`ggam_test_resnet` with pretrained=True reads timm's plain test_resnet weights from the Hub cache."""
    torch.manual_seed(3)
    backbone = timm.create_model('test_resnet').eval()
    cache = tmp_path / 'cache'
    folder = tmp_path / 'plain'
    timm.models.save_for_hf(backbone, folder, safe_serialization=True)
    _cache_repo(cache, 'timm/test_resnet.r160_in1k', folder)
    torch.manual_seed(4)
    model = timm.create_model('ggam_test_resnet', pretrained=True, num_classes=4, cache_dir=cache)
    torch.manual_seed(4)
    fresh = timm.create_model('ggam_test_resnet', num_classes=4)
    plain = backbone.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith('backbone.'):
            assert torch.equal(v, plain[k[len('backbone.'):]]), k
        else:
            assert torch.equal(v, fresh.state_dict()[k]), k  # the GGAM head keeps its own initialisation
    # the same through a local weights file
    file = tmp_path / 'backbone.safetensors'
    safetensors.torch.save_file(plain, str(file))
    model2 = timm.create_model('ggam_test_resnet', pretrained=True, num_classes=4,
                               pretrained_cfg_overlay=dict(file=str(file))).eval()
    assert torch.equal(model2.forward_features(X), backbone.forward_features(X))


# --- the embedded pretrained model ----------------------------------------------------------------------------------
EMBEDDED_TAG = 'ggam_test_resnet.synthetic'
EMBEDDED_DIR = Path(ggam_layers.__file__).resolve().parent / 'pretrained'


def _git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def test_embedded_model_loads_offline_and_reproduces_its_recorded_accuracy(offline):
    """`timm.create_model('ggam_test_resnet.synthetic', pretrained=True)` reads the file shipped in the package, and
    evaluated with timm's own transform from its pretrained_cfg it scores exactly the recorded test accuracy."""
    from ggam_layers.train import TrainConfig, build_datasets, evaluate_model

    weights = EMBEDDED_DIR / f'{EMBEDDED_TAG}.safetensors'
    meta = json.loads((EMBEDDED_DIR / f'{EMBEDDED_TAG}.json').read_text())
    info = meta['ggam_layers']
    assert weights.stat().st_size < 5 * 2 ** 20
    model = timm.create_model(EMBEDDED_TAG, pretrained=True).eval()
    assert Path(model.pretrained_cfg['file']).resolve() == weights
    assert torch.equal(model.head.fc.weight, safetensors.torch.load_file(str(weights))['head.fc.weight'])
    # a tag load reads only the weights, so the tag must build the architecture that was trained (the entrypoint's
    # defaults plus registry.TAG_MODEL_ARGS): the one its config.json rebuilds, with a 7 x 7 map at its input size
    assert meta['architecture'] == 'ggam_test_resnet'
    rebuilt = timm.create_model(meta['architecture'], **meta['model_args'])
    assert hub.ggam_model_args(model) == hub.ggam_model_args(rebuilt)
    size = tuple(meta['pretrained_cfg']['input_size'])
    grid = tuple(model.forward_features(torch.zeros(1, *size)).shape[-2:])
    assert grid == (7, 7) == model.pretrained_cfg['pool_size']
    for key in ('num_classes', 'input_size', 'mean', 'std', 'interpolation', 'crop_pct', 'crop_mode'):
        value = model.pretrained_cfg[key]
        assert (list(value) if isinstance(value, tuple) else value) == meta['pretrained_cfg'][key], key
    # the exact command that made it, in the JSON and in the safetensors header
    with safetensors.safe_open(str(weights), framework='pt') as f:
        header = f.metadata()
    assert info['recipe'].startswith('ggam-layers train ') and header['recipe'] == info['recipe']
    assert info['embedded']['export'].startswith('model, kw = ggam_layers.hub.load_checkpoint(')

    cfg = TrainConfig.from_dict(info['train_config'])
    eval_ds = build_datasets(cfg)[1]
    assert eval_ds.split == 'test' and len(eval_ds) == info['embedded']['test_images']
    eval_ds.transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    loader = torch.utils.data.DataLoader(eval_ds, batch_size=cfg.eval_batch_size)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    top1 = evaluate_model(model, loader, torch.device('cpu'), channels_last=cfg.channels_last)['top1']
    synthetic_py = Path(ggam_layers.__file__).resolve().parent / 'data' / 'synthetic.py'
    changed = _git_blob_sha1(synthetic_py) != info['embedded']['synthetic_py_git_blob']
    assert top1 == info['metrics']['test_top1'], (
        f'embedded model: test top-1 {top1} != recorded {info["metrics"]["test_top1"]}'
        + ('; ggam_layers/data/synthetic.py changed since it was trained: retrain it as '
           'ggam_layers/pretrained/README.md says' if changed else ''))


@pytest.mark.parametrize('kwargs, grid', [({}, 7), ({'output_stride': 32}, 4),
                                          ({'backbone_args': {'output_stride': 32}}, 4)])
def test_tag_model_args_give_the_tags_architecture_and_yield_to_the_caller(kwargs, grid):
    """`registry.TAG_MODEL_ARGS`: the embedded tag builds its output-stride-16 backbone (a 7 x 7 map at 112 px) with
    or without its weights; what the caller passes wins; the entrypoint's default tag keeps timm's output stride."""
    from ggam_layers.registry import TAG_MODEL_ARGS

    assert TAG_MODEL_ARGS[EMBEDDED_TAG] == {'backbone_args': {'output_stride': 16}}
    x = torch.zeros(1, 3, 112, 112)
    model = timm.create_model(EMBEDDED_TAG, **kwargs)
    assert model.forward_features(x).shape[-2:] == (grid, grid)
    assert timm.create_model('ggam_test_resnet').forward_features(x).shape[-2:] == (4, 4)


# --- bad input -------------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = _model()
    return model, hub.save_pretrained(model, tmp_path / 'saved')


def test_missing_files_are_named(saved, tmp_path, offline):
    _, folder = saved
    (folder / 'model.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match=r'saved/model\.safetensors is missing'):
        hub.load_model(folder)
    (folder / 'config.json').unlink()
    with pytest.raises(FileNotFoundError, match=r'saved/config\.json is missing'):
        hub.load_model(f'local-dir:{folder}')
    with pytest.raises(FileNotFoundError, match='no such folder'):
        hub.load_model(f'local-dir:{tmp_path / "nowhere"}')
    # a Hub snapshot without weights, offline
    model = _model()
    cfg_only = tmp_path / 'cfg_only'
    hub.save_pretrained(model, cfg_only)
    (cfg_only / 'model.safetensors').unlink()
    cache = tmp_path / 'cache'
    _cache_repo(cache, REPO, cfg_only)
    with pytest.raises(FileNotFoundError, match=rf'model\.safetensors of hf-hub:{REPO} is not in the Hugging Face '
                                                 'cache'):
        hub.load_model(f'hf-hub:{REPO}', cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=r'config\.json of hf-hub:ggam-test/absent'):
        hub.load_model('hf-hub:ggam-test/absent', cache_dir=cache)


def test_config_naming_an_unknown_architecture(saved):
    _, folder = saved
    config = json.loads((folder / 'config.json').read_text())
    for arch, fix in (('ggam_resnet9000', 'pip install -U ggam-layers'), ('resnet9000', 'pip install -U timm')):
        config['architecture'] = arch
        (folder / 'config.json').write_text(json.dumps(config))
        with pytest.raises(RuntimeError, match=rf"config\.json names architecture '{arch}'.*{fix}"):
            hub.load_model(folder)
    config['architecture'] = 'ggam'
    config['model_args']['backbone'] = 'resnet9000'
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match=r'config\.json key model_args\.backbone names .resnet9000.'):
        hub.load_model(folder)
    del config['architecture'], config['pretrained_cfg']
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json has no 'architecture' key"):
        hub.load_model(folder)
    (folder / 'config.json').write_text('{not json')
    with pytest.raises(ValueError, match=r'config\.json is not valid JSON'):
        hub.load_model(folder)


def test_config_naming_another_architecture_than_the_weights(saved):
    _, folder = saved
    config = json.loads((folder / 'config.json').read_text())
    config['architecture'] = 'ggam'
    config['model_args']['backbone'] = 'test_convnext'
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r'saved/model\.safetensors do not fit ggam \(backbone test_convnext\).*'
                                         r'missing keys \[backbone\.stem'):
        hub.load_model(folder)


def test_weights_of_the_wrong_shape(saved):
    model, folder = saved
    sd = model.state_dict()
    sd['head.attn.fc1.weight'] = torch.zeros(3, sd['head.attn.fc1.weight'].shape[1])
    safetensors.torch.save_file(sd, str(folder / 'model.safetensors'))
    with pytest.raises(ValueError, match=r'saved/model\.safetensors do not fit ggam_test_resnet .*'
                                         r'head\.attn\.fc1\.weight: file \(3, 96\), model \(6, 96\)'):
        hub.load_model(folder)


def test_pickles_are_refused_never_unpickled(saved, tmp_path):
    model, folder = saved
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / 'model.safetensors').unlink()
    torch.save({'state_dict': model.state_dict(), 'x': Evil()}, folder / 'pytorch_model.bin')
    with pytest.raises(ValueError, match=r'pytorch_model\.bin is a pickle checkpoint.*weights_only=True'):
        hub.load_model(folder)
    for name in ('model.pth', 'ckpt.pt'):
        shutil.copy(folder / 'pytorch_model.bin', tmp_path / name)
        with pytest.raises(ValueError, match=rf'{name} is a pickle checkpoint'):
            hub.load_model(tmp_path / name)
    with pytest.raises(ValueError, match=r'pytorch_model\.bin is a pickle checkpoint'):
        hub.load_checkpoint(folder)
    assert not marker.exists()


def test_load_model_names_the_fix_for_unknown_models(saved):
    with pytest.raises(RuntimeError, match=r"model name 'ggam_resnet9000' names architecture 'ggam_resnet9000'.*"
                                           'pip install -U ggam-layers'):
        hub.load_model('ggam_resnet9000')
    with pytest.raises(ValueError, match="ggam_test_resnet has no pretrained tag 'nope'"):
        hub.load_model('ggam_test_resnet.nope')


# --- publishing ----------------------------------------------------------------------------------------------------
class FakeHub:
    """The Hub's HTTP API for create_repo / create_branch / preupload / commit, recording every request."""

    def __init__(self):
        self.requests = []
        self.repos = {}
        self.commits = []
        self.readme_yaml = []

    def __call__(self, request: 'httpx2.Request') -> 'httpx2.Response':
        path = request.url.path
        if path == '/api/agent-harnesses':  # huggingface_hub's best-effort agent detection; a 404 is ignored
            return httpx2.Response(404, json={'error': 'not served'})
        self.requests.append((request.method, path, request.headers.get('authorization')))
        if path == '/api/repos/create':
            body = json.loads(request.content)
            repo_id = f"{body['organization']}/{body['name']}"
            self.repos[repo_id] = body
            return httpx2.Response(200, json={'url': f'https://huggingface.co/{repo_id}'})
        if path == '/api/validate-yaml':
            self.readme_yaml.append(json.loads(request.content)['content'])
            return httpx2.Response(200, json={'errors': [], 'warnings': []})
        if '/branch/' in path:
            return httpx2.Response(200, json={})
        if '/preupload/' in path:
            files = json.loads(request.content)['files']
            return httpx2.Response(200, json={'files': [
                {'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in files]})
        if '/commit/' in path:
            lines = [json.loads(line) for line in request.content.decode().splitlines()]
            header = next(ln['value'] for ln in lines if ln['key'] == 'header')
            files = {ln['value']['path']: base64.b64decode(ln['value']['content']) for ln in lines
                     if ln['key'] == 'file'}
            self.commits.append(dict(path=path, summary=header['summary'], files=files))
            oid = hashlib.sha1(request.content).hexdigest()
            repo_id = path.split('/commit/')[0][len('/api/models/'):]
            return httpx2.Response(200, json={'commitUrl': f'https://huggingface.co/{repo_id}/commit/{oid}',
                                              'commitOid': oid})
        return httpx2.Response(404, json={'error': f'no route {request.method} {path}'})


@pytest.fixture
def fake_hub(monkeypatch):
    if httpx2 is None or not hasattr(huggingface_hub, 'set_client_factory'):
        pytest.skip('this huggingface_hub has no set_client_factory / httpx2 transport to replace')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('HF_HUB_DISABLE_TELEMETRY', '1')
    server = FakeHub()
    huggingface_hub.set_client_factory(lambda: httpx2.Client(
        transport=httpx2.MockTransport(server), event_hooks={'request': [hf_http.hf_request_event_hook]},
        follow_redirects=True))
    yield server
    huggingface_hub.set_client_factory(hf_http.default_client_factory)


def _folder_bytes(folder: Path):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_push_to_hub_uploads_the_dry_run_folder(fake_hub, tmp_path):
    model = _model()
    kw = dict(label_names=list('abcde'), dataset='synthetic', metrics={'top1': 0.5})
    dry = hub.push_to_hub(model, 'ggam-test/pushed', dry_run_dir=tmp_path / 'dry', **kw)
    assert fake_hub.requests == []
    info = hub.push_to_hub(model, 'ggam-test/pushed', private=True, revision='v0.1', commit_message='first',
                           token='hf_explicit', **kw)
    assert info.oid
    assert fake_hub.repos['ggam-test/pushed'] == {'name': 'pushed', 'organization': 'ggam-test', 'type': 'model',
                                                  'visibility': 'private'}
    assert [r[:2] for r in fake_hub.requests] == [
        ('POST', '/api/repos/create'), ('POST', '/api/models/ggam-test/pushed/branch/v0.1'),
        ('POST', '/api/validate-yaml'), ('POST', '/api/models/ggam-test/pushed/preupload/v0.1'),
        ('POST', '/api/models/ggam-test/pushed/commit/v0.1')]
    assert fake_hub.readme_yaml == [(dry / 'README.md').read_text()]
    assert {r[2] for r in fake_hub.requests} == {'Bearer hf_explicit'}
    (commit,) = fake_hub.commits
    assert commit['summary'] == 'first'
    assert commit['files'] == _folder_bytes(dry)
    # and the uploaded bytes load back into the same model
    cache = tmp_path / 'cache'
    up = tmp_path / 'uploaded'
    up.mkdir()
    for name, data in commit['files'].items():
        (up / name).write_bytes(data)
    _cache_repo(cache, 'ggam-test/pushed', up)
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # restored by the fixture's monkeypatch
    assert torch.equal(_logits(hub.load_model('hf-hub:ggam-test/pushed', cache_dir=cache)), _logits(model))


def test_push_to_hub_takes_the_token_from_the_environment(fake_hub, monkeypatch):
    monkeypatch.setenv('HF_TOKEN', 'hf_from_env')
    hub.push_to_hub(_model(), 'ggam-test/env', commit_message='env')
    assert [r[1] for r in fake_hub.requests] == [
        '/api/repos/create', '/api/validate-yaml', '/api/models/ggam-test/env/preupload/main',
        '/api/models/ggam-test/env/commit/main']
    assert {r[2] for r in fake_hub.requests} == {'Bearer hf_from_env'}
    assert fake_hub.repos['ggam-test/env']['visibility'] == 'public'


def test_push_to_hub_rejects_bad_repo_id(tmp_path):
    with pytest.raises(ValueError, match="repo_id must be 'ORG/NAME'"):
        hub.push_to_hub(_model(), 'no-org', dry_run_dir=tmp_path)


def _cli(argv):
    parser = argparse.ArgumentParser(prog='ggam-layers')
    hub.register_cli(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_publish_cli_dry_run_and_upload(fake_hub, saved, tmp_path, capsys):
    model, folder = saved
    assert _cli(['publish', str(folder), '--repo-id', 'ggam-test/cli', '--dry-run', str(tmp_path / 'dry')]) == 0
    assert 'nothing uploaded' in capsys.readouterr().out
    assert fake_hub.requests == []
    assert torch.equal(_logits(hub.load_model(tmp_path / 'dry')), _logits(model))
    assert _cli(['publish', str(folder / 'model.safetensors'), '--repo-id', 'ggam-test/cli', '--private',
                 '--revision', 'dev', '--commit-message', 'from the cli']) == 0
    (commit,) = fake_hub.commits
    assert commit['summary'] == 'from the cli' and commit['path'].endswith('/commit/dev')
    assert commit['files'] == _folder_bytes(tmp_path / 'dry')
    with pytest.raises(FileExistsError):
        _cli(['publish', str(folder), '--repo-id', 'ggam-test/cli', '--dry-run', str(tmp_path / 'dry')])
    assert _cli(['publish', str(folder), '--repo-id', 'ggam-test/cli', '--dry-run', str(tmp_path / 'dry'),
                 '--overwrite']) == 0


def test_publish_a_training_run(fake_hub, tmp_path):
    """A run directory of ggam_layers.train converts to a Hub folder (dry run) and uploads the same bytes."""
    from ggam_layers.train import TrainConfig, train
    run = tmp_path / 'run'
    cfg = TrainConfig.from_preset('synthetic', model='test_resnet', epochs=1, batch_size=6, eval_batch_size=6,
                                  dataset_kwargs={'num_classes': 3, 'samples_per_class': 2}, output=str(run),
                                  threads=1, progress=False)
    result = train(cfg, command='ggam-layers train --model test_resnet --epochs 1')
    trained = timm.create_model(f'local-dir:{run}', pretrained=True)
    dry = tmp_path / 'dry'
    assert _cli(['publish', str(run), '--repo-id', 'ggam-test/run', '--dry-run', str(dry)]) == 0
    assert sorted(p.name for p in dry.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((dry / 'config.json').read_text())
    run_config = json.loads((run / 'config.json').read_text())
    assert config['architecture'] == 'ggam_test_resnet' and config['model_args']['backbone'] == 'test_resnet'
    assert config['label_names'] == run_config['label_names'] and len(config['label_names']) == 3
    info = config['ggam_layers']
    assert info['recipe'] == 'ggam-layers train --model test_resnet --epochs 1'
    assert info['metrics']['test_top1'] == result['test_top1']
    assert info['dataset']['name'] == 'synthetic' and info['train_config'] == run_config['ggam_layers']['train_config']
    for key in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct'):
        assert config['pretrained_cfg'][key] == run_config['pretrained_cfg'][key], key
    with safetensors.safe_open(str(dry / 'model.safetensors'), framework='pt') as f:
        assert f.metadata()['recipe'] == info['recipe']
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(_logits(hub.load_model(dry), x), _logits(trained, x))
    assert _cli(['publish', str(run), '--repo-id', 'ggam-test/run']) == 0
    assert fake_hub.commits[0]['files'] == _folder_bytes(dry)
    # one epoch's checkpoint folder: the run's config, that epoch's weights and metrics
    epoch_dir = run / 'checkpoints' / 'epoch-0001'
    assert _cli(['publish', str(epoch_dir), '--repo-id', 'ggam-test/run', '--dry-run', str(tmp_path / 'e1')]) == 0
    metrics = json.loads((tmp_path / 'e1' / 'config.json').read_text())['ggam_layers']['metrics']
    assert metrics['epoch'] == 1 and metrics['test_top1'] == result['history'][0]['test_top1']
    assert torch.equal(_logits(hub.load_model(tmp_path / 'e1'), x), _logits(trained, x))


def test_publish_refuses_a_plain_run(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.json').write_text(json.dumps({'architecture': 'test_resnet', 'pretrained_cfg': {},
                                                 'ggam_layers': {'kind': 'plain'}}))
    with pytest.raises(ValueError, match='plain timm baseline.*push_to_hf_hub'):
        _cli(['publish', str(run), '--repo-id', 'ggam-test/plain', '--dry-run', str(tmp_path / 'dry')])


def test_ggam_layers_command_line_has_publish(saved, tmp_path, capsys):
    from ggam_layers.cli import main
    model, folder = saved
    assert main(['publish', str(folder), '--repo-id', 'ggam-test/cli', '--dry-run', str(tmp_path / 'dry')]) == 0
    assert torch.equal(_logits(hub.load_model(tmp_path / 'dry')), _logits(model))
    with pytest.raises(SystemExit) as e:
        main(['publish', str(tmp_path / 'nowhere'), '--repo-id', 'ggam-test/cli', '--dry-run', str(tmp_path / 'd2')])
    assert e.value.code == 2
    assert 'ggam-layers publish: error: checkpoint' in capsys.readouterr().err

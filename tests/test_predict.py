"""`ggam_layers.predict` and `ggam-layers predict`: the embedded model on synthetic test images written as PNG files.

Every MODEL form is a real folder or Hugging Face cache laid out in a temp dir (the Hub offline); corrupt inputs are
real damaged files.
"""
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

import ggam_layers
from ggam_layers import cli, hub
from ggam_layers.data import SyntheticFineGrained
from ggam_layers.predict import collect_images, format_table, predict, write_predictions

pytestmark = pytest.mark.timeout(300)

TAG = 'ggam_test_resnet.synthetic'
META = json.loads((Path(ggam_layers.__file__).resolve().parent / 'pretrained' / f'{TAG}.json').read_text())
IMAGE_SIZE = 112  # the embedded model's input size; its test split renders at it (train_config img_size)
N_SUBSET = 64
REPO = 'ggam-test/predict-synthetic'
PACKAGE_PARENT = Path(ggam_layers.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _test_split() -> SyntheticFineGrained:
    kwargs = META['ggam_layers']['train_config']['dataset_kwargs']
    return SyntheticFineGrained('test', image_size=IMAGE_SIZE, **kwargs)


def _write_pngs(folder: Path, ds: SyntheticFineGrained, n: int, sub_from: int = None) -> list:
    """The first `n` images as PNG files (those from `sub_from` on in a subfolder); their paths in walk order."""
    paths = []
    for i in range(n):
        target = folder / ('sub' if sub_from is not None and i >= sub_from else '') / f'{i:04d}.png'
        target.parent.mkdir(parents=True, exist_ok=True)
        ds[i][0].save(target, compress_level=1)
        paths.append(str(target))
    return paths


@pytest.fixture(scope='module')
def subset(tmp_path_factory):
    folder = tmp_path_factory.mktemp('synthetic_test')
    ds = _test_split()
    paths = _write_pngs(folder, ds, N_SUBSET, sub_from=N_SUBSET // 2)
    return dict(folder=folder, paths=paths, ds=ds)


@pytest.fixture(scope='module')
def model():
    return timm.create_model(TAG, pretrained=True).eval()


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)


def _reference_logits(model, ds, n):
    transform = create_transform(**resolve_model_data_config(model), is_training=False)
    x = torch.stack([transform(ds[i][0]) for i in range(n)])
    with torch.inference_mode():
        return model(x)


def _cli(argv):
    """`ggam-layers ARGV` through ggam_layers.cli."""
    return cli.main(argv)


def _cli_error(argv, capsys) -> str:
    """The error `ggam-layers ARGV` stops with (exit status 2, the message on stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# --- predictions ----------------------------------------------------------------------------------------------------
def test_top1_equals_the_models_argmax_through_timms_eval_transform(subset, model):
    result = predict(TAG, subset['folder'], topk=3, batch_size=16, device='cpu')
    assert [r.path for r in result] == subset['paths']  # folders are walked in sorted order, the subfolder included
    assert not result.skipped and result.topk == 3
    logits = _reference_logits(model, subset['ds'], N_SUBSET)
    probs = logits.softmax(1)
    names = META['label_names']
    for i, row in enumerate(result):
        assert row.classes[0] == int(logits[i].argmax()), row.path
        assert row.labels == tuple(names[c] for c in row.classes)
        assert list(row.scores) == sorted(row.scores, reverse=True)
        np.testing.assert_allclose(row.scores, probs[i, list(row.classes)].tolist(), rtol=1e-5, atol=1e-6)
    accuracy = np.mean([row.classes[0] == subset['ds'].targets[i] for i, row in enumerate(result)])
    assert accuracy > 0.6  # the model is 82.3% accurate on the whole split


@pytest.mark.slow
def test_full_test_split_reproduces_the_recorded_accuracy(tmp_path):
    """All 1000 test images as PNG files: predict's top-1 accuracy is exactly the recorded 0.823."""
    ds = _test_split()
    n = META['ggam_layers']['embedded']['test_images']
    _write_pngs(tmp_path, ds, n)
    result = predict(TAG, tmp_path, topk=1, batch_size=250, device='cpu')
    assert len(result) == n
    top1 = sum(row.classes[0] == ds.targets[i] for i, row in enumerate(result)) / n
    assert top1 == META['ggam_layers']['metrics']['test_top1']


def _cache_repo(cache: Path, repo_id: str, folder: Path) -> str:
    """Lay `folder` out as one snapshot of `repo_id` in a Hugging Face cache (as huggingface_hub writes it)."""
    revision = hashlib.sha1(f'{repo_id}:{folder}'.encode()).hexdigest()
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / 'snapshots' / revision
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    (repo_dir / 'refs').mkdir()
    (repo_dir / 'refs' / 'main').write_text(revision)
    return revision


@pytest.fixture
def saved(tmp_path, model):
    """The embedded model as a run-style folder (config.json + model.safetensors), an epoch checkpoint folder in it,
    and an offline Hugging Face cache holding it."""
    run = hub.save_pretrained(model, tmp_path / 'run', label_names=META['label_names'], dataset='synthetic')
    cache = tmp_path / 'hf-cache'
    revision = _cache_repo(cache, REPO, run)
    epoch = run / 'checkpoints' / 'epoch-0012'
    epoch.mkdir(parents=True)
    shutil.copy(run / 'model.safetensors', epoch / 'model.safetensors')
    return dict(run=run, epoch=epoch, cache=cache, revision=revision)


def test_every_model_form_gives_the_same_predictions(subset, model, saved, offline, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(saved['cache']))
    images = subset['paths'][:8]
    forms = [TAG, model, saved['run'], str(saved['run']), f"local-dir:{saved['run']}",
             str(saved['run'] / 'model.safetensors'), saved['epoch'], f'hf-hub:{REPO}',
             f"hf-hub:{REPO}@{saved['revision']}"]
    expected = predict(TAG, images, topk=5, device='cpu').records()
    assert expected[0]['label_1'] in META['label_names']
    for form in forms:
        assert predict(form, images, topk=5, device='cpu').records() == expected, form


def test_hf_hub_model_in_a_fresh_offline_process(subset, saved, tmp_path):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE are all `python -m ggam_layers.predict hf-hub:...` needs."""
    out = tmp_path / 'hub.json'
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(saved['cache']), PYTHONPATH=str(PACKAGE_PARENT),
               OMP_NUM_THREADS='1')
    subprocess.run([sys.executable, '-m', 'ggam_layers.predict', f'hf-hub:{REPO}', *subset['paths'][:4], '--out',
                    str(out), '--device', 'cpu', '--no-progress'], env=env, check=True, capture_output=True,
                   text=True, timeout=240)
    assert json.loads(out.read_text()) == predict(TAG, subset['paths'][:4], device='cpu').records()


def test_a_ggam_name_without_trained_weights_is_refused_before_any_download(subset):
    with pytest.raises(ValueError, match=r"MODEL 'ggam_resnet50' has no trained GGAM weights.*"
                                         r'ggam_test_resnet\.synthetic'):
        predict('ggam_resnet50', subset['paths'][:1], device='cpu')
    with pytest.raises(ValueError, match="MODEL 'ggam_test_resnet.r160_in1k' has no trained GGAM weights"):
        predict('ggam_test_resnet.r160_in1k', subset['paths'][:1], device='cpu')


def test_topk_is_capped_at_the_number_of_classes_and_checked(subset):
    result = predict(TAG, subset['paths'][:2], topk=50, device='cpu')
    assert result.topk == 20 and len(result[0].labels) == 20 and sorted(result[0].classes) == list(range(20))
    for bad in (dict(topk=0), dict(batch_size=0), dict(workers=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            predict(TAG, subset['paths'][:1], device='cpu', **bad)
    with pytest.raises(ValueError, match='label_names has 3 names, but the model has num_classes=20'):
        predict(TAG, subset['paths'][:1], device='cpu', label_names=['a', 'b', 'c'])


def test_worker_processes_give_the_same_rows(subset):
    images = subset['paths'][:6]
    assert predict(TAG, images, batch_size=4, workers=2, device='cpu').records() == predict(
        TAG, images, batch_size=4, device='cpu').records()


# --- inputs ----------------------------------------------------------------------------------------------------------
def test_inputs_files_folders_and_lists(subset, tmp_path):
    paths = subset['paths']
    listing = tmp_path / 'lists' / 'images.txt'
    listing.parent.mkdir()
    rel = os.path.relpath(paths[3], listing.parent)
    listing.write_text(f'# two images\n{paths[2]}\n\n  {rel}  \n')
    got = collect_images([paths[0], subset['folder'] / 'sub', listing])
    sub = [p for p in paths if f'{os.sep}sub{os.sep}' in p]
    assert got == [paths[0]] + sub + [paths[2], os.path.join(str(listing.parent), rel)]
    assert collect_images(paths[5]) == [paths[5]]
    with pytest.raises(FileNotFoundError, match=r"INPUT '.*nope\.png': no such file or folder"):
        collect_images([paths[0], tmp_path / 'nope.png'])
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.md').write_text('not an image')
    with pytest.raises(ValueError, match='holds no images'):
        collect_images(tmp_path / 'empty')


def _truncated_jpeg(path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_unreadable_files_are_skipped_named_and_counted(subset, tmp_path, caplog, capsys):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    for p in subset['paths'][:3]:
        shutil.copy(p, folder)
    _truncated_jpeg(folder / 'cut.jpg')
    (folder / 'text.png').write_text('not a png')
    listing = tmp_path / 'list.txt'
    listing.write_text(f"{folder / '0000.png'}\n{tmp_path / 'gone.png'}\n")
    result = predict(TAG, [folder, listing], device='cpu')
    assert [Path(r.path).name for r in result] == ['0000.png', '0001.png', '0002.png', '0000.png']
    skipped = {Path(b.path).name: b.reason for b in result.skipped}
    assert set(skipped) == {'cut.jpg', 'text.png', 'gone.png'}
    assert skipped['cut.jpg'].startswith('truncated') and skipped['gone.png'] == 'no such file'
    assert skipped['text.png'] == 'not an image file PIL can read'
    assert all(f'skipping unreadable image {b.path}' in caplog.text for b in result.skipped)

    assert _cli(['predict', TAG, str(folder), '--device', 'cpu', '--no-progress']) == 0
    captured = capsys.readouterr()
    assert 'skipped 2 unreadable file(s)' in captured.err and str(folder / 'cut.jpg') in captured.err
    with pytest.raises(ValueError, match=r'none of the 1 input images could be read \(first: .*cut\.jpg: truncated'):
        predict(TAG, folder / 'cut.jpg', device='cpu')


# --- outputs ---------------------------------------------------------------------------------------------------------
def test_csv_json_and_table_outputs(subset, tmp_path, capsys):
    images = [str(p) for p in subset['paths'][:5]]
    expected = predict(TAG, images, topk=3, device='cpu')
    out_csv, out_json = tmp_path / 'p.csv', tmp_path / 'p.json'
    assert _cli(['predict', TAG, *images, '--topk', '3', '--out', str(out_csv), '--device', 'cpu']) == 0
    assert _cli(['predict', TAG, *images, '--topk', '3', '--out', str(out_json), '--batch-size', '2']) == 0
    with out_csv.open(newline='') as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ['path', 'label_1', 'score_1', 'label_2', 'score_2', 'label_3', 'score_3']
        rows = list(reader)
    rows_json = json.loads(out_json.read_text())
    assert [r['path'] for r in rows] == [r['path'] for r in rows_json] == images
    for row, row_json, want in zip(rows, rows_json, expected.records()):
        assert row_json.keys() == want.keys()
        for key, value in want.items():
            if key.startswith('score'):
                # the JSON run used batches of 2: float sums in another order, the same to 1e-4
                assert float(row[key]) == value and row_json[key] == pytest.approx(value, rel=1e-4)
            else:
                assert row[key] == row_json[key] == value

    # an existing --out is never replaced without --overwrite, and nothing runs before the refusal
    before = out_csv.read_bytes()
    assert re.search(r"--out '.*p\.csv' exists; pass --overwrite",
                     _cli_error(['predict', TAG, *images[:1], '--out', str(out_csv)], capsys))
    with pytest.raises(FileExistsError, match='exists'):
        write_predictions(expected, out_csv)
    assert out_csv.read_bytes() == before
    assert _cli(['predict', TAG, *images[:1], '--topk', '1', '--out', str(out_csv), '--overwrite']) == 0
    assert out_csv.read_text().splitlines()[0] == 'path,label_1,score_1'
    assert re.search(r"--out must end in \.csv or \.json .*got '.*p\.txt'",
                     _cli_error(['predict', TAG, *images[:1], '--out', str(tmp_path / 'p.txt')], capsys))

    capsys.readouterr()
    assert _cli(['predict', TAG, *images[:2], '--topk', '2', '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ['path', 'top-1', 'top-2']
    assert printed.strip() == format_table(predict(TAG, images[:2], topk=2, device='cpu'))
    first = expected[0]
    assert f'{first.labels[0]} ({first.scores[0]:.3f})' in printed


def test_labels_file_overrides_the_model_config(subset, tmp_path):
    labels = tmp_path / 'labels.txt'
    labels.write_text(''.join(f'class {i}\n' for i in range(20)))
    out = tmp_path / 'p.json'
    _cli(['predict', TAG, subset['paths'][0], '--topk', '1', '--labels', str(labels), '--out', str(out)])
    row = json.loads(out.read_text())[0]
    assert row['label_1'] == f"class {predict(TAG, subset['paths'][0], topk=1, device='cpu')[0].classes[0]}"


def test_cam_writes_one_overlay_png_per_image(subset, tmp_path, capsys):
    images = subset['paths'][N_SUBSET // 2 - 2:N_SUBSET // 2 + 2]  # two in the folder, two in its subfolder
    cam = tmp_path / 'cam'
    assert _cli(['predict', TAG, *images, '--cam', str(cam), '--batch-size', '3', '--device', 'cpu']) == 0
    assert 'wrote 4 Grad-CAM overlays' in capsys.readouterr().out
    written = sorted(cam.rglob('*.png'))
    names = [str(p.relative_to(cam)) for p in written]
    assert names == sorted([f'{Path(images[0]).stem}_cam.png', f'{Path(images[1]).stem}_cam.png',
                            f'sub{os.sep}{Path(images[2]).stem}_cam.png', f'sub{os.sep}{Path(images[3]).stem}_cam.png'])
    for png in written:
        with Image.open(png) as im:
            assert im.size == (3 * IMAGE_SIZE, IMAGE_SIZE)  # input | Grad-CAM | T
            strip = np.asarray(im.convert('RGB'), dtype=np.int16)
        source = next(p for p in images if Path(p).stem == png.stem[:-len('_cam')])
        with Image.open(source) as im:
            original = np.asarray(im.convert('RGB'), dtype=np.int16)
        assert np.abs(strip[:, :IMAGE_SIZE] - original).max() <= 1  # the first panel is the model's input
        assert np.abs(strip[:, IMAGE_SIZE:2 * IMAGE_SIZE] - original).mean() > 5  # the heat map is drawn over it

    with pytest.raises(FileExistsError, match='--cam: 4 of the overlay files exist already'):
        predict(TAG, images, cam_dir=cam, device='cpu')
    assert len(predict(TAG, images, cam_dir=cam, overwrite=True, device='cpu').cam_files) == 4
    plain = timm.create_model('test_resnet', num_classes=3).eval()
    with pytest.raises(ValueError, match='cam_dir .* needs a GGAM model; the model is a ResNet'):
        predict(plain, images[:1], cam_dir=tmp_path / 'plain_cam', device='cpu')


def test_plain_timm_models_predict_too(subset):
    torch.manual_seed(0)
    plain = timm.create_model('test_resnet', num_classes=3).eval()
    result = predict(plain, subset['paths'][:2], topk=2, device='cpu')
    assert [r.labels for r in result] == [tuple(str(c) for c in r.classes) for r in result]  # no names: indices


def test_ggam_layers_command_line_has_predict(subset, capsys):
    assert 'ggam_layers.predict' in cli.CLI_MODULES
    assert cli.main(['predict', TAG, subset['paths'][0], '--topk', '1', '--no-progress']) == 0
    row = predict(TAG, subset['paths'][0], topk=1, device='cpu')[0]
    assert capsys.readouterr().out.splitlines()[1].split('  ')[0] == row.path
    with pytest.raises(SystemExit) as e:  # a user error: the message, exit status 2
        cli.main(['predict', TAG, 'no/such/image.png'])
    assert e.value.code == 2

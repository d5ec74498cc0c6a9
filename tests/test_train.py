"""Training loop, checkpoints, resume, evaluation and the command line, on a tiny synthetic set."""
import csv
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ggam_layers._files import TMP_PREFIX, WEIGHTS_NAME, atomic_write, atomic_write_text
from ggam_layers.cli import build_parser, main
from ggam_layers.data.loader import EpochSampler, SeededTransformDataset, derive_seed
from ggam_layers.train import (
    PRESETS,
    TrainConfig,
    compare_requested,
    config_from_args,
    evaluate,
    lr_factor,
    train,
    train_compare,
)
from ggam_layers.train.checkpoint import STATE_NAME, clean_partial, latest_checkpoint, list_checkpoints, save_checkpoint
from ggam_layers.train.cli import DEFAULT_PRESET
from ggam_layers.train.metrics import METRIC_COLUMNS

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    model='test_resnet', dataset_kwargs={'num_classes': 4, 'samples_per_class': 6}, img_size=64, epochs=2,
    batch_size=8, eval_batch_size=16, threads=1, progress=False)
TINY_ARGS = ['--preset', 'synthetic',
             '--model', 'test_resnet', '--data-arg', 'num_classes=4', '--data-arg', 'samples_per_class=6',
             '--img-size', '64', '--epochs', '2', '--batch-size', '8', '--threads', '1', '--no-progress']


def tiny(out, **kw) -> TrainConfig:
    """The 'synthetic' preset (what the CLI runs) with TINY on top: the same config as `train TINY_ARGS`."""
    return TrainConfig.from_preset('synthetic', **{**TINY, 'output': str(out), **kw})


def _files(root: Path):
    return [p for p in root.rglob('*')]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp('run') / 'ggam'
    return out, train(tiny(out))


def test_train_writes_run_directory(trained):
    out, result = trained
    assert result['finished'] and result['epochs_done'] == 2 and result['world_size'] == 1
    assert 0.0 <= result['test_top1'] <= result['test_top5'] <= 1.0
    assert result['train_ggam'] is not None and result['train_loss'] > 0
    for name in ('config.json', WEIGHTS_NAME, 'metrics.csv', 'metrics.jsonl', 'results.json'):
        assert (out / name).is_file(), name
    assert [p.name for p in list_checkpoints(out)] == ['epoch-0001', 'epoch-0002']  # keep_checkpoints=2
    assert not [p for p in _files(out) if p.name.startswith(TMP_PREFIX)]
    # training state: tensors and plain Python only
    state = torch.load(latest_checkpoint(out) / STATE_NAME, weights_only=True)
    assert state['epoch'] == 2 and len(state['history']) == 2
    # the exported weights are the last checkpoint's
    _same_weights(out / WEIGHTS_NAME, latest_checkpoint(out) / WEIGHTS_NAME)


def test_metrics_files_have_expected_columns(trained):
    out, result = trained
    with open(out / 'metrics.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == METRIC_COLUMNS
    assert [int(r['epoch']) for r in rows] == [1, 2]
    for col in ('train_loss', 'train_ce', 'train_ggam', 'train_top1', 'test_top1', 'test_top5', 'lr_backbone',
                'lr_head', 'images_per_s', 'epoch_time_s'):
        assert all(r[col] != '' for r in rows), col
    lines = [json.loads(x) for x in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in lines] == [1, 2]
    assert lines[-1]['test_top1'] == result['test_top1']
    assert float(rows[0]['lr_head']) > float(rows[1]['lr_head'])  # cosine decay


def test_eval_reproduces_recorded_accuracy(trained, capsys):
    out, result = trained
    res = evaluate(str(out), progress=False)
    assert res['top1'] == result['test_top1'] and res['top5'] == result['test_top5']
    assert res['count'] == 24 and res['matches_recorded'] is True
    assert main(['eval', '--checkpoint', str(out), '--no-progress']) == 0
    assert 'the same as recorded at the end of training' in capsys.readouterr().out


def test_run_directory_loads_with_timm(trained):
    import timm

    from ggam_layers.hub import load_checkpoint
    out, _ = trained
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    ref = load_file(str(out / WEIGHTS_NAME))
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    loaded, info = load_checkpoint(out)  # what `ggam-layers publish` reads
    assert info['metrics']['test_top1'] == json.loads((out / 'results.json').read_text())['test_top1']
    assert len(info['label_names']) == 4


def test_resume_gives_the_same_weights(tmp_path):
    full = train(tiny(tmp_path / 'full'))
    part = train(tiny(tmp_path / 'part', stop_after=1))
    assert part['epochs_done'] == 1 and not part['finished']
    resumed = train(tiny(tmp_path / 'part', resume=True))
    assert resumed['finished']
    _same_weights(tmp_path / 'full' / WEIGHTS_NAME, tmp_path / 'part' / WEIGHTS_NAME)
    assert resumed['history'] == [{**r, 'images_per_s': resumed['history'][i]['images_per_s'],
                                   'epoch_time_s': resumed['history'][i]['epoch_time_s'],
                                   'eval_time_s': resumed['history'][i]['eval_time_s']}
                                  for i, r in enumerate(full['history'])]


def test_resume_refuses_a_changed_recipe(tmp_path):
    train(tiny(tmp_path / 'run', stop_after=1, epochs=2))
    with pytest.raises(ValueError, match='lr='):
        train(tiny(tmp_path / 'run', resume=True, lr=0.5))


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not empty'):
        train(tiny(out, epochs=1))
    train(tiny(out, epochs=1, overwrite=True))
    assert (out / 'notes.txt').read_text() == 'keep me'
    with pytest.raises(SystemExit):
        main(['train', *TINY_ARGS, '--epochs', '1', '--output', str(out)])


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'config.json'
    atomic_write_text(path, 'old')

    def partial_then_crash(tmp):
        with open(tmp, 'w') as f:
            f.write('par')
        raise KeyboardInterrupt  # killed while writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, partial_then_crash)
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['config.json']
    # a crash between the complete write and the rename
    monkeypatch.setattr(os, 'replace', lambda *a: (_ for _ in ()).throw(OSError('simulated crash')))
    with pytest.raises(OSError, match='simulated crash'):
        atomic_write_text(path, 'new')
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['config.json']


def test_failed_checkpoint_leaves_the_previous_one(trained, tmp_path):
    src, _ = trained
    out = tmp_path / 'run'
    model = torch.nn.Linear(2, 2)
    save_checkpoint(out, 1, model, {'epoch': 1})
    before = load_file(str(out / WEIGHTS_NAME))
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):  # unpicklable: fails after the weights
        save_checkpoint(out, 2, model, {'epoch': 2, 'bad': lambda: None})
    assert [p.name for p in list_checkpoints(out)] == ['epoch-0001']
    assert torch.equal(load_file(str(out / WEIGHTS_NAME))['weight'], before['weight'])
    assert not [p for p in _files(out) if p.name.startswith(TMP_PREFIX)]
    # leftovers of a killed write are ignored and cleaned
    leftover = out / 'checkpoints' / f'{TMP_PREFIX}epoch-0002.abc'
    leftover.mkdir()
    (leftover / WEIGHTS_NAME).write_bytes(b'partial')
    assert latest_checkpoint(out).name == 'epoch-0001'
    assert clean_partial(out) == [leftover] and not leftover.exists()


@pytest.mark.slow
def test_kill_during_training_then_resume(tmp_path):
    """SIGKILL a real run after its first checkpoint; resuming finishes it with the uninterrupted run's weights."""
    out = tmp_path / 'killed'
    cmd = [sys.executable, '-m', 'ggam_layers', 'train', *TINY_ARGS, '--epochs', '30', '--output', str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while latest_checkpoint(out) is None and proc.poll() is None:
            try:
                proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = latest_checkpoint(out)
    assert done is not None and (out / 'config.json').is_file()
    # resume with a short schedule is refused (the recipe is fixed), the same schedule continues
    result = train(tiny(out, epochs=30, stop_after=int(done.name.split('-')[1]) + 1, resume=True))
    assert result['epochs_done'] == int(done.name.split('-')[1]) + 1
    train(tiny(tmp_path / 'ref', epochs=30, stop_after=result['epochs_done']))
    _same_weights(out / WEIGHTS_NAME, tmp_path / 'ref' / WEIGHTS_NAME)


def test_cli_train_eval_and_compare(tmp_path, capsys):
    out = tmp_path / 'cmp'
    assert main(['train', '--compare-plain', *TINY_ARGS, '--epochs', '1', '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'GGAM + test_resnet' in printed and 'plain test_resnet' in printed and 'test top-1' in printed
    for name in ('ggam', 'plain'):
        assert (out / name / WEIGHTS_NAME).is_file()
    cmp = json.loads((out / 'comparison.json').read_text())
    assert cmp['plain']['model'] == 'plain' and cmp['plain']['train_ggam'] is None
    config = json.loads((out / 'plain' / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['ggam_layers']['kind'] == 'plain'
    assert main(['eval', '--checkpoint', str(out / 'plain'), '--no-progress']) == 0
    assert 'the same as recorded' in capsys.readouterr().out


def test_train_compare_api_shares_the_recipe(tmp_path):
    res = train_compare(tiny(tmp_path / 'cmp', epochs=1))
    g, p = res['ggam'], res['plain']
    assert g['model'] == 'ggam' and p['model'] == 'plain'
    cg = json.loads((tmp_path / 'cmp/ggam/config.json').read_text())['ggam_layers']['train_config']
    cp = json.loads((tmp_path / 'cmp/plain/config.json').read_text())['ggam_layers']['train_config']
    assert {k: v for k, v in cg.items() if k not in ('plain', 'output')} == \
        {k: v for k, v in cp.items() if k not in ('plain', 'output')}


def _parse(argv):
    args = build_parser().parse_args(argv)
    args._argv = argv[1:]
    return args


def test_cli_presets_and_overrides():
    cfg, compare = config_from_args(_parse(['train']))
    assert cfg == TrainConfig.from_preset(DEFAULT_PRESET) and compare is None
    assert DEFAULT_PRESET == 'synthetic_finetune' and cfg.pretrained_file  # the default fine-tunes
    assert config_from_args(_parse(['train', '--preset', 'synthetic']))[0] == TrainConfig.from_preset('synthetic')
    assert compare_requested(compare, []) is True  # `ggam-layers train` alone: GGAM vs plain
    assert compare_requested(None, ['--epochs', '2']) is False
    assert compare_requested(True, ['--epochs', '2']) is True

    cfg, _ = config_from_args(_parse(['train', '--preset', 'paper', '--data-root', '/data/CUB']))
    for k, v in PRESETS['paper'].items():
        assert getattr(cfg, k) == v, k
    assert (cfg.img_size, cfg.opt, cfg.lr, cfg.backbone_lr_scale, cfg.weight_decay, cfg.epochs, cfg.batch_size) == (
        448, 'sgd', 0.1, 0.1, 5e-4, 100, 16)
    assert cfg.amp and cfg.channels_last and cfg.train_aug == 'paper' and cfg.data_root == '/data/CUB'

    cfg, _ = config_from_args(_parse([
        'train', '--preset', 'paper', '--lr', '0.05', '--epochs', '3', '--no-ggam-loss', '--no-channel-attn',
        '--squash', 'softmax', '--kl', 'forward', '--target-norm', 'standardize', '--cam-temperature', '0.5',
        '--spatial-norm', 'sigmoid', '--cam-class', 'label', '--no-amp', '--model', 'resnet18',
        '--data-arg', 'difficulty=0.5', '--pretrained-file', __file__]))
    assert (cfg.lr, cfg.epochs, cfg.lam, cfg.channel_attn, cfg.spatial_attn) == (0.05, 3, 0.0, False, True)
    assert (cfg.squash, cfg.kl, cfg.target_norm, cfg.cam_temperature) == ('softmax', 'forward', 'standardize', 0.5)
    assert (cfg.spatial_norm, cfg.cam_class, cfg.amp, cfg.model) == ('sigmoid', 'label', False, 'resnet18')
    assert cfg.dataset_kwargs == {'difficulty': 0.5} and cfg.pretrained_file == __file__
    assert cfg.img_size == 448  # untouched preset value

    cfg, _ = config_from_args(_parse(['train', '--plain', '--lam', '3']))
    assert cfg.plain and cfg.lam == 3.0
    with pytest.raises(ValueError, match='exclude'):
        config_from_args(_parse(['train', '--plain', '--compare-plain']))
    with pytest.raises(TypeError, match='unknown TrainConfig fields'):
        TrainConfig.from_preset('paper', learning_rate=1)
    with pytest.raises(ValueError, match='preset'):
        TrainConfig.from_preset('imagenet')
    with pytest.raises(ValueError, match='opt'):
        TrainConfig(opt='adamx').validate()  # not a timm optimizer ('lamb' is one: --opt takes timm's names)


def _commands(parser) -> dict:
    return next(a for a in parser._actions if a.dest == 'command').choices


def test_cli_registers_module_subcommands():
    # every module of CLI_MODULES is part of the package: each adds its subcommands, each with the function it runs
    sub = _commands(build_parser())
    assert {'train', 'eval'} <= set(sub)
    assert set(sub) == {'train', 'eval', 'predict', 'publish', 'cam'}
    assert all(callable(parser.get_default('func')) for parser in sub.values())
    # a module that is not there, or has no register_cli, adds nothing
    assert set(_commands(build_parser(('ggam_layers.no_such_module', 'ggam_layers.train.cli', 'ggam_layers.model')))
               ) == {'train', 'eval'}


def test_cli_resume_takes_the_saved_config(tmp_path):
    out = tmp_path / 'run'
    assert main(['train', *TINY_ARGS, '--stop-after', '1', '--output', str(out)]) == 0
    cfg, compare = config_from_args(_parse(['train', '--resume', str(out), '--no-progress']))
    assert cfg.resume and cfg.output == str(out) and cfg.model == 'test_resnet' and cfg.stop_after is None
    assert cfg.dataset_kwargs == {'difficulty': 1.0, 'num_classes': 4, 'samples_per_class': 6} and compare is False
    assert main(['train', '--resume', str(out), '--no-progress']) == 0
    assert json.loads((out / 'results.json').read_text())['finished']


def test_preset_backbone_and_data_arguments_go_with_their_backbone_and_dataset():
    base = TrainConfig.from_preset('synthetic')
    assert base.model == 'test_resnet' and base.model_kwargs == {'output_stride': 16} and base.img_size == 112
    assert base.dataset_kwargs == {'difficulty': 1.0}
    # --data-arg / --model-arg add to the preset's
    added = TrainConfig.from_preset('synthetic', dataset_kwargs={'num_classes': 4}, model_kwargs={'drop_rate': 0.1})
    assert added.dataset_kwargs == {'difficulty': 1.0, 'num_classes': 4}
    assert added.model_kwargs == {'output_stride': 16, 'drop_rate': 0.1}
    harder = TrainConfig.from_preset('synthetic', dataset_kwargs={'difficulty': 0.5})
    assert harder.dataset_kwargs == {'difficulty': 0.5}
    # another backbone or dataset starts from none of them
    assert TrainConfig.from_preset('synthetic', model='resnet18').model_kwargs == {}
    assert TrainConfig.from_preset('synthetic', dataset='cub', data_root='x').dataset_kwargs == {}
    cfg, _ = config_from_args(_parse(['train', '--preset', 'synthetic', '--model', 'resnet18', '--data-arg',
                                      'num_classes=4']))
    assert cfg.model_kwargs == {} and cfg.dataset_kwargs == {'difficulty': 1.0, 'num_classes': 4}
    # the default preset's weights go with its backbone too
    cfg, _ = config_from_args(_parse(['train', '--model', 'resnet18', '--data-arg', 'num_classes=4']))
    assert cfg.model_kwargs == {} and cfg.pretrained_file is None
    assert cfg.dataset_kwargs == {'difficulty': 0.7, 'train_samples_per_class': 30, 'num_classes': 4}


def test_lr_schedule():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 100, 0) == pytest.approx(1.0)
    assert lr_factor(50, 100, 0, 'none') == 1.0
    assert lr_factor(100, 100, 0, 'cosine', 0.1) == pytest.approx(0.1)


def test_sampler_depends_on_seed_and_epoch_and_shards_the_global_batch():
    s = EpochSampler(20, seed=3)
    s.set_epoch(4)
    order = [i for i, _ in s]
    assert sorted(order) == list(range(20)) and all(e == 4 for _, e in s)
    s2 = EpochSampler(20, seed=3)
    s2.set_epoch(4)
    assert [i for i, _ in s2] == order
    s2.set_epoch(5)
    assert [i for i, _ in s2] != order
    ranks = []
    for r in range(2):
        rs = EpochSampler(20, seed=3, rank=r, world_size=2)
        rs.set_epoch(4)
        ranks.append([i for i, _ in rs])
    for step in range(5):  # global batch 4 = 2 ranks x 2
        assert sorted(ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2]) == \
            sorted(order[4 * step:4 * step + 4])


def test_augmentation_depends_only_on_seed_epoch_index():
    from torchvision import transforms as T

    data = [(torch.arange(12.).view(1, 3, 4), 0)] * 3
    ds = SeededTransformDataset(data, T.Compose([T.RandomCrop(2), T.RandomHorizontalFlip()]), seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = [ds[(i, 7)][0] for i in range(3)]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    b = [ds[(i, 7)][0] for i in reversed(range(3))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 3, 2)


def test_examples(capsys):
    import runpy
    minimal = runpy.run_path(str(REPO / 'examples' / 'train_minimal.py'), run_name='example')
    log = minimal['main'](['--model', 'test_resnet', '--steps', '6', '--threads', '1'])
    assert len(log) == 6 and all(ggam >= 0 and abs(loss - ce - ggam) < 1e-4 for loss, ce, ggam in log)
    assert 'CE' in capsys.readouterr().out
    cub = runpy.run_path(str(REPO / 'examples' / 'train_cub_paper.py'), run_name='example')
    assert cub['main'](['/nonexistent/CUB_200_2011']) == 2
    assert 'CUB-200-2011 not found' in capsys.readouterr().err


def test_pretrained_file_loads_backbone_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    from ggam_layers.train import build_model
    src = timm.create_model('test_resnet', num_classes=0)
    path = tmp_path / 'backbone.safetensors'
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    for plain in (False, True):
        model = build_model(TrainConfig(model='test_resnet', plain=plain, pretrained_file=str(path)), 4)
        body = model if plain else model.backbone
        own = body.state_dict()
        assert all(torch.equal(own[k], v) for k, v in src.state_dict().items()), plain
        assert model.num_classes == 4


def test_workers_do_not_change_the_result(tmp_path):
    """Augmentation is seeded per image, so DataLoader workers give the same batches as the main process."""
    a = train(tiny(tmp_path / 'w0', epochs=1, workers=0))
    b = train(tiny(tmp_path / 'w2', epochs=1, workers=2))
    _same_weights(tmp_path / 'w0' / WEIGHTS_NAME, tmp_path / 'w2' / WEIGHTS_NAME)
    assert a['train_loss'] == b['train_loss']


def test_default_workers_follow_the_data(tmp_path):
    """workers=None: none for the in-memory synthetic set, the usable cores (at most 8) for image files."""
    from torchvision.datasets import ImageFolder

    from ggam_layers.data.synthetic import SyntheticFineGrained
    from ggam_layers.train.build import usable_cores
    from ggam_layers.train.distributed import DistInfo
    from ggam_layers.train.evaluate import loader_workers

    (tmp_path / 'a').mkdir()
    from PIL import Image
    Image.new('RGB', (8, 8)).save(tmp_path / 'a' / 'x.png')
    folder = ImageFolder(str(tmp_path))
    synth = SyntheticFineGrained('train', num_classes=2, samples_per_class=1)
    cfg = TrainConfig()
    assert cfg.workers is None and PRESETS['paper'].get('workers') is None
    assert loader_workers(cfg, synth, DistInfo()) == 0
    assert loader_workers(cfg, folder, DistInfo()) == min(8, usable_cores())
    assert loader_workers(TrainConfig(workers=3), synth, DistInfo()) == 3
    with pytest.raises(ValueError, match='workers must be >= 0'):
        TrainConfig(workers=-1).validate()

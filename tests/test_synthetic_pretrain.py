"""The generic pretraining corpus: disjoint from the fine-grained task, deterministic, cached under complete keys."""
import hashlib
import inspect
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import ToTensor

import ggam_layers
from ggam_layers.data import create_dataset, list_datasets
from ggam_layers.data.synthetic import BEAK_SHAPES, PART_COLORS, SyntheticFineGrained
from ggam_layers.data.synthetic_pretrain import (
    PRETRAIN_COLORS,
    PRETRAIN_GENERATOR_PARAMS,
    PRETRAIN_NUM_CLASSES,
    PRETRAIN_PARTS,
    PRETRAIN_SHAPES,
    PRETRAIN_TEXTURES,
    SyntheticPretrain,
    pretrain_class_table,
)
from ggam_layers.data.tensor_cache import cache_key, generator_params, synthetic_tensors

FINE_GRAINED_MAX = len(PART_COLORS) ** 2
BACKBONE = Path(ggam_layers.__file__).parent / 'pretrained' / 'test_resnet.synthetic_pretrain.safetensors'
RECORD = BACKBONE.with_suffix('.json')


def _ds(split: str = 'train', **kw) -> SyntheticPretrain:
    args = dict(num_classes=6, samples_per_class=2, image_size=32, seed=3)
    args.update(kw)
    return SyntheticPretrain(split, **args)


def test_no_class_definition_is_shared_with_the_fine_grained_task() -> None:
    fine = SyntheticFineGrained(num_classes=FINE_GRAINED_MAX, samples_per_class=1)
    pre = SyntheticPretrain(samples_per_class=1)
    fine_keys = set(itertools.chain.from_iterable(a.keys() for a in fine.class_attributes))
    pre_keys = set(itertools.chain.from_iterable(a.keys() for a in pre.class_attributes))
    assert fine_keys == {'beak', 'crest', 'eye_ring', 'wing_bar'}
    assert pre_keys == {'shape', 'colour', 'parts', 'texture'}
    assert not fine_keys & pre_keys  # no attribute, so neither the deciding cue nor its redundant cues, is shared
    assert not set(fine.class_names) & set(pre.class_names)
    fine_words = {'bird', 'beak', 'crest', 'crested', 'eye', 'ring', 'wing', 'bar', *BEAK_SHAPES}
    for name in pre.class_names:
        words = set(name.replace('-', ' ').split())
        assert not words & fine_words, name
    # no class is decided by a part's colour: the colour is the body's, the parts have a shape and a place only
    assert set(PRETRAIN_PARTS).isdisjoint(PART_COLORS) and set(PRETRAIN_SHAPES).isdisjoint(PART_COLORS)
    for fa, pa in itertools.product(fine.class_attributes, pre.class_attributes):
        assert fa != pa


def test_class_table_is_a_full_factorial() -> None:
    table = pretrain_class_table()
    assert len(table) == PRETRAIN_NUM_CLASSES == 96
    combos = {(a['shape'], a['colour'], a['parts'], a['texture']) for a in table}
    assert combos == set(itertools.product(PRETRAIN_SHAPES, PRETRAIN_COLORS, PRETRAIN_PARTS, PRETRAIN_TEXTURES))
    # every attribute is needed: classes that differ in one attribute only exist for each of them
    for key in ('shape', 'colour', 'parts', 'texture'):
        rest = [tuple(v for k, v in a.items() if k != key) for a in table]
        assert len(set(rest)) < len(rest), key
    assert pretrain_class_table(24) == table[:24]
    assert {a['shape'] for a in table[:24]} == {'ellipse'}
    assert len({(a['colour'], a['parts'], a['texture']) for a in table[:24]}) == 24


def test_shapes_labels_and_factory() -> None:
    ds = _ds()
    assert len(ds) == 12 and ds.num_classes == 6 and len(ds.class_names) == 6
    assert ds.targets == [i % 6 for i in range(12)]
    img, label = ds[7]
    assert img.size == (32, 32) and label == 1
    arr, ann = ds.generate(7)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8 and ann['label'] == 1
    assert ds.materialize().shape == (12, 32, 32, 3)
    t = _ds(transform=ToTensor(), target_transform=lambda y: y + 10)[0]
    assert isinstance(t[0], torch.Tensor) and t[0].shape == (3, 32, 32) and t[1] == 10
    for split, n in (('train', 64), ('val', 16), ('test', 20)):
        d = SyntheticPretrain(split)
        assert len(d) == 96 * n and d.image_size == 112 and d.difficulty == 0.6
    assert 'synthetic_pretrain' in list_datasets()
    val = create_dataset('synthetic-pretrain', split='validation', num_classes=4, samples_per_class=1)
    assert isinstance(val, SyntheticPretrain) and val.split == 'val' and val.num_classes == 4
    for x0, y0, x1, y1 in (ann['object_box'], ann['part_box']):
        assert 0 <= x0 <= x1 <= 32 and 0 <= y0 <= y1 <= 32


@pytest.mark.parametrize('kwargs,match', [
    (dict(split='dev'), 'split'), (dict(num_classes=97), 'num_classes'), (dict(num_classes=1), 'num_classes'),
    (dict(samples_per_class=0), 'samples_per_class'), (dict(image_size=8), 'image_size'),
    (dict(difficulty=-0.1), 'difficulty'), (dict(num_distractors=-1.0), 'num_distractors'),
    (dict(occlusion_prob=1.5), 'occlusion_prob'), (dict(part_scale=0.0), 'part_scale'),
    (dict(difficulty=float('nan')), 'difficulty'), (dict(part_scale=float('nan')), 'part_scale')])
def test_bad_arguments_are_named(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        _ds(**kwargs)


def test_deterministic_per_seed_split_and_index() -> None:
    a, b = _ds(), _ds(cache=False)
    for i in (5, 0, 11, 5):
        assert np.array_equal(a.generate(i)[0], b.generate(i)[0])
        assert a.annotation(i) == b.annotation(i)
    assert not b._images  # cache=False keeps nothing
    assert not np.array_equal(a.generate(0)[0], a.generate(6)[0])  # same class, another image
    assert not np.array_equal(a.generate(0)[0], _ds(seed=4).generate(0)[0])
    assert not np.array_equal(a.generate(0)[0], _ds(split='test').generate(0)[0])
    with pytest.raises(IndexError):
        a.generate(12)
    assert np.array_equal(a.generate(-1)[0], a.generate(11)[0])


def test_parts_sit_where_their_configuration_says() -> None:
    ds = SyntheticPretrain('train', samples_per_class=1, image_size=64, difficulty=0.0)
    for label, attrs in enumerate(ds.class_attributes):
        ann = ds.annotation(label)
        cx, cy = ann['center']
        x0, y0, x1, y1 = ann['part_box']
        dx, dy = (x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy
        if attrs['parts'] == 'spikes':  # on one side (the figure may be flipped)
            assert abs(dx) > abs(dy), (label, attrs)
        else:  # knobs and horns on top
            assert dy < 0 and abs(dy) > abs(dx), (label, attrs)


def test_texture_is_drawn_inside_the_object_only() -> None:
    ds = SyntheticPretrain('train', samples_per_class=1, image_size=64, difficulty=0.0)
    solid, striped = (ds._render(np.random.default_rng(0), label) for label in (0, 1))  # differ in texture only
    diff = np.abs(solid[0].astype(int) - striped[0].astype(int)).sum(-1) > 0
    assert diff.any()
    x0, y0, x1, y1 = solid[1]['object_box']
    outside = diff.copy()
    outside[int(y0):int(y1) + 2, int(x0):int(x1) + 2] = False
    assert not outside.any()


def test_cache_keys_follow_every_generator_parameter(tmp_path) -> None:
    own = set(inspect.signature(SyntheticPretrain).parameters) - {'transform', 'target_transform', 'cache'}
    assert own == set(PRETRAIN_GENERATOR_PARAMS)  # a new generator argument must join the cache key
    changed = {'split': 'test', 'num_classes': 5, 'samples_per_class': 3, 'image_size': 40, 'seed': 4,
               'difficulty': 0.3, 'num_distractors': 2.0, 'occlusion_prob': 0.1, 'part_scale': 1.5}
    assert set(changed) == set(PRETRAIN_GENERATOR_PARAMS)
    base = cache_key(_ds())
    keys = {cache_key(_ds(**{name: value})) for name, value in changed.items()}
    assert base not in keys and len(keys) == len(changed)
    fine = SyntheticFineGrained('train', num_classes=6, samples_per_class=2, image_size=32, seed=3)
    assert cache_key(fine) != base  # the same arguments to another generator
    params = generator_params(_ds())
    assert params['generator'] == 'SyntheticPretrain' and len(params['generator_md5']) == 64
    # the md5 of both sources: the pretraining generator and the fine-grained one whose drawing helpers it uses
    sources = (Path(ggam_layers.__file__).parent / 'data' / name for name in ('synthetic_pretrain.py', 'synthetic.py'))
    assert params['generator_md5'] == ''.join(hashlib.md5(f.read_bytes()).hexdigest() for f in sources)

    ds = _ds()
    images, targets = synthetic_tensors(ds, None, cache_dir=tmp_path)
    again, _ = synthetic_tensors(_ds(), None, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1 and torch.equal(images, again)
    assert images.shape == (12, 3, 32, 32) and targets.tolist() == ds.targets
    assert torch.equal(images[3].permute(1, 2, 0), torch.from_numpy(ds.generate(3)[0]))


def test_cache_key_follows_the_generator_sources(monkeypatch) -> None:
    import ggam_layers.data.synthetic_pretrain as sp

    before = cache_key(_ds())
    monkeypatch.setattr(sp, '_source_md5', lambda module: '0' * 32)  # an edited source
    assert cache_key(_ds()) != before


def _git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def test_shipped_backbone_matches_its_record() -> None:
    record = json.loads(RECORD.read_text())
    info = record['ggam_layers']
    data = BACKBONE.read_bytes()
    assert len(data) == info['bytes'] <= 10 * 2**20
    assert hashlib.sha256(data).hexdigest() == info['sha256']
    assert record['architecture'] == 'test_resnet' and record['model_args']['output_stride'] == 16
    assert record['label_names'] == SyntheticPretrain(samples_per_class=1).class_names
    assert info['dataset']['name'] == 'synthetic_pretrain' and 'synthetic_pretrain' in info['recipe']
    assert '--plain' in info['recipe']


@pytest.mark.parametrize('plain', [True, False])
def test_shipped_backbone_loads_through_pretrained_file(plain: bool) -> None:
    from safetensors.torch import load_file

    from ggam_layers.train import TrainConfig, build_model

    cfg = TrainConfig.from_preset('synthetic', plain=plain, pretrained_file=str(BACKBONE))
    model = build_model(cfg, num_classes=20)
    backbone = model if plain else model.backbone
    own, stored = backbone.state_dict(), load_file(str(BACKBONE))
    loaded = [k for k in stored if not k.startswith('fc.')]
    assert len(loaded) == 90 and all(torch.equal(own[k], stored[k]) for k in loaded)
    assert model.get_classifier().out_features == 20  # the 96-way fc of the pretraining task is dropped
    with torch.no_grad():
        assert backbone.forward_features(torch.zeros(1, 3, 112, 112)).shape[-2:] == (7, 7)


@pytest.mark.slow
def test_shipped_backbone_reproduces_its_pretraining_accuracy() -> None:
    import timm
    from PIL import Image
    from safetensors.torch import load_file

    from ggam_layers.data.loader import build_transform

    record = json.loads(RECORD.read_text())
    info = record['ggam_layers']
    ds = SyntheticPretrain('test', **info['dataset']['kwargs'])
    model = timm.create_model(record['architecture'], **record['model_args']).eval()  # 96 classes, output stride 16
    model.load_state_dict(load_file(str(BACKBONE)))
    transform = build_transform(record['pretrained_cfg'], False)  # the run's evaluation transform
    correct = 0
    with torch.no_grad():
        for start in range(0, len(ds), 250):
            idx = range(start, min(len(ds), start + 250))
            x = torch.stack([transform(Image.fromarray(ds.generate(i)[0])) for i in idx])
            correct += int((model(x).argmax(1) == torch.tensor([ds.targets[i] for i in idx])).sum())
    source = Path(ggam_layers.__file__).parent / 'data' / 'synthetic_pretrain.py'
    assert abs(correct / len(ds) - info['metrics']['test_top1']) <= 1 / len(ds), (
        f'the shipped backbone no longer reproduces its pretraining accuracy; the generator is blob '
        f'{_git_blob(source)}, it was trained on {info["dataset"]["generator_git_blob"]}: retrain and re-export '
        '(docs/pretraining.md)')


def test_synthetic_finetune_preset_starts_from_the_shipped_backbone() -> None:
    """The preset of the paper's setting: the shipped weights, 30 training images per class, the test split's 50."""
    from safetensors.torch import load_file

    from ggam_layers.train import TrainConfig, build_datasets, build_model

    cfg = TrainConfig.from_preset('synthetic_finetune', img_size=32, dataset_kwargs={'num_classes': 3})
    assert Path(cfg.pretrained_file).resolve() == BACKBONE.resolve() and cfg.backbone_lr_scale == 0.1
    train_ds, test_ds = build_datasets(cfg)
    assert (len(train_ds), len(test_ds)) == (3 * 30, 3 * 50)
    assert train_ds.difficulty == test_ds.difficulty == 0.7
    own, stored = build_model(cfg, num_classes=3).backbone.state_dict(), load_file(str(BACKBONE))
    assert all(torch.equal(own[k], stored[k]) for k in stored if not k.startswith('fc.'))
    other = TrainConfig.from_preset('synthetic_finetune', model='resnet10t')
    assert other.pretrained_file is None and other.model_kwargs == {}  # the weights go with the preset's backbone
    sized = TrainConfig.from_preset('synthetic_finetune', dataset_kwargs={'samples_per_class': 8})
    assert sized.dataset_kwargs == {'difficulty': 0.7, 'samples_per_class': 8}  # it sizes every split

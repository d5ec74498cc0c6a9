"""The cached-tensor, on-device data path equals the DataLoader path, and its cache follows the generator."""
import os

import pytest
import torch

from ggam_layers.data.device import DeviceLoader, split_transform
from ggam_layers.data.loader import EpochSampler, SeededTransformDataset, ShardSampler, build_transform
from ggam_layers.data.synthetic import SyntheticFineGrained
from ggam_layers.data.tensor_cache import GENERATOR_PARAMS, cache_key, synthetic_tensors


def _data_config(size: int, crop_pct: float = 1.0):
    return {'input_size': (3, size, size), 'interpolation': 'bilinear', 'mean': (0.485, 0.456, 0.406),
            'std': (0.229, 0.224, 0.225), 'crop_pct': crop_pct, 'crop_mode': 'center'}


def _ds(**kw):
    args = dict(num_classes=4, samples_per_class=3, image_size=32, seed=3)
    args.update(kw)
    return SyntheticFineGrained('train', **args)


@pytest.mark.parametrize('train_aug,crop_pct,is_training', [
    ('flip', 1.0, True), ('paper', 0.875, True), ('none', 1.0, True), ('flip', 0.875, False), ('flip', 1.0, False)])
def test_device_batch_equals_dataloader_batch(tmp_path, train_aug, crop_pct, is_training):
    ds = _ds()
    transform = build_transform(_data_config(28, crop_pct), is_training, train_aug, hflip=0.5)
    seed, epoch = 7, 2
    if is_training:
        sampler = EpochSampler(len(ds), seed=seed, shuffle=True)
        sampler.set_epoch(epoch)
    else:
        sampler = ShardSampler(len(ds))
    cpu_set = SeededTransformDataset(ds, transform, seed=seed, seeded=is_training)
    cpu = [cpu_set[k] for k in sampler]
    pre, augment = split_transform(transform)
    images, targets = synthetic_tensors(ds, pre, cache_dir=tmp_path)
    loader = DeviceLoader(images, targets, batch_size=5, sampler=sampler, augment=augment, device='cpu', seed=seed,
                          seeded=is_training)
    got_x = torch.cat([x for x, _ in loader])
    got_y = torch.cat([y for _, y in loader])
    assert len(loader) == 3
    assert torch.equal(got_y, torch.tensor([t for _, t in cpu]))
    want = torch.stack([x for x, _ in cpu])
    assert got_x.shape == want.shape == (len(ds), 3, 28, 28)
    torch.testing.assert_close(got_x, want, rtol=0, atol=1e-6)
    if is_training and train_aug != 'none':  # the test means something: some images are flipped or shifted
        plain = torch.stack([build_transform(_data_config(28, crop_pct), False)(ds[i][0]) for i, _ in sampler])
        assert not torch.equal(got_x, plain)


def test_drop_last_and_epoch_follow_the_sampler(tmp_path):
    ds = _ds()
    pre, augment = split_transform(build_transform(_data_config(32), True, 'flip'))
    images, targets = synthetic_tensors(ds, pre, cache_dir=tmp_path)
    sampler = EpochSampler(len(ds), seed=1)
    loader = DeviceLoader(images, targets, 5, sampler, augment, 'cpu', seed=1, drop_last=True)
    assert len(loader) == 2 and sum(x.shape[0] for x, _ in loader) == 10
    first = torch.cat([y for _, y in loader])
    sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in loader]))


def test_timm_augmentation_is_refused_with_its_name():
    with pytest.raises(ValueError, match='DataLoader path'):
        split_transform(build_transform(_data_config(32), True, 'timm'))


def test_cache_is_reused_and_invalidated_by_every_generator_parameter(tmp_path):
    ds = _ds()
    images, _ = synthetic_tensors(ds, None, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == '.safetensors'
    stamp = files[0].stat().st_mtime_ns
    again, _ = synthetic_tensors(_ds(), None, cache_dir=tmp_path)
    assert torch.equal(images, again) and files[0].stat().st_mtime_ns == stamp  # read, not rewritten
    assert torch.equal(images[1].permute(1, 2, 0), torch.from_numpy(ds.generate(1)[0]))

    base = cache_key(ds)
    changed = {'split': 'test', 'num_classes': 5, 'samples_per_class': 2, 'image_size': 40, 'seed': 4,
               'difficulty': 0.3, 'num_distractors': 2.0, 'occlusion_prob': 0.1, 'part_scale': 1.5}
    assert set(changed) == set(GENERATOR_PARAMS)
    keys = set()
    for name, value in changed.items():
        kw = dict(num_classes=4, samples_per_class=3, image_size=32, seed=3)
        kw[name] = value
        split = kw.pop('split', 'train')
        keys.add(cache_key(SyntheticFineGrained(split, **kw)))
    assert base not in keys and len(keys) == len(changed)
    pre = split_transform(build_transform(_data_config(24), False))[0]
    assert cache_key(ds, pre) != base


def test_cache_key_follows_the_generator_source(monkeypatch):
    import hashlib
    import sys

    import ggam_layers.data.tensor_cache as tc

    ds = _ds()
    source = sys.modules[SyntheticFineGrained.__module__].__file__
    assert tc.generator_params(ds)['generator_md5'] == hashlib.md5(open(source, 'rb').read()).hexdigest()
    before = tc.cache_key(ds)
    real = tc.generator_params
    monkeypatch.setattr(tc, 'generator_params', lambda d: {**real(d), 'generator_md5': '0' * 32})  # an edited source
    assert tc.cache_key(ds) != before


def test_damaged_cache_file_is_rebuilt(tmp_path):
    ds = _ds()
    images, _ = synthetic_tensors(ds, None, cache_dir=tmp_path)
    path = next(tmp_path.iterdir())
    path.write_bytes(path.read_bytes()[:100])
    again, _ = synthetic_tensors(ds, None, cache_dir=tmp_path)
    assert torch.equal(images, again)
    assert os.path.getsize(path) > 100 and not list(tmp_path.glob('*.tmp'))


def test_training_on_the_device_path_equals_the_dataloader_path(tmp_path, monkeypatch):
    """`data_path='device'` (cached tensor, on-device flip) trains to the same weights as the DataLoader (CPU)."""
    from safetensors.torch import load_file

    from ggam_layers.train import TrainConfig, train

    monkeypatch.setenv('GGAM_CACHE_DIR', str(tmp_path / 'cache'))
    tiny = dict(model='test_resnet', dataset_kwargs={'num_classes': 4, 'samples_per_class': 6}, img_size=48,
                epochs=2, batch_size=8, eval_batch_size=16, threads=1, progress=False, device='cpu')
    res = {p: train(TrainConfig(**tiny, data_path=p, output=str(tmp_path / p))) for p in ('loader', 'device')}
    assert res['device']['test_top1'] == res['loader']['test_top1']
    assert res['device']['train_loss'] == pytest.approx(res['loader']['train_loss'], rel=1e-6)
    wl, wd = (load_file(str(tmp_path / p / 'model.safetensors')) for p in ('loader', 'device'))
    for k in wl:
        torch.testing.assert_close(wd[k], wl[k], rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / 'cache').iterdir())) == 2  # the training and the evaluation tensors


def test_data_path_is_validated():
    from ggam_layers.train import TrainConfig

    with pytest.raises(ValueError, match='data_path must be one of'):
        TrainConfig(data_path='gpu').validate()

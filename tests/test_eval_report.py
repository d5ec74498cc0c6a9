"""The evaluation report: per-class accuracy, mean per-class accuracy, the confusion matrix and test-time
augmentation, in `evaluate_model`, `ggam-layers eval` and a training run's results."""
import csv
import json

import pytest
import torch
import torch.nn as nn

from ggam_layers.cli import main
from ggam_layers.train import TrainConfig, train
from ggam_layers.train.loop import evaluate_model, tta_views
from ggam_layers.train.report import write_report

CPU = torch.device('cpu')


class _Oracle(nn.Module):
    """Predicts the class written in pixel (0, 0, 0) of each image (a known case)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), self.k).float() * 10


def _batches(preds, labels, size=3):
    x = torch.zeros(len(preds), 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(preds, dtype=torch.float32)
    y = torch.tensor(labels)
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(preds), size)]


def test_per_class_accuracy_and_confusion_on_a_known_case():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    preds = [0, 0, 1, 1, 2, 2, 2, 0, 2, 3]
    res = evaluate_model(_Oracle(5), _batches(preds, labels), CPU)
    assert res['per_class_count'] == [3, 2, 4, 1, 0]
    assert res['per_class_top1'] == [pytest.approx(2 / 3), 0.5, 0.75, 1.0, None]  # class 4 has no image
    assert res['mean_per_class_top1'] == pytest.approx((2 / 3 + 0.5 + 0.75 + 1.0) / 4)
    # the per-class accuracies, weighted by the class counts, sum back to the top-1
    total = sum(a * n for a, n in zip(res['per_class_top1'], res['per_class_count']) if a is not None)
    assert total / sum(res['per_class_count']) == pytest.approx(res['top1']) == 0.7
    conf = torch.tensor(res['confusion'])
    assert conf.sum(1).tolist() == res['per_class_count']  # rows: the true classes
    assert conf[2].tolist() == [1, 0, 3, 0, 0] and conf.trace() == 7


def test_tta_flip_on_a_horizontally_symmetric_model_changes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6))
    x, y = torch.randn(12, 3, 8, 8), torch.randint(0, 6, (12,))
    loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    plain = evaluate_model(model, loader, CPU)
    flip = evaluate_model(model, loader, CPU, tta='flip')
    assert flip['tta'] == 'flip' and plain['tta'] == 'none'
    for key in ('top1', 'top5', 'confusion', 'per_class_top1'):
        assert flip[key] == plain[key], key
    assert flip['loss'] == pytest.approx(plain['loss'], rel=1e-6)
    crops = evaluate_model(model, loader, CPU, tta='flip-crops')  # another view set: runs, same shape of result
    assert crops['count'] == 12 and len(crops['per_class_top1']) == 6


def test_tta_views():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    assert len(tta_views(x)) == 1 and torch.equal(tta_views(x)[0], x)
    flip = tta_views(x, 'flip')
    assert len(flip) == 2 and torch.equal(flip[1], x.flip(-1))
    crops = tta_views(x, 'flip-crops')
    assert len(crops) == 10 and all(v.shape == x.shape for v in crops)
    assert torch.equal(crops[5], x.flip(-1)) and not torch.equal(crops[1], x)
    with pytest.raises(ValueError, match='tta must be one of'):
        tta_views(x, 'multi')


def test_report_files(tmp_path):
    res = evaluate_model(_Oracle(3), _batches([0, 1, 1, 2], [0, 1, 2, 2]), CPU)
    files = write_report(res, tmp_path, ['a', 'b', 'c'])
    assert sorted(p.name for p in files) == ['confusion.csv', 'confusion.png', 'per_class.csv']
    rows = list(csv.DictReader((tmp_path / 'per_class.csv').open()))
    assert [(r['name'], r['images'], float(r['top1'])) for r in rows] == [('a', '1', 1.0), ('b', '1', 1.0),
                                                                         ('c', '2', 0.5)]
    conf = list(csv.reader((tmp_path / 'confusion.csv').open()))
    assert conf[0] == ['true \\ predicted', 'a', 'b', 'c'] and conf[3] == ['c', '0', '1', '1']


def test_training_results_and_eval_command_report_the_same_numbers(tmp_path, capsys):
    out = tmp_path / 'run'
    result = train(TrainConfig.from_preset(
        'synthetic', model='test_resnet', model_kwargs={}, dataset_kwargs={'num_classes': 4, 'samples_per_class': 8},
        img_size=32, epochs=1, batch_size=8, threads=1, progress=False, output=str(out)))
    saved = json.loads((out / 'results.json').read_text())
    assert saved['test_mean_per_class_top1'] == result['test_mean_per_class_top1'] is not None
    per_class = list(csv.DictReader((out / 'per_class.csv').open()))
    assert [float(r['top1']) for r in per_class] == pytest.approx(saved['test_per_class_top1'])
    assert main(['eval', '--checkpoint', str(out), '--no-progress']) == 0
    line = capsys.readouterr().out
    assert 'no TTA' in line and f'mean per-class {100 * saved["test_mean_per_class_top1"]:.2f}%' in line
    assert (out / 'eval' / 'test-none' / 'confusion.png').is_file()
    assert main(['eval', '--checkpoint', str(out), '--tta', 'flip', '--no-progress', '--report', '']) == 0
    line = capsys.readouterr().out
    assert 'TTA: flip' in line and 'same as recorded' not in line  # a TTA number is not the recorded one
    assert not (out / 'eval' / 'test-flip').exists()

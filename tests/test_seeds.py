"""`--seeds`: per-seed pairs, mean ± std, paired differences and the win count."""
import json
import math

import pytest
from conftest import load_benchmark

from ggam_layers.train import TrainConfig, train_compare
from ggam_layers.train.seeds import format_seed_summary, seed_summary, train_compare_seeds


def _res(top1):
    return {'test_top1': top1, 'test_top5': 1.0, 'train_top1': 0.5}


def test_seed_summary_by_hand():
    results = {2: {'ggam': _res(0.60), 'plain': _res(0.50)}, 0: {'ggam': _res(0.70), 'plain': _res(0.75)},
               1: {'ggam': _res(0.80), 'plain': _res(0.65)}}
    s = seed_summary(results)
    assert s['seeds'] == [0, 1, 2] and s['n'] == 3
    assert [round(r['diff'], 10) for r in s['per_seed']] == [-0.05, 0.15, 0.1]
    assert s['wins'] == 2 and s['ties'] == 0
    assert s['ggam']['mean'] == pytest.approx(0.7) and s['plain']['mean'] == pytest.approx(0.6333333333)
    assert s['ggam']['std'] == pytest.approx(0.1)  # sample std of 0.6, 0.7, 0.8
    d = [-0.05, 0.15, 0.1]
    m = sum(d) / 3
    assert s['diff']['mean'] == pytest.approx(m)
    assert s['diff']['std'] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in d) / 2))
    text = format_seed_summary(s)
    assert 'seed 1' in text and '+15.00' in text and 'GGAM ahead on 2 of 3 seeds' in text
    assert '70.00 ± 10.00' in text


def test_seed_summary_of_any_two_arms():
    results = {0: {'se': _res(0.60), 'cbam': _res(0.50)}, 1: {'se': _res(0.55), 'cbam': _res(0.65)}}
    s = seed_summary(results, arms=('se', 'cbam'))
    assert s['arms'] == ['se', 'cbam'] and [r['se'] for r in s['per_seed']] == [0.60, 0.55]
    assert [round(r['diff'], 10) for r in s['per_seed']] == [0.1, -0.1] and s['wins'] == 1
    text = format_seed_summary(s, 'SE + x', 'CBAM + x')
    assert 'SE - CBAM' in text and 'SE ahead on 1 of 2 seeds' in text
    with pytest.raises(ValueError, match='seed 0: no test_top1 for cbam'):
        seed_summary({0: {'se': _res(0.5)}}, arms=('se', 'cbam'))
    with pytest.raises(ValueError, match='two different names'):
        seed_summary(results, arms=('se', 'se'))


def test_seed_summary_refuses_missing_results():
    with pytest.raises(ValueError, match='seed 0: no test_top1 for plain'):
        seed_summary({0: {'ggam': _res(0.5), 'plain': {'test_top1': None}}})
    with pytest.raises(ValueError, match='at least one seed'):
        seed_summary({})


def test_train_compare_seeds_equals_the_per_seed_runs(tmp_path, capsys):
    """The aggregate is made of exactly the runs `train_compare` gives for each seed alone."""
    tiny = dict(model='test_resnet', dataset_kwargs={'num_classes': 4, 'samples_per_class': 6}, img_size=32,
                epochs=1, batch_size=8, eval_batch_size=16, threads=1, progress=False)
    from ggam_layers.cli import main

    assert main(['train', '--seeds', '0', '1', '--preset', 'synthetic',
                 '--model', 'test_resnet', '--data-arg', 'num_classes=4', '--data-arg',
                 'samples_per_class=6', '--img-size', '32', '--epochs', '1', '--batch-size', '8', '--eval-batch-size',
                 '16', '--threads', '1', '--no-progress', '--output', str(tmp_path / 'seeds')]) == 0
    stored = json.loads((tmp_path / 'seeds' / 'seeds.json').read_text())
    out = {'summary': stored['summaries']['test_top1'],
           'results': {int(k): v for k, v in stored['results'].items()}}
    alone = train_compare(TrainConfig.from_preset('synthetic', **tiny, seed=1, output=str(tmp_path / 'alone')))
    for k in ('ggam', 'plain'):
        assert out['results'][1][k]['test_top1'] == alone[k]['test_top1']
        assert out['results'][1][k]['train_loss'] == alone[k]['train_loss']
    assert out['results'][0]['ggam']['train_loss'] != out['results'][1]['ggam']['train_loss']  # seeds differ
    s = out['summary']
    assert [r['ggam'] for r in s['per_seed']] == [out['results'][i]['ggam']['test_top1'] for i in (0, 1)]
    assert s['wins'] == sum(r['ggam'] > r['plain'] for r in s['per_seed'])
    assert stored['command'].startswith('ggam-layers train --seeds 0 1')

    # benchmarks/recipe_seeds.py on the same run directories gives the same per-seed values and paired differences
    module = load_benchmark('recipe_seeds')
    runs = {k: [str(tmp_path / 'seeds' / f'seed{i}' / k) for i in (1, 0)] for k in ('ggam', 'plain')}
    assert module.main(['--group', 'plain', *runs['plain'], '--group', 'GGAM', *runs['ggam'], '--reference', 'plain',
                        '--pair', 'GGAM', 'plain', '--out-dir', str(tmp_path), '--name', 'rs']) == 0
    report = json.loads((tmp_path / 'rs.json').read_text())['meta']
    ggam_row = report['groups'][1]
    assert ggam_row['seeds'] == [0, 1] and ggam_row['per_seed'] == [r['ggam'] for r in s['per_seed']]
    assert ggam_row['vs_reference']['per_seed'] == pytest.approx([r['diff'] for r in s['per_seed']])
    assert ggam_row['vs_reference']['wins'] == s['wins']
    assert report['pairs'][0]['mean'] == pytest.approx(s['diff']['mean'])
    with pytest.raises(SystemExit):
        module.main(['--group', 'plain', *runs['plain'], '--reference', 'nope', '--out-dir', str(tmp_path)])
    assert (tmp_path / 'seeds' / 'seed0' / 'ggam' / 'model.safetensors').is_file()
    assert 'GGAM ahead on' in capsys.readouterr().out
    with pytest.raises(ValueError, match='distinct'):
        train_compare_seeds(TrainConfig.from_preset('synthetic', **tiny), [1, 1])


def test_seeds_refuses_a_single_model(tmp_path, capsys):
    from ggam_layers.cli import main

    with pytest.raises(SystemExit) as exc:
        main(['train', '--seeds', '0', '1', '--plain', '--output', str(tmp_path / 'x')])
    assert exc.value.code == 2
    assert '--seeds trains two models (it implies --compare-plain, or takes --compare A B), and --plain contradicts ' \
        'it' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()

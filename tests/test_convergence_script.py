"""benchmarks/convergence.py: per-epoch test top-1 of a study budget's rows, on the tiny ImageNet budget."""
import json

from conftest import load_benchmark

conv = load_benchmark('convergence')


def test_convergence_curve_and_report(tmp_path):
    assert conv.main(['--budget', 'imagenet_quick', '--rows', 'plain', 'ggam', '--factors', '1', '2', '--jobs', '2',
                      '--out-dir', str(tmp_path)]) == 0
    data = json.loads((tmp_path / 'convergence_imagenet_quick.json').read_text())
    rows = data['rows']
    assert [(r['row'], r['epochs']) for r in rows] == [('plain', 1), ('plain', 2), ('ggam', 1), ('ggam', 2)]
    for r in rows:  # one evaluation per epoch, the last one the run's final accuracy
        assert len(r['test_top1']) == r['epochs'] and all(0 <= v <= 1 for v in r['test_top1'])
        assert r['test_top1'][-1] == r['final_test_top1']
    md = (tmp_path / 'convergence_imagenet_quick.md').read_text()
    assert 'test top-1 per epoch' in md and data['meta']['machine']['cpu']

"""Fig. 4 of `benchmarks.ablation`: test top-1 against lambda, beside the no-loss model and the controls."""
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ['plot_sweep']


def plot_sweep(tables: Dict[str, Any], path: Path, title: str, target: str = 'literal') -> Optional[Path]:
    """Fig. 4: test top-1 against lambda, the no-loss model as a line (mean) and band (± std)."""
    if not tables['sweep']:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    done = [r for r in tables['sweep'] if r['test_top1'] is not None]  # a report of a stopped study has gaps
    if not done:
        return None
    lams = [r['lam'] for r in done]
    mean = [100 * r['test_top1'] for r in done]
    std = [100 * (r['test_top1_std'] or 0.0) for r in done]
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=120)
    ref = tables.get('reference')
    if ref and ref['test_top1'] is not None:
        m, s = 100 * ref['test_top1'], 100 * (ref['test_top1_std'] or 0.0)
        ax.axhline(m, color='tab:gray', ls='--', label='channel-spatial attention, no GGAM loss')
        ax.axhspan(m - s, m + s, color='tab:gray', alpha=0.15, lw=0)
    ax.errorbar(lams, mean, yerr=std, marker='o', capsize=3, color='tab:red', label=f'GGAM ({target} target)')
    uni = [r for r in tables['target'] if r['target_name'] == 'uniform' and r['test_top1'] is not None]
    if uni:
        ax.errorbar([r['lam'] for r in uni], [100 * r['test_top1'] for r in uni],
                    yerr=[100 * (r['test_top1_std'] or 0.0) for r in uni], marker='s', ls='none', capsize=3,
                    color='tab:blue', label='control: KL to uniform, no Grad-CAM')
    other = 'standardize' if target == 'literal' else 'literal'  # the other Grad-CAM target, beside the sweep
    std_rows = [r for r in tables['target'] if r['target_name'] == other and r['test_top1'] is not None]
    if std_rows:
        ax.errorbar([r['lam'] + 0.12 for r in std_rows], [100 * r['test_top1'] for r in std_rows],
                    yerr=[100 * (r['test_top1_std'] or 0.0) for r in std_rows], marker='^', ls='none', capsize=3,
                    color='tab:green', label=f'{other} Grad-CAM target')
    ax.set_xlabel('λ')
    ax.set_ylabel('test top-1 (%)')
    ax.set_xticks(lams)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc='best')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

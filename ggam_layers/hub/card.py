"""The README.md model card of a saved GGAM model: YAML front matter for the Hub, then Markdown."""
import re
from typing import Any, Dict, Optional, Union

import timm

from ._common import LIBRARY_URL, PAPER_BIBTEX, PAPER_ID, package_version

__all__ = ['model_card']


def _format_value(v: Any) -> str:
    if isinstance(v, float):
        return f'{v:.6g}'
    return f'`{v}`' if isinstance(v, (str, bool)) else str(v)


def model_card(
        config: Dict[str, Any],
        name: str,
        *,
        repo_id: Optional[str] = None,
        num_params: Optional[int] = None,
        dataset: Optional[Union[str, Dict[str, Any]]] = None,
        metrics: Optional[Dict[str, Any]] = None,
        recipe: Optional[Union[str, Dict[str, Any]]] = None,
) -> str:
    """The README.md model card of a saved GGAM model (YAML front matter for the Hub, then Markdown).

    Args:
        config: The `config.json` content written by `save_pretrained`.
        name: Model name for the title.
        repo_id: Hub repository the card will live in (used in the loading instructions).
        num_params: Parameter count.
        dataset: Training dataset name, or a dict describing it.
        metrics: Evaluation results, name -> value.
        recipe: Training recipe: the command line, or a dict of hyper-parameters.
    """
    cfg = config['pretrained_cfg']
    args = config.get('model_args', {})
    license_ = cfg.get('license', 'apache-2.0')
    lines = ['---', 'tags:', '- image-classification', '- timm', '- ggam', '- fine-grained-classification',
             'library_name: timm', 'pipeline_tag: image-classification', f'license: {license_}']
    if isinstance(dataset, str) and re.fullmatch(r'[\w.\-/]+', dataset):
        lines += ['datasets:', f'- {dataset}']
    lines += ['---', f'# Model card for {name}', '']
    lines.append(
        f"A GGAM image classifier: timm's `{args.get('backbone')}` backbone followed by the Grad-CAM guided "
        'channel-spatial attention head of Xu et al., "Grad-CAM Guided Channel-Spatial Attention Module for '
        f'Fine-Grained Visual Classification" ([{PAPER_ID}](https://arxiv.org/abs/2101.09666)), built with '
        f'[ggam-layers]({LIBRARY_URL}). The channel attention S and spatial attention T re-weight the last-stage '
        'feature maps; during training a symmetric KL term pulls S towards the Grad-CAM weights of the predicted '
        'class. At inference the model is a plain timm classifier: `model(x)` returns logits.')
    lines += ['', '## Model details', f"- **Architecture:** `{config['architecture']}` (timm entrypoint registered "
              'by `import ggam_layers`)', f"- **Backbone:** `{args.get('backbone')}`",
              f"- **Classes:** {config['num_classes']}"]
    if num_params is not None:
        lines.append(f'- **Parameters (M):** {num_params / 1e6:.3f}')
    size = cfg.get('input_size')
    if size:
        lines.append(f"- **Input:** {' x '.join(str(s) for s in size)}, mean {list(cfg.get('mean', ()))}, std "
                     f"{list(cfg.get('std', ()))}, {cfg.get('interpolation', 'bicubic')} interpolation, crop_pct "
                     f"{cfg.get('crop_pct')}")
    options = {k: v for k, v in args.items() if k not in ('backbone', 'num_classes')}
    if options:
        lines.append('- **Model arguments** (`config.json` `model_args`):')
        lines += [f'  - {k}: {_format_value(v)}' for k, v in options.items()]
    if dataset is not None:
        if isinstance(dataset, dict):
            lines.append('- **Dataset:**')
            lines += [f'  - {k}: {_format_value(v)}' for k, v in dataset.items()]
        else:
            lines.append(f'- **Dataset:** {dataset}')
    if recipe is not None:
        if isinstance(recipe, dict):
            lines.append('- **Training recipe:**')
            lines += [f'  - {k}: {_format_value(v)}' for k, v in recipe.items()]
        else:
            lines += ['- **Training recipe:**', '', '  ```bash', f'  {recipe}', '  ```']
    lines.append(f'- **License:** {license_}')
    lines.append(f'- **Software:** ggam-layers {package_version()}, timm {timm.__version__}')
    if metrics:
        lines += ['', '## Evaluation', '', '| metric | value |', '| --- | --- |']
        lines += [f'| {k} | {_format_value(v)} |' for k, v in metrics.items()]
    hub_name = f'hf-hub:{repo_id}' if repo_id else 'hf-hub:ORG/NAME'
    lines += [
        '', '## How to load', '', '```python', 'import timm', 'import ggam_layers  # registers the GGAM '
        'architectures with timm; without it timm raises "Unknown model"', '',
        f"model = timm.create_model('{hub_name}', pretrained=True).eval()",
        'data_config = timm.data.resolve_model_data_config(model)',
        'transform = timm.data.create_transform(**data_config, is_training=False)',
        'logits = model(transform(image).unsqueeze(0))  # image: a PIL image',
        '', '# a new classifier for fine-tuning (the backbone and the attention keep their weights)',
        f"model = timm.create_model('{hub_name}', pretrained=True, num_classes=10)",
        '# a pinned revision (commit hash, branch or tag)',
        f"model = timm.create_model('{hub_name}@<revision>', pretrained=True)",
        '# the same, with errors that name the file and the fix', f"model = ggam_layers.hub.load_model('{hub_name}')",
        '```', '', 'From a local copy of this folder: `timm.create_model(\'local-dir:PATH\', pretrained=True)`.',
        '', '## Citation', '', '```bibtex', PAPER_BIBTEX, '```', '']
    return '\n'.join(lines)

"""What the config says matches what it builds: the help text of the default run, and a bare `TrainConfig()`."""
import dataclasses

from ggam_layers.train import TrainConfig
from ggam_layers.train.cli import DEFAULT_PRESET
from ggam_layers.train.config import PRESETS


def test_train_help_describes_the_default_preset(capsys):
    import pytest

    from ggam_layers.cli import main

    with pytest.raises(SystemExit):
        main(['train', '--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert DEFAULT_PRESET == 'synthetic_finetune' and PRESETS[DEFAULT_PRESET]['pretrained_file']
    assert 'fine-tuned from the pretrained backbone the package ships' in text
    assert 'GGAM and the plain test_resnet from scratch' not in text


def test_a_bare_config_names_no_preset():
    """`TrainConfig()` is the field defaults (resnet10t, 64 px), which no preset is: it does not claim one."""
    bare = TrainConfig()
    assert bare.preset is None
    for name, values in PRESETS.items():
        made = TrainConfig.from_preset(name)
        assert made.preset == name
        assert all(getattr(made, k) == v for k, v in values.items() if k not in ('dataset_kwargs', 'model_kwargs'))
    differs = {f.name for f in dataclasses.fields(TrainConfig)
               if getattr(TrainConfig.from_preset('synthetic'), f.name) != getattr(bare, f.name)}
    assert {'model', 'img_size', 'epochs'} <= differs

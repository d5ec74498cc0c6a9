"""The `ggam-layers` command line (also `python -m ggam_layers`).

Subcommands come from the package's modules: each of `ggam_layers.train.cli` (train, eval), `ggam_layers.predict`
(predict), `ggam_layers.hub.cli` (publish) and `ggam_layers.viz` (cam) that exists and defines
`register_cli(subparsers)` adds its own, and sets `func` on its parser; `main` calls `args.func(args)`.
"""
import argparse
import importlib
import logging
import sys
from typing import List, Optional, Sequence

__all__ = ['CLI_MODULES', 'build_parser', 'main', 'numpy_problem']

CLI_MODULES = ('ggam_layers.train.cli', 'ggam_layers.predict', 'ggam_layers.hub.cli', 'ggam_layers.viz')

_logger = logging.getLogger(__name__)


def build_parser(modules: Sequence[str] = CLI_MODULES) -> argparse.ArgumentParser:
    """The top-level parser with the subcommands of every module in `modules` that has `register_cli`."""
    from . import __version__
    parser = argparse.ArgumentParser(
        prog='ggam-layers',
        description='Grad-CAM guided channel-spatial attention (GGAM) for timm: train, evaluate, visualise and '
                    'publish fine-grained classifiers.')
    parser.add_argument('--version', action='version', version=f'ggam-layers {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but one of its imports is missing: say so
                raise
            continue
        register = getattr(module, 'register_cli', None)
        if callable(register):
            register(sub)
    return parser


def _subcommand_argv(argv: List[str], command: str) -> List[str]:
    """The arguments after the subcommand's name."""
    return argv[argv.index(command) + 1:] if command in argv else []


def numpy_problem() -> Optional[str]:
    """Why torch cannot exchange arrays with numpy (torch 2.1 / 2.2, built against numpy 1, beside numpy 2), or None."""
    import numpy as np
    import torch
    try:
        torch.from_numpy(np.zeros(1))
    except RuntimeError as e:
        return (f'torch {torch.__version__} cannot use numpy {np.__version__} ({e}): torch 2.1 and 2.2 were built '
                'against numpy 1; pip install "numpy<2" (or torch>=2.3)')
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, 'func', None) is None:
        parser.print_help()
        return 2
    args._argv = _subcommand_argv(argv, args.command)
    problem = numpy_problem()  # every subcommand turns images into tensors through numpy
    if problem:
        parser.exit(1, f'ggam-layers {args.command}: error: {problem}\n')
    try:
        return int(args.func(args) or 0)
    except (FileExistsError, FileNotFoundError, ValueError) as e:  # user errors: the message says what to change
        _logger.debug('%s failed', args.command, exc_info=True)
        parser.exit(2, f'ggam-layers {args.command}: error: {e}\n')
    except KeyboardInterrupt:
        parser.exit(130, 'interrupted\n')


if __name__ == '__main__':
    raise SystemExit(main())

"""The `ggam-layers publish` subcommand: a checkpoint folder to a Hub model folder, uploaded (or a dry run)."""
import argparse
from pathlib import Path
from typing import Any, List

from .checkpoint import load_checkpoint
from .publish import push_to_hub

__all__ = ['register_cli']


def _publish(args: argparse.Namespace) -> int:
    model, save_kwargs = load_checkpoint(args.checkpoint)
    if args.dry_run:
        folder = push_to_hub(model, args.repo_id, dry_run_dir=args.dry_run, overwrite=args.overwrite, **save_kwargs)
        files = sorted(p.name for p in Path(folder).iterdir())
        print(f'dry run: wrote {files} to {folder} (nothing uploaded); upload with the same command without --dry-run')
        return 0
    info = push_to_hub(model, args.repo_id, private=args.private, revision=args.revision,
                       commit_message=args.commit_message, **save_kwargs)
    print(f'uploaded to https://huggingface.co/{args.repo_id} ({getattr(info, "commit_url", info)})')
    print(f"load with: import ggam_layers, timm; timm.create_model('hf-hub:{args.repo_id}', pretrained=True)")
    return 0


def register_cli(subparsers: Any) -> List[argparse.ArgumentParser]:
    """Add the `publish` subcommand to the `ggam-layers` command line.

    Args:
        subparsers: The object returned by `ArgumentParser.add_subparsers()`.

    Returns:
        The added parsers.
    """
    p = subparsers.add_parser(
        'publish', help='convert a checkpoint to a Hugging Face Hub model folder and upload it',
        description='Convert a checkpoint folder (from `ggam-layers train`, or one written by save_pretrained) to the '
                    'folder timm reads (config.json, model.safetensors, README.md) and upload it to the Hub. The '
                    'token comes from HF_TOKEN or `hf auth login`.')
    p.add_argument('checkpoint', help='checkpoint folder (model.safetensors + config.json) or its model.safetensors')
    p.add_argument('--repo-id', required=True, help='Hub repository, ORG/NAME')
    p.add_argument('--private', action='store_true', help='create the repository private')
    p.add_argument('--revision', default=None, help='branch to commit to (created if missing); default main')
    p.add_argument('--commit-message', default='Add GGAM model (ggam-layers)', help='commit message')
    p.add_argument('--dry-run', metavar='DIR', default=None,
                   help='write the folder that would be uploaded to DIR and upload nothing')
    p.add_argument('--overwrite', action='store_true', help='with --dry-run: replace the files in a non-empty DIR')
    p.set_defaults(func=_publish)
    return [p]

"""Upload a GGAM model to the Hugging Face Hub: `save_pretrained`, then `HfApi.upload_folder`."""
import re
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from huggingface_hub import HfApi

from ..model import GGAMModel
from ._common import package_version
from .save import save_pretrained

__all__ = ['push_to_hub']


def push_to_hub(
        model: GGAMModel,
        repo_id: str,
        *,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: str = 'Add GGAM model (ggam-layers)',
        token: Optional[str] = None,
        dry_run_dir: Optional[Union[str, Path]] = None,
        **save_kwargs,
) -> Any:
    """Save `model` with `save_pretrained` and upload the folder to the Hub repository `repo_id`.

    Creates the repository if needed (`HfApi.create_repo(exist_ok=True)`), creates the branch `revision` if it is
    missing, then uploads with `HfApi.upload_folder`. The token comes from huggingface_hub's own lookup
    (`HF_TOKEN`, then the cached `hf auth login`) unless `token` is given.

    Args:
        model: The GGAM model.
        repo_id: 'ORG/NAME' on the Hub.
        private: Create the repository private (no effect on an existing one).
        revision: Branch to commit to (created from main if missing); None commits to main.
        commit_message: The commit message.
        token: A Hub token; None uses huggingface_hub's lookup.
        dry_run_dir: Write the folder that would be uploaded here and stop: no network.
        **save_kwargs: `save_pretrained` arguments (`label_names`, `dataset`, `metrics`, `recipe`, ...).

    Returns:
        The `CommitInfo` of the upload, or the dry-run folder.
    """
    if not isinstance(repo_id, str) or not re.fullmatch(r'[\w.\-]+/[\w.\-]+', repo_id):
        raise ValueError(f"repo_id must be 'ORG/NAME' (letters, digits, '-', '_', '.'), got {repo_id!r}")
    save_kwargs.setdefault('repo_id', repo_id)
    if dry_run_dir is not None:
        return save_pretrained(model, dry_run_dir, **save_kwargs)
    api = HfApi(token=token, library_name='ggam-layers', library_version=package_version())
    with tempfile.TemporaryDirectory(prefix='ggam-push-') as tmp:
        folder = save_pretrained(model, tmp, **save_kwargs)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
        repo_id = getattr(repo_url, 'repo_id', None) or repo_id
        if revision is not None and not revision.startswith('refs/'):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type='model')
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type='model', revision=revision,
                                 commit_message=commit_message)

"""Fetching weight files: cached, and checked against the sha256 prefix their name carries.

The transfer itself is ``torch.hub.download_url_to_file`` (progress bar, sha256 check, a temporary file moved
into place only once complete, so an interrupted download never leaves a file that looks finished). What
this adds: the hash is taken from the file name (``name-<sha256 prefix>.ext``, torch.hub's convention), a
file already in the cache is checked again before use, and failures become ``CheckpointError``.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional
from urllib.error import URLError
from urllib.parse import urlparse

import torch.hub

from scnet.errors import CheckpointError

__all__ = ['cache_dir', 'fetch', 'hash_prefix_of', 'sha256_of_file']

_HASH_IN_NAME = re.compile(r'-([a-f0-9]{6,64})\.[A-Za-z0-9]+$')


def cache_dir() -> Path:
    """``$SCNET_CACHE`` if set, else ``<torch hub dir>/checkpoints`` (shared with torch.hub and timm)."""
    return Path(os.environ.get('SCNET_CACHE') or Path(torch.hub.get_dir()) / 'checkpoints')


def hash_prefix_of(file_name: str) -> Optional[str]:
    """The sha256 prefix in a file name such as ``scnet50-dc6a7e87.pth``, or None."""
    m = _HASH_IN_NAME.search(file_name)
    return m.group(1) if m else None


def sha256_of_file(path: Path) -> str:
    """The hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, *, directory: Optional[Path] = None, progress: bool = True) -> Path:
    """Return a local copy of ``url``, downloading it into the cache once; verify its sha256 prefix."""
    name = Path(urlparse(url).path).name
    if not name:
        raise CheckpointError(f'{url}: the address names no file')
    expected = hash_prefix_of(name)
    directory = Path(directory) if directory else cache_dir()
    path = directory / name
    if path.is_file():
        if expected is None or sha256_of_file(path).startswith(expected):
            return path
        # a corrupt or replaced cache entry: fetched again, and replaced only by a download that arrives whole and
        # matches (torch.hub moves its finished temporary file into place); kept while there is none
    directory.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=expected, progress=progress)
    except RuntimeError as e:
        if 'invalid hash value' in str(e):
            raise CheckpointError(
                f'{url}: the downloaded file does not match the sha256 prefix {expected} in its name ({e}); '
                'nothing was cached. The mirror may hold a different file, or the transfer was corrupted') from None
        raise
    except ValueError as e:  # urllib's "unknown url type": a path where an address belongs
        raise CheckpointError(f'{url}: not a download address ({e}); give an http(s):// or file:// address, or '
                              'the file itself as a checkpoint') from None
    except (URLError, OSError) as e:
        raise CheckpointError(
            f'{url}: download failed ({e}). Without network access, download the file elsewhere and give it as a '
            f'file (checkpoint=PATH in Python, --init PATH to scnet train, --checkpoint PATH to the other '
            f'commands), place it in {directory}, or point $SCNET_WEIGHTS_MIRROR at a folder or server that holds '
            'it') from None
    return path

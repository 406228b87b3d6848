"""The image files a ``predict`` command was given: files as they are, folders searched for images."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

from scnet.errors import ScnetError

__all__ = ['image_files']


def image_files(inputs: Sequence[Union[str, Path]]) -> List[Path]:
    """Every file of ``inputs`` and the images (torchvision's extensions) below every folder, sorted per
    folder; a ``ScnetError`` for a path that does not exist or a folder without images."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files: List[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob('*') if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS))
            if not found:
                raise ScnetError(f'{item}: no image files in this folder ({", ".join(IMG_EXTENSIONS)})')
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise ScnetError(f'{item}: no such image file or folder')
    return files

"""The image files a ``predict`` command was given: files as they are, folders searched for images; and every
one of them decoded before the command writes anything, so that a damaged file stops it before its first
output, not in the middle of the folder with half the drawings written and no JSON summary."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Sequence, Tuple, Union

from scnet.errors import ScnetError

__all__ = ['image_files', 'decoded_sizes', 'drawing_paths']

_SHOWN = 5  # unreadable files named in the message


def image_files(inputs: Union[str, Path, Sequence[Union[str, Path]]]) -> List[Path]:
    """Every file of ``inputs`` (one path, or several) and the images (torchvision's extensions) below every
    folder, sorted per folder; a ``ScnetError`` for a path that does not exist or a folder without images."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
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


def decoded_sizes(files: Sequence[Path], threads: int = 4, *,
                  exif_orientation: bool = False) -> List[Tuple[int, int]]:
    """The (width, height) of every file, each decoded in full (a header can be fine and the data truncated),
    or one ``BadImageError`` naming every file that is not a readable image; ``exif_orientation``: as
    ``decode_rgb`` turns them."""
    from scnet.data.folders import BadImageError, decode_rgb

    def size(path: Path):
        try:
            return decode_rgb(str(path), exif_orientation=exif_orientation).size
        except Exception as e:  # PIL raises several kinds for truncated or foreign files
            return f'{path} ({str(e).splitlines()[0] if str(e) else type(e).__name__})'

    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(size, files))
    bad = [s for s in sizes if isinstance(s, str)]
    if bad:
        more = f'; ... ({len(bad) - _SHOWN} more)' if len(bad) > _SHOWN else ''
        raise BadImageError(f'{len(bad)} of the {len(files)} images cannot be decoded: {"; ".join(bad[:_SHOWN])}'
                            f'{more}; fix or remove them (nothing was written)')
    return sizes


def drawing_paths(files: Sequence[Path], output: Union[str, Path]) -> List[Path]:
    """Where the drawing of each of ``files`` goes: ``output/<stem>.png``, made unique in order (``x.png``,
    ``x_2.png``, ...: a ``x.jpg`` and a ``x.png`` keep a drawing each). A ``ScnetError`` when one would replace
    one of the images drawn, checked before anything is written: the user's own pictures are never lost."""
    inputs = {Path(f).resolve() for f in files}
    used: set = set()
    paths: List[Path] = []
    for f in files:
        name, k = f'{Path(f).stem}.png', 1
        while name in used:
            k += 1
            name = f'{Path(f).stem}_{k}.png'
        used.add(name)
        paths.append(Path(output) / name)
    replaced = [p for p in paths if p.resolve() in inputs]
    if replaced:
        raise ScnetError(f'{output}: the drawing {replaced[0].name} would replace the input image {replaced[0]} '
                         f'({len(replaced)} such); write the drawings into another --output folder')
    return paths

"""Writing result files so that a reader never sees half of one: write beside the target, then rename."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

__all__ = ['write_json_atomic', 'give_usual_permissions']


def write_json_atomic(obj: object, path: Union[str, Path]) -> Path:
    """``obj`` as indented JSON at ``path`` (NaN refused: JSON has none), replacing any file there at once."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + '\n', encoding='utf-8')
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def give_usual_permissions(path: Union[str, Path]) -> None:
    """Give a file made by ``tempfile.mkstemp`` (readable by its owner only) the permissions a plain
    ``open(path, 'w')`` gives under the process's umask, before it is renamed into place: weights written for a
    team stay readable by it, as every other file the commands write."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)

"""User images in, labelled picture grids out: the shared plumbing of ``scnet cam``, ``features`` and ``erf``.

* :func:`load_image` decodes a file fully into RGB, or raises ``BadImageError`` naming it.
* :class:`Preprocessing` is the model's evaluation pipeline (resize the short side, centre crop, normalise:
  the same geometry as :func:`scnet.data.transforms.eval_transform`) split in two halves, so that a map is
  drawn over exactly the pixels the network saw: :meth:`Preprocessing.crop` (the picture) and
  :meth:`Preprocessing.to_tensor` (the network's input).
* :func:`colorize` and :func:`overlay` turn a map in [0, 1] into colours and blend it over a picture.
* :func:`draw_grid` lays pictures out in a labelled grid (column titles, row titles, a caption under each
  cell, an optional colour bar) with matplotlib's object API (Agg, no display, no pyplot state); its PNG is
  exactly :func:`grid_pixels` pixels, whatever the labels say, and :func:`save_png` writes it atomically.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from scnet.data.folders import BadImageError, decode_rgb
from scnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from scnet.errors import ScnetError

__all__ = ['BadImageError', 'PreprocessingError', 'load_image', 'as_rgb', 'Preprocessing', 'colorize', 'overlay',
           'resize_map', 'draw_grid', 'grid_pixels', 'save_png', 'DPI', 'CELL_INCHES']

PathLike = Union[str, 'os.PathLike[str]']

DPI = 100
#: Side of one picture of a grid, in inches (``CELL_INCHES * DPI`` pixels).
CELL_INCHES = 2.5
_CAPTION_INCHES = 0.5      # room under each cell for a two-line caption
_TITLE_INCHES = 0.75       # room for the figure title and the column titles
_ROW_TITLE_INCHES = 0.45   # room left of the first column for the row titles
_COLORBAR_INCHES = 1.3     # room for the colour bar and its label
_WSPACE = 0.04             # gap between columns, as a fraction of a cell


# ------------------------------------------------------------------------------------------------- input

def as_rgb(image: Union[Image.Image, np.ndarray]) -> Image.Image:
    """``image`` as an RGB PIL image: a PIL image of another mode converted (as ``load_image`` decodes files),
    a uint8 array ``H x W`` (grey) or ``H x W x 3`` wrapped; anything else is a ``PreprocessingError`` (a
    tensor is already a network input: it skips the pipeline)."""
    if isinstance(image, Image.Image):
        return image if image.mode == 'RGB' else image.convert('RGB')
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise PreprocessingError(f'an image array must be uint8 pixels, H x W or H x W x 3, got {image.dtype} '
                                     f'{image.shape}')
        return Image.fromarray(image).convert('RGB')
    raise PreprocessingError(f'Preprocessing takes a PIL image or a uint8 array, got {type(image).__name__}'
                             + ('; a tensor is already a network input: give it to the tool directly'
                                if isinstance(image, torch.Tensor) else ''))


def load_image(path: PathLike) -> Image.Image:
    """The image at ``path`` as RGB; ``BadImageError`` naming the file when it is missing or undecodable."""
    path = Path(path)
    if not path.exists():
        raise BadImageError(f'{path}: no such image file')
    if path.is_dir():
        raise BadImageError(f'{path}: is a directory, not an image file')
    try:
        return decode_rgb(str(path), exif_orientation=True)  # the photo as a viewer shows it
    except UnidentifiedImageError:
        raise BadImageError(f'{path}: unreadable image (not an image file, or a format PIL cannot read)') from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f'{path}: unreadable image ({e})') from None


class PreprocessingError(ScnetError, ValueError):
    """An image size and resize that no centre crop can satisfy."""


@dataclass(frozen=True)
class Preprocessing:
    """A model's evaluation input pipeline: resize the short side to ``resize``, take the centre
    ``image_size`` square (``resize == image_size``: resize to the square, no crop), normalise."""

    image_size: int = 224
    resize: int = 256
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.resize < self.image_size:
            raise PreprocessingError(f'image size {self.image_size} and resize {self.resize}: need 1 <= image '
                                     'size <= resize (the short side is resized, then the centre crop taken)')
        for what, values in (('mean', self.mean), ('std', self.std)):
            try:
                fits = len(values) == 3 and all(math.isfinite(float(v)) for v in values)
            except (TypeError, ValueError):
                fits = False
            if not fits:
                raise PreprocessingError(f'{what} {values!r}: give three finite numbers, one per colour channel')
        if min(float(v) for v in self.std) <= 0:  # normalising divides by it
            raise PreprocessingError(f'std {self.std}: every channel\'s standard deviation must be positive')

    @classmethod
    def from_metadata(cls, meta: dict, image_size: Optional[int] = None, resize: Optional[int] = None):
        """The pipeline recorded with a checkpoint by ``scnet train`` (else ImageNet's 224/256), with overrides."""
        for what, value in (('image_size', image_size), ('resize', resize)):  # 0 would read as "not given"
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise PreprocessingError(f'{what} must be a positive number of pixels, got {value!r}')
        size = int(image_size or meta.get('image_size') or 224)
        if resize is not None and resize < size:  # raising it silently would show another picture than asked
            raise PreprocessingError(f'resize {resize} is smaller than the image size {size}: the short side is '
                                     f'resized first and the {size} px centre crop must fit in it; give a resize '
                                     f'of at least {size}, or leave it out')
        if resize is None:
            saved = meta.get('eval_resize')
            # a saved resize belongs to the saved size; for another size keep ImageNet's 224:256 ratio
            resize = saved if saved and size == int(meta.get('image_size') or 0) else (
                256 * size // 224 if size >= 64 else size)
        return cls(size, max(int(resize), size), tuple(meta.get('mean', IMAGENET_MEAN)),
                   tuple(meta.get('std', IMAGENET_STD)))

    def crop(self, image: Union[Image.Image, np.ndarray]) -> Image.Image:
        """The picture the network sees (before normalisation), ``image_size`` x ``image_size`` (``image``: as
        ``as_rgb`` takes it)."""
        from torchvision.transforms import v2

        image = as_rgb(image)
        if self.resize == self.image_size:
            return v2.Resize((self.image_size, self.image_size), antialias=True)(image)
        return v2.CenterCrop(self.image_size)(v2.Resize(self.resize, antialias=True)(image))

    def to_tensor(self, crop: Image.Image) -> torch.Tensor:
        """``(3, H, W)`` float tensor, normalised with ``mean``/``std``."""
        x = torch.from_numpy(np.asarray(crop, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (x - mean) / std

    def __call__(self, image: Union[Image.Image, np.ndarray]) -> Tuple[np.ndarray, torch.Tensor]:
        """``(picture as uint8 HxWx3, network input (3, H, W))`` for one image: a PIL image of any mode (grey,
        palette and RGBA ones become RGB) or a uint8 array, ``H x W`` or ``H x W x 3``."""
        crop = self.crop(image)
        return np.asarray(crop, dtype=np.uint8), self.to_tensor(crop)


# ------------------------------------------------------------------------------------------------ colours

def resize_map(heat: Union[np.ndarray, torch.Tensor], size: Tuple[int, int], mode: str = 'bilinear') -> np.ndarray:
    """A 2-D map resampled to ``size`` = (height, width) (``'bilinear'`` or ``'nearest'``)."""
    t = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    if tuple(t.shape[-2:]) != tuple(size):
        kwargs = {'align_corners': False} if mode == 'bilinear' else {}
        t = F.interpolate(t, size=tuple(size), mode=mode, **kwargs)
    return t[0, 0].numpy()


def colorize(heat: np.ndarray, cmap: str = 'jet', vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """A 2-D map as RGB floats in [0, 1] (``H x W x 3``), values clipped to [vmin, vmax]."""
    from matplotlib import colormaps

    heat = np.asarray(heat, dtype=np.float64)
    scaled = np.clip((heat - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    return colormaps[cmap](scaled)[..., :3]


def overlay(picture: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = 'jet') -> np.ndarray:
    """``heat`` (values in [0, 1], any resolution: resampled bilinearly) coloured with ``cmap`` and blended
    over ``picture`` (``H x W x 3`` uint8): ``(1 - alpha) * picture + alpha * colour``, as uint8."""
    heat = resize_map(heat, picture.shape[:2])
    colour = colorize(heat, cmap)
    out = (1.0 - alpha) * (picture.astype(np.float64) / 255.0) + alpha * colour
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------------- grids

def _escape(text: str) -> str:
    return str(text).replace('$', r'\$')  # '$' is literal text here, not matplotlib's mathtext


def grid_pixels(rows: int, cols: int, *, colorbar: bool = True, row_titles: bool = True,
                cell_inches: float = CELL_INCHES) -> Tuple[int, int]:
    """``(width, height)`` in pixels of the PNG that :func:`draw_grid` makes for ``rows`` x ``cols`` cells."""
    w, h = _grid_inches(rows, cols, colorbar, row_titles, cell_inches)
    return _pixels(w), _pixels(h)


def _pixels(inches: float) -> int:
    return int(round(inches * DPI))


def _exact_inches(inches: float) -> float:
    """A size whose rendering (matplotlib truncates ``inches * dpi``) is exactly :func:`_pixels` pixels."""
    return (_pixels(inches) + 0.5) / DPI


def _grid_inches(rows: int, cols: int, colorbar: bool, row_titles: bool, cell: float) -> Tuple[float, float]:
    width = ((cols + (cols - 1) * _WSPACE) * cell + (_ROW_TITLE_INCHES if row_titles else 0.05)
             + (_COLORBAR_INCHES if colorbar else 0.05))
    height = rows * (cell + _CAPTION_INCHES) + _TITLE_INCHES
    return width, height


def draw_grid(cells: Sequence[Sequence[Optional[np.ndarray]]], *, title: str = '',
              col_titles: Optional[Sequence[str]] = None, row_titles: Optional[Sequence[str]] = None,
              captions: Optional[Sequence[Sequence[str]]] = None,
              colorbar: Optional[Tuple[str, str, Tuple[float, float], Optional[Sequence[str]]]] = None,
              interpolation: str = 'antialiased', cell_inches: float = CELL_INCHES):
    """A ``matplotlib.figure.Figure`` of pictures in a grid.

    Args:
        cells: ``cells[r][c]``: an ``H x W x 3`` uint8 or float picture, an ``H x W`` map (drawn with the
            colour bar's colour map and range), or None for an empty cell.
        title: figure title (top).
        col_titles: one per column, above the first row.
        row_titles: one per row, left of the first column (vertical).
        captions: ``captions[r][c]`` under each cell (may hold a newline).
        colorbar: ``(cmap, label, (vmin, vmax), tick labels or None)``: a colour bar right of the grid.
        interpolation: matplotlib's resampling of the pictures to the cell size.
        cell_inches: side of a cell (``cell_inches * DPI`` pixels).
    """
    from matplotlib.colors import Normalize
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    rows = len(cells)
    cols = max((len(r) for r in cells), default=0)
    if rows == 0 or cols == 0:
        raise ValueError('draw_grid: no cells')
    width, height = _grid_inches(rows, cols, colorbar is not None, row_titles is not None, cell_inches)
    width, height = _exact_inches(width), _exact_inches(height)
    fig = Figure(figsize=(width, height), dpi=DPI)
    # fixed margins in inches, so that the cells are squares of CELL_INCHES whatever the labels
    left = (_ROW_TITLE_INCHES if row_titles is not None else 0.05) / width
    right = 1.0 - ((_COLORBAR_INCHES if colorbar is not None else 0.05) / width)
    top = 1.0 - _TITLE_INCHES / height
    bottom = _CAPTION_INCHES / height
    gs = fig.add_gridspec(rows, cols, left=left, right=right, top=top, bottom=bottom,
                          wspace=_WSPACE, hspace=_CAPTION_INCHES / cell_inches)
    cmap, norm = 'viridis', Normalize(0.0, 1.0)
    if colorbar is not None:
        cmap, norm = colorbar[0], Normalize(*colorbar[2])
    axes = []
    for r in range(rows):
        for c in range(cols):
            ax = fig.add_subplot(gs[r, c])
            axes.append(ax)
            ax.set_xticks([])
            ax.set_yticks([])
            picture = cells[r][c] if c < len(cells[r]) else None
            if picture is None:
                ax.set_axis_off()
            else:
                picture = np.asarray(picture)
                if picture.ndim == 2:
                    ax.imshow(picture, cmap=cmap, norm=norm, interpolation=interpolation)
                else:
                    ax.imshow(picture, interpolation=interpolation)
                for spine in ax.spines.values():
                    spine.set_linewidth(0.5)
                    spine.set_color('0.6')
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(_escape(_wrap_title(col_titles[c])), fontsize=10.5, fontweight='bold', pad=4)
            if c == 0 and row_titles is not None and r < len(row_titles):
                ax.text(-0.04, 0.5, _escape(_shorten(row_titles[r], 34)), transform=ax.transAxes, rotation=90,
                        ha='right', va='center', fontsize=9)
            if captions is not None and r < len(captions) and c < len(captions[r]) and captions[r][c]:
                ax.text(0.5, -0.025, _escape(captions[r][c]), transform=ax.transAxes, ha='center', va='top',
                        fontsize=8.5, linespacing=1.15)
    if title:
        fig.suptitle(_escape(title), fontsize=12, y=1.0 - 0.12 / height, va='top')
    if colorbar is not None:
        cax = fig.add_axes([right + 0.12 / width, bottom + (top - bottom) * 0.15, 0.16 / width,
                            (top - bottom) * 0.7])
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
        bar.set_label(_escape(colorbar[1]), fontsize=9)
        bar.ax.tick_params(labelsize=8)
        if colorbar[3] is not None:
            labels = list(colorbar[3])
            bar.set_ticks(np.linspace(norm.vmin, norm.vmax, len(labels)))
            bar.set_ticklabels(labels)
    fig._scnet_axes = axes  # the cell axes, row-major (for callers that draw on top)
    return fig


def _wrap_title(text: str, limit: int = 30) -> str:
    """A long column title on two lines, broken before its parenthesis (``name\n(checkpoint)``)."""
    text = str(text)
    if len(text) <= limit:
        return text
    head, sep, tail = text.partition(' (')
    return f'{head}\n({tail}' if sep else _shorten(text, 2 * limit)


def _shorten(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit // 2 - 1] + '...' + text[-(limit - limit // 2 - 2):]


def save_png(fig, path: PathLike, dpi: int = DPI) -> Path:
    """Render ``fig`` to ``path`` (a PNG of ``figsize * dpi`` pixels) through a temporary file and a rename:
    a viewer never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        fig.savefig(tmp, dpi=dpi, format='png')
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

"""The toy data of the side-output picture of docs/visual.md: 32-px images holding one filled shape (disc, square or
triangle, anywhere) whose class is its colour (blue, green, red), over a grey clutter of blobs and lines.

    python docs/images/toy_colours.py DIR    # DIR/data/{train,val}/<colour>/*.png and DIR/test/*.png (128 px)

Any receptive field solves it: it exists to show that the tools read and draw trained runs, not to compare
networks. Deterministic (numpy seeds 0 and 123).
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('blue', 'green', 'red')
HUES = {'red': (220, 40, 40), 'green': (40, 190, 60), 'blue': (40, 80, 230)}


def render(rng: np.random.Generator, cls: str, size: int = 32) -> Image.Image:
    grey = np.repeat(rng.random((4, 4, 1)) * 180 + 40, 3, axis=2) + rng.normal(0, 10, (4, 4, 3))
    bg = np.asarray(Image.fromarray(grey.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                    dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
    im = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        draw.line(rng.integers(0, size, 4).tolist(), fill=(int(rng.integers(0, 256)),) * 3, width=1)
    r = rng.uniform(4.5, 8)
    cx, cy = rng.uniform(r, size - r, 2)
    colour = tuple(int(np.clip(c + rng.normal(0, 20), 0, 255)) for c in HUES[cls])
    shape = rng.choice(['disc', 'square', 'triangle'])
    if shape == 'disc':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        k, scale, turn = (4, 1.0, np.pi / 2) if shape == 'square' else (3, 1.2, 2 * np.pi)
        a = rng.uniform(0, turn)
        draw.polygon([(cx + scale * r * np.cos(a + 2 * np.pi * i / k), cy + scale * r * np.sin(a + 2 * np.pi * i / k))
                      for i in range(k)], fill=colour)
    return im


def main(root: str, n_train: int = 300, n_val: int = 60) -> None:
    root = Path(root)
    rng = np.random.default_rng(0)
    for split, n in (('train', n_train), ('val', n_val)):
        for cls in CLASSES:
            (root / 'data' / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                render(rng, cls).save(root / 'data' / split / cls / f'{i:04d}.png')
    (root / 'test').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(123)
    for i, cls in enumerate(CLASSES * 2):
        render(rng, cls).resize((128, 128), Image.BICUBIC).save(root / 'test' / f'{cls}_{i}.png')


if __name__ == '__main__':
    main(sys.argv[1])

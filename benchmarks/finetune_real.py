"""Fine-tuning on real scans nobody here drew: does starting from a checkpoint beat training from scratch?

The images are scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1797 scans of
digits written by 43 people, 8 x 8 grey levels, UCI). Two disjoint tasks are cut from them:

* pre-training: the digits 0-4, all of their scans;
* fine-tuning: the digits 5-9, a few scans per class for training, the rest held out.

A narrow SCNet-26 is pre-trained on the first task; then the second is trained twice with the same recipe,
once from the pre-trained checkpoint (``scnet train --init``: the classifier is new, 5 classes) and once
from random weights. Both are judged on the same held-out scans. Everything goes through the ``scnet train``
command line, as a user would run it.

    pip install scikit-learn
    python benchmarks/finetune_real.py            # writes benchmarks/results/finetune_real.json

``--source`` takes a folder of ``<label>/<image>`` files instead of the digits (what the tests use).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

RECIPE = """\
model: scnet26_cifar
model_kwargs: {{channels: [16, 32, 64, 128], memory_efficient: false}}
epochs: {epochs}
batch_size: {batch}
base_lr: 0.8
nesterov: true
weight_decay: 5.0e-5
schedule: cosine
warmup_epochs: 0.5
image_size: {size}
eval_resize: {size}
augment: pad-crop
workers: 0
"""


def digits() -> List[Tuple[np.ndarray, int]]:
    """scikit-learn's digit scans as 8 x 8 uint8 images (0-16 grey levels stretched to 0-255) and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit('this benchmark reads scikit-learn\'s bundled digits: pip install scikit-learn')
    bunch = load_digits()
    return [((image * 255 / 16).astype(np.uint8), int(label)) for image, label in zip(bunch.images, bunch.target)]


def folder_source(root: Path) -> List[Tuple[np.ndarray, int]]:
    """``root/<integer label>/<image>`` files, read as grey images."""
    return [(np.asarray(Image.open(p).convert('L')), int(p.parent.name)) for p in sorted(root.glob('*/*'))]


def write_split(samples, root: Path, labels, train_per_class: int, seed: int) -> Dict[str, int]:
    """An ImageFolder (train/ and val/) of ``labels``: ``train_per_class`` scans each for training (None: 3/4)."""
    rng = np.random.default_rng(seed)
    counts = {'train': 0, 'val': 0}
    for label in labels:
        mine = [image for image, y in samples if y == label]
        order = rng.permutation(len(mine))
        n_train = train_per_class or (3 * len(mine)) // 4
        for rank, i in enumerate(order):
            split = 'train' if rank < n_train else 'val'
            (root / split / f'digit{label}').mkdir(parents=True, exist_ok=True)
            Image.fromarray(mine[i]).convert('RGB').save(root / split / f'digit{label}' / f'{i:04d}.png')
            counts[split] += 1
    return counts


def train(data: Path, recipe: Path, output: Path, *extra: str) -> Dict[str, float]:
    from scnet.cli.main import main

    if main(['train', '--data', str(data), '--config', str(recipe), '--output', str(output), '--quiet', *extra]):
        raise SystemExit(f'training into {output} failed')
    rows = [json.loads(line) for line in (output / 'metrics.jsonl').read_text().splitlines()]
    return rows[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--source', type=Path, help='folder of <label>/<image> files (default: scikit-learn digits)')
    p.add_argument('--shots', type=int, default=10, help='training scans per class when fine-tuning (default 10)')
    p.add_argument('--pretrain-epochs', type=int, default=8)
    p.add_argument('--finetune-epochs', type=int, default=15)
    p.add_argument('--size', type=int, default=16, help='image size the 8 x 8 scans are resized to (default 16)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--output', type=Path, default=Path(__file__).resolve().parent / 'results' / 'finetune_real.json')
    args = p.parse_args(argv)
    if args.output.exists():
        sys.exit(f'{args.output} exists: remove it or pass --output')

    samples = folder_source(args.source) if args.source else digits()
    labels = sorted({y for _, y in samples})
    half = len(labels) // 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pre_recipe, ft_recipe = tmp / 'pre.yaml', tmp / 'ft.yaml'
        pre_counts = write_split(samples, tmp / 'pre', labels[:half], 0, seed=0)
        pre_batch = min(32, pre_counts['train'] // 2 * 2)  # a small --source has fewer images than a batch
        pre_recipe.write_text(RECIPE.format(epochs=args.pretrain_epochs, size=args.size, batch=pre_batch))
        ft_recipe.write_text(RECIPE.format(epochs=args.finetune_epochs, size=args.size, batch=16))
        pre = train(tmp / 'pre', pre_recipe, tmp / 'pre_run')
        runs = []
        for seed in args.seeds:
            ft_data = tmp / f'ft{seed}'
            counts = write_split(samples, ft_data, labels[half:], args.shots, seed=seed)
            tuned = train(ft_data, ft_recipe, tmp / f'tuned{seed}', '--init', str(tmp / 'pre_run' / 'model.safetensors'),
                          '--seed', str(seed))
            scratch = train(ft_data, ft_recipe, tmp / f'scratch{seed}', '--seed', str(seed))
            runs.append({'seed': seed, 'train_images': counts['train'], 'held_out_images': counts['val'],
                         'fine_tuned_top1': tuned['val_top1'], 'from_scratch_top1': scratch['val_top1']})
    from scnet.bench.machine import cpu_model_name
    import torch

    result = {
        'data': 'scikit-learn load_digits (UCI handwritten digits, 8x8 scans)' if not args.source else str(args.source),
        'pretrain': {'classes': [str(c) for c in labels[:half]], 'images': pre_counts,
                     'epochs': args.pretrain_epochs, 'val_top1': pre['val_top1']},
        'finetune': {'classes': [str(c) for c in labels[half:]], 'shots_per_class': args.shots,
                     'epochs': args.finetune_epochs, 'image_size': args.size},
        'runs': runs,
        'mean_fine_tuned_top1': float(np.mean([r['fine_tuned_top1'] for r in runs])),
        'mean_from_scratch_top1': float(np.mean([r['from_scratch_top1'] for r in runs])),
        'seconds': time.perf_counter() - start,
        'machine': f'{cpu_model_name()}, {torch.get_num_threads()} threads, {platform.python_version()}',
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + '\n')
    print(f"held-out top-1 over {len(runs)} seeds: fine-tuned {result['mean_fine_tuned_top1']:.1f}%, from scratch "
          f"{result['mean_from_scratch_top1']:.1f}% ({args.shots} scans per class); {args.output}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""``scnet models``: the names ``create_model`` accepts, with their parameter counts and weights."""
from __future__ import annotations

import argparse
import json

from scnet.cli.formatting import render_table
from scnet.errors import ScnetError


def add_parser(sub) -> None:
    p = sub.add_parser('models', help='list the model zoo',
                       description='List the networks create_model builds, their parameters and released weights.')
    p.add_argument('pattern', nargs='?', default=None, help="shell pattern to filter names, e.g. '*scnet*'")
    p.add_argument('--format', choices=('table', 'markdown', 'json'), default='table', help='output format')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from scnet.models import PAPER_MODELS, create_model, list_models
    from scnet.models.factory import close_model_names
    from scnet.weights import OFFICIAL_WEIGHTS

    names = list_models(args.pattern)
    if args.pattern and not names:  # an empty table would look like an empty zoo
        close = close_model_names(args.pattern.lower().replace('*', ''))
        advice = f'did you mean {", ".join(close)}? ' if close else ''
        if not any(c in args.pattern for c in '*?['):
            advice += f"a pattern names models with shell wildcards, e.g. '{args.pattern.lower()}*' "
        raise ScnetError(f'no model matches {args.pattern!r}{"; " + advice if advice else " "}'
                         '(`scnet models` lists them all)')
    rows = []
    for name in names:
        with torch.device('meta'):  # shapes only: no memory, no initialisation
            model = create_model(name)
        rows.append(dict(model=name, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                         in_paper=name in PAPER_MODELS, authors_weights=name in OFFICIAL_WEIGHTS))
    if args.format == 'json':
        print(json.dumps(rows, indent=2))
    else:
        print(render_table(['model', 'params (M)', 'in paper', "authors' weights"],
                           [[r['model'], f"{r['params_m']:.2f}", 'yes' if r['in_paper'] else '',
                             'yes' if r['authors_weights'] else ''] for r in rows],
                           markdown=args.format == 'markdown'))
    return 0

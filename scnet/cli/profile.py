"""``scnet profile``: Params, MAdds and FLOPs of the zoo's networks next to the paper's Tables 1 and 3."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from scnet.cli.formatting import render_table

_DESCRIPTION = """\
Count parameters, MAdds and FLOPs of the zoo's networks for one input image (batch 1) and set
them beside the figures of the paper's Table 1 and Table 3.

Conventions: Params are all parameters (BN running statistics excluded). MAdds are the
multiply-accumulates of convolutions and matrix products, counted by torch.utils.flop_counter; batch
norm, activations, gates, pooling and up-sampling are not counted. FLOPs = 2 x MAdds. Networks are built
on PyTorch's meta device (shapes only), so no memory is used and no weights are downloaded.

A row matches the paper when params are within 0.1M and MAdds within 3% of its figures (the paper
rounds to 0.1M and 0.1G). The paper's figures are for 224x224; at other sizes MAdds are not compared.
Without --models, every network with a row in Table 1 or 3 is profiled, followed by the Table 3 rows
this project does not build, with the reason."""


def add_parser(sub) -> None:
    p = sub.add_parser('profile', help="params, MAdds and FLOPs vs the paper's tables",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', metavar='NAME', default=None,
                   help="zoo names to profile (default: every network of the paper's Tables 1 and 3); "
                        "`scnet models` lists the names")
    p.add_argument('--input-size', default='224', metavar='N|HxW',
                   help='input resolution: N for NxN or HxW (height x width), e.g. 320x240 (default: 224)')
    p.add_argument('--format', choices=('table', 'markdown', 'json'), default='table',
                   help='aligned text, a Markdown table (our figures beside the paper\'s), or a JSON list of rows')
    p.set_defaults(run=run)


def _num(value: Optional[float], digits: int = 2) -> str:
    return '' if value is None else f'{value:.{digits}f}'


def _paper_num(value: Optional[float]) -> str:
    return '' if value is None else f'{value:.1f}'  # as printed: one decimal


def _paper_label(row: Dict[str, object]) -> str:
    if not row['paper_row']:
        return ''
    return f"{row['paper_row']} (Table {', '.join(str(t) for t in row['paper_tables'])})"


def _render(rows: List[Dict[str, object]], size: str, markdown: bool) -> str:
    """Our figures beside the paper's; the last column (the row's note) says 'match' or why not."""
    headers = ['model', 'paper row', 'params (M)', 'paper', 'MAdds (G)', 'paper', 'diff', 'FLOPs (G)', 'paper',
               'vs paper']
    body = [[row['model'] or '-', _paper_label(row), _num(row['params_m']), _paper_num(row['paper_params_m']),
             _num(row['macs_g']), _paper_num(row['paper_madds_g']),
             '' if row['madds_rel_diff_pct'] is None else f"{row['madds_rel_diff_pct']:+.1f}%",
             _num(row['flops_g']), _paper_num(row['paper_flops_g']), row['note']] for row in rows]
    caption = (f'Input {size}, batch 1. MAdds: multiply-accumulates of convolutions and matrix products '
               '(BN, activations, pooling not counted); FLOPs = 2 x MAdds. '
               'Match: params within 0.1M and MAdds within 3% of the paper.')
    return caption + '\n\n' + render_table(headers, body, markdown=markdown)


def _progress(total: int):
    """A tqdm bar on stderr when several networks are profiled (hidden when stderr is not a terminal)."""
    if total < 3:
        return None
    from tqdm import tqdm

    return lambda items: tqdm(items, desc='profiling', unit='model', file=sys.stderr, leave=False, disable=None)


def run(args: argparse.Namespace) -> int:
    from scnet.complexity import paper_models, parse_input_size, profile_models, profile_paper

    h, w = parse_input_size(args.input_size)  # raises InputSizeError (an ScnetError) on a bad value
    if args.models is None:
        rows = profile_paper((h, w), progress=_progress(len(paper_models())))
    else:
        rows = profile_models(args.models, (h, w), progress=_progress(len(args.models)))
    if args.format == 'json':
        print(json.dumps(rows, indent=2))
    else:
        print(_render(rows, f'{h}x{w}', markdown=args.format == 'markdown'))
    return 0

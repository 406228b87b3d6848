"""``scnet convert``: placeholder, being written."""


def add_parser(sub) -> None:
    p = sub.add_parser('convert', help='(being written)')
    p.set_defaults(run=lambda args: 1)

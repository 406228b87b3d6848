"""``scnet profile``: placeholder, being written."""


def add_parser(sub) -> None:
    p = sub.add_parser('profile', help='(being written)')
    p.set_defaults(run=lambda args: 1)

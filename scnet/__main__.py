"""``python -m scnet`` (and ``torchrun -m scnet``) runs the ``scnet`` command line."""
import sys

from scnet.cli.main import main

sys.exit(main())

"""`python -m spawner_ext` is the `gpuhub` command (how the hub starts the gpuhub service)."""

import sys

from .cli import main

sys.exit(main())

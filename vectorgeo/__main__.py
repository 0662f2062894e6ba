"""``python -m vectorgeo``: the ``vectorgeo`` command (see :mod:`vectorgeo.cli`)."""

import sys

from vectorgeo.cli import main

sys.exit(main())

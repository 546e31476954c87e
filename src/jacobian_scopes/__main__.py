"""``python -m jacobian_scopes``: the command line (see :mod:`jacobian_scopes.cli`)."""

import sys

from jacobian_scopes.cli import main

sys.exit(main())

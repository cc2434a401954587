"""`python -m depthcontrast` = the `depthcontrast` command."""

import sys

from depthcontrast.cli import main

sys.exit(main())

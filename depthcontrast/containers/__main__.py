import sys

from depthcontrast.containers.cli import main

sys.exit(main())

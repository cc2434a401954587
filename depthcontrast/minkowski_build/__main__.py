import sys

from depthcontrast.minkowski_build.build import main

sys.exit(main())

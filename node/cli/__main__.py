"""`python -m node.cli ...` runs the `custody` command line."""

import sys

from node.cli import main

sys.exit(main())

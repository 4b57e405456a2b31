"""`python -m thinkube_pipelines.catalog` runs the `thinkube-catalog` command."""

import sys

from thinkube_pipelines.catalog.cli import main

sys.exit(main())

"""``python -m emodis_ray.cli``: the entry point of jobs submitted to a cluster."""

import sys

from emodis_ray.cli import main

sys.exit(main())

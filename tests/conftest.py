"""Shared fixtures. decord is imported through the package's safe loader before anything else
(see emodis_ray/_decord.py: a plain `import decord` next to a CUDA build of torch segfaults)."""

from __future__ import annotations

import emodis_ray.data._decord  # noqa: F401  (must come before any `import decord`)

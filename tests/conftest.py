"""Shared fixtures. decord is imported through the package's safe loader before anything else
(see emodis_ray/_decord.py: a plain `import decord` next to a CUDA build of torch segfaults)."""

from __future__ import annotations  # noqa: I001  (the safe decord loader first)

import emodis_ray.data._decord  # noqa: F401  (must come before any `import decord`)
import pytest

from emodis_ray.runtime.session import use_local_train_env

# Every local cluster a test starts runs Ray Train as one the program starts would (runtime/session.py).
use_local_train_env()


@pytest.fixture(scope="module")
def cluster() -> None:
    """A local two-CPU Ray cluster shared by the tests of one module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()

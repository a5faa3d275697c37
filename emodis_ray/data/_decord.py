"""Import decord safely.

decord2's import dlopens every shared library under the ``nvidia`` pip namespace with RTLD_GLOBAL,
to serve its CUDA build. A CUDA build of torch installs that namespace, and one of those libraries
(libnvblas) then intercepts BLAS calls: torch's first CPU matmul or mel spectrogram segfaults.
We decode on the CPU, so the preload is hidden while decord is imported; it also keeps about a
gigabyte of CUDA libraries out of every decode worker.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def load_decord() -> ModuleType:
    if "decord" in sys.modules:
        return sys.modules["decord"]
    find_spec = importlib.util.find_spec

    def _no_nvidia(name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        return None if name == "nvidia" else find_spec(name, *args, **kwargs)  # type: ignore[arg-type]

    importlib.util.find_spec = _no_nvidia  # type: ignore[assignment]
    try:
        import decord
    finally:
        importlib.util.find_spec = find_spec
    decord.bridge.set_bridge("native")
    return decord


decord = load_decord()

"""What every subcommand shares: the config flags, the cluster address flag, elapsed time."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


def add_config_args(p: argparse.ArgumentParser, default: str = "tiny") -> None:
    p.add_argument("--config", default=default,
                   help=f"preset name (tiny, paper) or a YAML file; a file may say `preset: tiny` "
                        f"and list only what differs (default: {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set model.spk_dim=64 (repeatable)")


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")


def elapsed(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f} s"

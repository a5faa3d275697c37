"""What every subcommand shares: the config flags, the cluster address flag, elapsed time."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

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


def check_manifest(path: str | Path | None) -> None:
    """Read and validate a manifest before Ray starts, so a missing or malformed file is a one-line error
    in a second, not after the cluster and the dashboard came up (and nothing is written to OUT)."""
    if path is None:
        return
    from emodis_ray.data.manifest import read_manifest

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such manifest file (make one with `emodis manifest`)")
    read_manifest(Path(path))


def check_cache(cache_dir: str) -> None:
    """A feature cache named by --cache / data.cache_dir must be a folder."""
    if cache_dir and not Path(cache_dir).is_dir():
        raise FileNotFoundError(f"data.cache_dir: {cache_dir} is not a folder (make it with `emodis preprocess`)")


def check_run(run: str | Path, model: bool = False) -> None:
    """A run folder given to evaluate/predict must hold what training wrote; with ``model``, its model.pt
    must load (a corrupt file is named here, not inside a Ray actor)."""
    from emodis_ray.core.checkpoint import MODEL_FILE
    from emodis_ray.train.run_dir import CONFIG_FILE, run_config

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    if not (run / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run}: not a run folder (no {CONFIG_FILE}; train one with `emodis train`)")
    run_config(run)
    if model:
        from emodis_ray.core.checkpoint import load_model

        if not (run / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{run / MODEL_FILE}: no trained model (did `emodis train` finish?)")
        load_model(run / MODEL_FILE)


class ExamplesFormatter(argparse.HelpFormatter):
    """Wraps the description as usual; an epilog starting with ``examples:`` keeps its lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

"""Search spaces for `emodis tune` (docs/design.md §8): a YAML file (``tune_spaces/``) of fixed ``base``
overrides and sampled ``params``, both keyed by dotted config keys, so a trial's config is the preset, then
``--set``, then ``base``, then its sampled values. See :func:`load_space` for the format; every error names
the file and the key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from emodis_ray.config import Config, ConfigError, replace

DISTRIBUTIONS: dict[str, tuple[set[str], set[str]]] = {  # name -> (required keys, optional keys)
    "uniform": ({"low", "high"}, set()),
    "loguniform": ({"low", "high"}, set()),
    "int": ({"low", "high"}, {"step"}),
    "choice": ({"values"}, set()),
}
SPACE_KEYS = {"study", "description", "base", "params", "objective", "start"}
OBJECTIVE_KEYS = {"tolerance", "f1_epochs"}
DEFAULT_TOLERANCE = 0.02


class SpaceError(ValueError):
    """A search-space file is invalid; the message names the file and the key."""


# --- search spaces ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    key: str  # a dotted config key, e.g. method.grl_lambda
    dist: str
    low: float | None = None
    high: float | None = None
    step: int | None = None
    values: tuple[Any, ...] = ()

    def optuna(self) -> Any:
        """The Optuna distribution."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.dist == "choice":
            return CategoricalDistribution(list(self.values))
        if self.dist == "int":
            return IntDistribution(int(self.low), int(self.high), step=self.step or 1)  # type: ignore[arg-type]
        return FloatDistribution(float(self.low), float(self.high), log=self.dist == "loguniform")  # type: ignore[arg-type]

    def grid(self, n: int) -> list[Any]:
        """``n`` evenly spread values (geometric for loguniform); a choice gives its first ``n`` values."""
        if self.dist == "choice":
            return list(self.values[:n])
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
        if n == 1:
            pts = [math.sqrt(lo * hi) if self.dist == "loguniform" else (lo + hi) / 2]
        elif self.dist == "loguniform":
            pts = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
        else:
            pts = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        if self.dist == "int":
            return sorted({int(round(p)) for p in pts})
        return [float(f"{p:.4g}") for p in pts]

    def contains(self, value: Any) -> bool:
        if self.dist == "choice":
            return value in self.values
        return isinstance(value, (int, float)) and float(self.low) <= value <= float(self.high)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Space:
    path: Path
    study: str
    description: str
    base: dict[str, Any]
    params: dict[str, Param]
    tolerance: float = DEFAULT_TOLERANCE
    f1_epochs: int = 1  # emotion F1 of a run = the mean of its last f1_epochs epochs (baseline and trials alike)
    start: tuple[dict[str, Any], ...] = ()  # points evaluated first; a missing parameter takes its middle value

    def optuna_space(self) -> dict[str, Any]:
        return {k: p.optuna() for k, p in self.params.items()}

    def config(self, cfg: Config, params: Mapping[str, Any] | None = None) -> Config:
        """``cfg`` with this space's ``base`` and then ``params`` applied."""
        return apply_params(apply_params(cfg, self.base), params or {})

    def restrict(self, keys: Sequence[str]) -> Space:
        """The same space over ``keys`` only (the others keep the config's values)."""
        missing = [k for k in keys if k not in self.params]
        if missing:
            raise SpaceError(f"{self.path}: no parameter {', '.join(missing)} (have: {', '.join(self.params)})")
        return Space(self.path, self.study, self.description, dict(self.base), {k: self.params[k] for k in keys},
                     self.tolerance, self.f1_epochs, ())

    def digest(self) -> str:
        d = {"base": self.base, "params": {k: asdict(p) for k, p in self.params.items()}, "tol": self.tolerance,
             "f1_epochs": self.f1_epochs}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def apply_params(cfg: Config, params: Mapping[str, Any]) -> Config:
    """``cfg`` with dotted-key values applied, type-checked like ``--set`` overrides."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        parts = key.split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{key}: expected SECTION.NAME, e.g. method.grl_lambda")
        sections.setdefault(parts[0], {})[parts[1]] = value
    if not sections:
        return cfg
    unknown = sorted(set(sections) - set(cfg.to_dict()))
    if unknown:
        raise ConfigError(f"unknown section {', '.join(unknown)} (known: {', '.join(cfg.to_dict())})")
    return replace(cfg, **sections)


def _number(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            return float(v)  # YAML 1.1 reads 3e-4 (no dot) as a string
        except (TypeError, ValueError):
            raise SpaceError(f"{where}: expected a number, got {v!r}") from None
    return float(v)


def _param(where: str, key: str, spec: Any) -> Param:
    if not isinstance(spec, dict) or "dist" not in spec:
        raise SpaceError(f"{where}: expected a mapping with `dist` ({', '.join(DISTRIBUTIONS)}), got {spec!r}")
    dist = spec["dist"]
    if dist not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {dist!r} (known: {', '.join(DISTRIBUTIONS)})")
    required, optional = DISTRIBUTIONS[dist]
    unknown = sorted(set(spec) - required - optional - {"dist"})
    if unknown:
        raise SpaceError(f"{where}: unknown key {', '.join(unknown)} for {dist} "
                         f"(expected {', '.join(sorted(required | optional))})")
    missing = sorted(required - set(spec))
    if missing:
        raise SpaceError(f"{where}: {dist} needs {', '.join(missing)}")
    if dist == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: `values` must be a non-empty list")
        if any(isinstance(v, (list, dict)) for v in values) or len({json.dumps(v) for v in values}) != len(values):
            raise SpaceError(f"{where}: `values` must be distinct scalars, got {values!r}")
        return Param(key, dist, values=tuple(values))
    low, high = _number(f"{where}.low", spec["low"]), _number(f"{where}.high", spec["high"])
    if not low < high:
        raise SpaceError(f"{where}: impossible bounds: low ({low:g}) must be below high ({high:g})")
    if dist == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: loguniform needs low > 0, got {low:g}")
    step = None
    if dist == "int":
        if low != int(low) or high != int(high):
            raise SpaceError(f"{where}: int bounds must be integers, got {low:g}, {high:g}")
        step = spec.get("step", 1)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1 or step > high - low:
            raise SpaceError(f"{where}: step must be an integer in 1..{int(high - low)}, got {step!r}")
        return Param(key, dist, int(low), int(high), step=step)
    return Param(key, dist, low, high)


def shipped_spaces() -> dict[str, Path]:
    """The spaces that ship with the package (``tune_spaces/*.yaml``, installed as ``emodis_ray/spaces``), by
    name."""
    folder = Path(str(resources.files("emodis_ray").joinpath("spaces")))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_space(name_or_path: str | Path) -> Path:
    """A space file: a path that exists, else a shipped space by name (``gr``, ``conf``, ``alt``, ``all``),
    so ``--space gr`` works from an installed wheel as well as from a checkout."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_spaces()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise SpaceError(f"search space {name_or_path}: neither a file nor a shipped space "
                     f"({', '.join(shipped) or 'none installed'})")


def load_space(path: str | Path, cfg: Config | None = None) -> Space:
    """Read and validate a search space: a file, or a shipped space by name (:func:`resolve_space`). Unknown
    keys (in the file or not in :class:`Config`), values of the wrong type, impossible bounds and unknown
    distributions raise :class:`SpaceError` naming file and key."""
    path = resolve_space(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpaceError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a mapping with {', '.join(sorted(SPACE_KEYS))}")
    unknown = sorted(set(data) - SPACE_KEYS)
    if unknown:
        raise SpaceError(f"{path}: unknown key {', '.join(unknown)} (known: {', '.join(sorted(SPACE_KEYS))})")
    base, params_spec = data.get("base") or {}, data.get("params") or {}
    if not isinstance(base, dict) or not isinstance(params_spec, dict):
        raise SpaceError(f"{path}: `base` and `params` must be mappings of dotted config keys")
    if not params_spec:
        raise SpaceError(f"{path}: `params` is empty: nothing to search")
    sample = cfg or Config()
    for key, value in base.items():  # each base value must be a valid config value
        try:
            apply_params(sample, {key: value})
        except ConfigError as e:
            raise SpaceError(f"{path}: base.{key}: {e}") from None
    params: dict[str, Param] = {}
    for key, spec in params_spec.items():
        where = f"{path}: params.{key}"
        p = _param(where, str(key), spec)
        probes = list(p.values) if p.dist == "choice" else [p.low, p.high]
        if p.dist == "int":
            probes = [int(v) for v in probes]  # type: ignore[arg-type]
        for v in probes:  # every value the sampler can produce must make a valid config
            try:
                apply_params(apply_params(sample, base), {key: v})
            except ConfigError as e:
                raise SpaceError(f"{where}: {e}") from None
        params[str(key)] = p
    objective = data.get("objective") or {}
    if not isinstance(objective, dict):
        raise SpaceError(f"{path}: objective: expected a mapping with {', '.join(sorted(OBJECTIVE_KEYS))}")
    if set(objective) - OBJECTIVE_KEYS:
        raise SpaceError(f"{path}: objective: unknown key {', '.join(sorted(set(objective) - OBJECTIVE_KEYS))} "
                         f"(known: {', '.join(sorted(OBJECTIVE_KEYS))})")
    tol = _number(f"{path}: objective.tolerance", objective.get("tolerance", DEFAULT_TOLERANCE))
    if tol < 0:
        raise SpaceError(f"{path}: objective.tolerance must be >= 0, got {tol:g}")
    f1_epochs = objective.get("f1_epochs", 1)
    if isinstance(f1_epochs, bool) or not isinstance(f1_epochs, int) or f1_epochs < 1:
        raise SpaceError(f"{path}: objective.f1_epochs must be an integer >= 1, got {f1_epochs!r}")
    start = data.get("start") or []
    if not isinstance(start, list) or not all(isinstance(s, dict) for s in start):
        raise SpaceError(f"{path}: start: expected a list of mappings of parameter values")
    for i, point in enumerate(start):
        for key, v in point.items():
            if key not in params:
                raise SpaceError(f"{path}: start[{i}].{key}: not a parameter of this space")
            if not params[key].contains(v):
                raise SpaceError(f"{path}: start[{i}].{key}: {v!r} lies outside the parameter's distribution")
    return Space(path=path, study=str(data.get("study") or path.stem), description=str(data.get("description", "")),
                 base=dict(base), params=params, tolerance=tol, f1_epochs=f1_epochs,
                 start=tuple(start))

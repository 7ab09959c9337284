"""A sweep spec: read, checked, and held as a :class:`Spec` (the trials a grid makes are :mod:`.plan`'s).

Every check names the bad key or value and what is allowed (:class:`SweepError`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from sparse_rl.run_directory import flat_env_id

# The checks of a spec import the config, env and method registries (torch, SB3, gymnasium) where they run:
# the names a sweep's Ray worker needs from here (SPEC_FILE, LOG_DIR, trial_label, ...) come without them.

EXIT_BAD_INPUT = 2
SPEC_FILE = "sweep.yml"
#: seconds a stopped trial's training gets to write its checkpoint before it is killed
STOP_GRACE_S = 60
BEST_FILE = "best.yml"
LOG_DIR = "logs"
SPEC_KEYS = ("algo", "envs", "seeds", "n_timesteps", "set", "variants", "grid", "search", "save_replay_buffer")
SEARCH_KEYS = ("space", "num_samples", "grace_period", "reduction_factor", "seed")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")


class SweepError(ValueError):
    """A sweep spec or command that cannot run; the message names the bad value."""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One training run of a sweep."""

    name: str  # <grid values>-s<seed>, unique within its env
    env: str
    seed: int
    overrides: dict[str, Any]  # config keys of this trial (fixed ``set`` + its grid point)
    preset: str | None

    def run_dir(self, out: Path) -> Path:
        return out / self.env / self.name


def trial_label(env: str, name: str) -> str:
    """A trial's flat name for its log file and its Ray Tune trial: ``<env>-<name>``, with the ``/`` of a
    namespaced env id (``MinAtar/Breakout-v1``) written as ``-`` (Tune refuses a ``/`` in a trial's name)."""
    return f"{flat_env_id(env)}-{name}"


@dataclasses.dataclass
class Spec:
    algo: str
    envs: list[str]
    seeds: list[int]
    n_timesteps: int | None
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    search: dict[str, Any] | None
    save_replay_buffer: bool
    raw: dict[str, Any]
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def _known_keys(algo: str) -> list[str]:
    from sparse_rl.config import CONFIG_CLASSES

    return ["preset", *(f.name for f in dataclasses.fields(CONFIG_CLASSES[algo]))]


def _check_key(algo: str, key: str, where: str) -> None:
    if key.startswith("topology_kwargs."):
        return  # checked with its method when the trial's config is resolved
    known = _known_keys(algo)
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; known: {', '.join(known)}"
        raise SweepError(f"unknown {where} key {key!r}{hint}")


def _check_value(algo: str, key: str, value: Any, where: str) -> None:
    from sparse_rl.config import CONFIG_CLASSES, ConfigError, available_presets, check_value
    from sparse_rl.topology.methods import available_methods

    if key == "preset":
        presets = available_presets(algo)
        if value not in presets:
            close = difflib.get_close_matches(str(value), presets, n=3)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise SweepError(f"unknown {where} preset {value!r}; {hint}known: {', '.join(presets)}")
    elif key == "topology" and value not in available_methods():
        close = difflib.get_close_matches(str(value), available_methods(), n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise SweepError(f"unknown {where} topology {value!r}; {hint}known: {', '.join(available_methods())}")
    elif not key.startswith("topology_kwargs."):
        try:
            check_value(CONFIG_CLASSES[algo], key, value)
        except ConfigError as err:
            raise SweepError(f"{where} {key}: {err}") from None


def load_spec(path: Path) -> Spec:
    """Read and check a spec file; raises :class:`SweepError` naming what is wrong."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SweepError(f"spec {str(path)!r} does not exist") from None
    except yaml.YAMLError as err:
        raise SweepError(f"spec {str(path)!r} is not valid YAML: {err}") from None
    return parse_spec(raw, str(path))


def parse_spec(raw: Any, name: str = "spec") -> Spec:
    from sparse_rl.config import CONFIG_CLASSES, ConfigError
    from sparse_rl.envs import EnvError, resolve_env_id

    if not isinstance(raw, dict):
        raise SweepError(f"{name} must be a mapping with keys {', '.join(SPEC_KEYS)}, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), SPEC_KEYS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SweepError(f"unknown spec key {unknown[0]!r}{hint} (allowed: {', '.join(SPEC_KEYS)})")
    algo = raw.get("algo")
    if algo not in CONFIG_CLASSES:
        raise SweepError(f"algo must be one of {', '.join(CONFIG_CLASSES)}, got {algo!r}")
    envs = raw.get("envs")
    if isinstance(envs, str):
        envs = [envs]
    if not isinstance(envs, list) or not envs:
        raise SweepError(f"envs must be a non-empty list of env ids, got {envs!r}")
    try:
        envs = [resolve_env_id(str(e)) for e in envs]
    except (EnvError, ConfigError) as err:
        raise SweepError(f"envs: {err}") from None
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise SweepError(f"seeds must be a non-empty list of non-negative ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds must not repeat, got {seeds!r}")
    n = raw.get("n_timesteps")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
        raise SweepError(f"n_timesteps must be a positive int, got {n!r}")
    fixed = raw.get("set") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"set must be a mapping of config keys to values, got {fixed!r}")
    for key, value in fixed.items():
        _check_key(algo, key, "set")
        _check_value(algo, key, value, "set")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"grid must be a mapping of config keys to lists of values, got {grid!r}")
    for key, values in grid.items():
        _check_key(algo, key, "grid")
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid {key} must be a non-empty list of values, got {values!r}")
        for value in values:
            _check_value(algo, key, value, "grid")
        if key in fixed:
            raise SweepError(f"{key!r} is both in set and in grid; keep one")
    search = raw.get("search")
    if search is not None:
        search = _parse_search(algo, search, grid, fixed)
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise SweepError(f"variants must map names to mappings of config keys, got {variants!r}")
    for vname, values in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9.+_=-]+", str(vname)):
            raise SweepError(f"variant name {vname!r} must be letters, digits and . + _ = - only (it names run directories)")
        for key, value in values.items():
            _check_key(algo, key, f"variants.{vname}")
            _check_value(algo, key, value, f"variants.{vname}")
            if key in grid:
                raise SweepError(f"{key!r} is both in variants.{vname} and in grid; keep one")
    save_buffer = raw.get("save_replay_buffer", True)
    if not isinstance(save_buffer, bool):
        raise SweepError(f"save_replay_buffer must be true or false, got {save_buffer!r}")
    return Spec(algo, envs, list(seeds), n, dict(fixed), {k: list(v) for k, v in grid.items()}, search, save_buffer, raw,
                {str(k): dict(v) for k, v in variants.items()})


def _parse_search(algo: str, search: Any, grid: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(search, dict):
        raise SweepError(f"search must be a mapping with keys {', '.join(SEARCH_KEYS)}, got {search!r}")
    for key in search:
        if key not in SEARCH_KEYS:
            raise SweepError(f"unknown search key {key!r} (allowed: {', '.join(SEARCH_KEYS)})")
    space = search.get("space")
    if not isinstance(space, dict) or not space:
        raise SweepError("search.space must map config keys to a range, e.g. {learning_rate: {loguniform: [1e-4, 1e-3]}}")
    for key, dist in space.items():
        _check_key(algo, key, "search.space")
        if key in grid or key in fixed:
            raise SweepError(f"{key!r} is searched and also fixed in set or grid; keep one")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise SweepError(f"search.space.{key} must be one of {{{': ..., '.join(DISTRIBUTIONS)}: ...}}, got {dist!r}")
        kind, bounds = next(iter(dist.items()))
        if kind == "choice":
            if not isinstance(bounds, list) or not bounds:
                raise SweepError(f"search.space.{key}.choice must be a non-empty list, got {bounds!r}")
            for value in bounds:
                _check_value(algo, key, value, "search.space")
        else:
            ok = isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)
            if not ok or not bounds[0] < bounds[1] or (kind == "loguniform" and bounds[0] <= 0):
                raise SweepError(f"search.space.{key}.{kind} must be [low, high] with low < high"
                                 f"{' and low > 0' if kind == 'loguniform' else ''}, got {bounds!r}")
    samples = search.get("num_samples", 10)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples <= 0:
        raise SweepError(f"search.num_samples must be a positive int, got {samples!r}")
    grace = search.get("grace_period")
    if grace is not None and (not isinstance(grace, int) or grace <= 0):
        raise SweepError(f"search.grace_period must be a positive int (env steps), got {grace!r}")
    factor = search.get("reduction_factor", 3)
    if not isinstance(factor, (int, float)) or factor <= 1:
        raise SweepError(f"search.reduction_factor must be > 1, got {factor!r}")
    return {"space": space, "num_samples": samples, "grace_period": grace, "reduction_factor": factor,
            "seed": search.get("seed", 0)}

"""The boundary with Hydra, and the only library module that sees a DictConfig.

- `register()`: the settings records as Hydra schemas (ConfigStore `schema/...`, Hydra's "structured config schema"
  pattern): each config file names its schema in its defaults list (`/schema/init/kaiming@_here_`), so Hydra checks
  every key and type of it, and of every override and experiment, when it composes the config; and the resolver
  `deepinit_unnamed` that gives train.yaml the keys left out of job folders' names (Settings.UNNAMED);
- `from_config(cfg)`: the run's Settings, with how Hydra launched it (a sweep, and the keys the sweep varies);
- `compose_error(e)`: the one line for a config that does not compose (Hydra's own message spans several lines);
- `check_runs_dir(overrides)`: a runs_dir that cannot be made, before Hydra makes the run's folder in it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from deepinit.base.rules import ConfigError, config_key
from deepinit.network.init_schemes import SCHEMES
from deepinit.settings.records import (
    TOP_LEVEL,
    CheckpointSettings,
    DataSettings,
    ParamSettings,
    Settings,
    SpeedSettings,
    StatsSettings,
    folder_name,
)

SCHEMA = "schema"  # the ConfigStore group of the schemas (conf/ has no folder of that name)
# schema class -> (the record it mirrors: its fields' rules and keys; what the error line calls it)
_SCHEMAS: dict[type, tuple[list[type], str]] = {}


def _hydra_type(hint: Any) -> Any:
    """A record's type hint as OmegaConf reads it: `X | None` as Optional[X], `list[X]` as List[X]."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [_hydra_type(a) for a in typing.get_args(hint)]
        return typing.Optional[next(a for a in args if a is not type(None))]  # noqa: UP045 (OmegaConf's spelling)
    if typing.get_origin(hint) is list:
        return typing.List[_hydra_type(typing.get_args(hint)[0])]  # noqa: UP006
    return hint


def _schema(name: str, records: Sequence[type], what: str, groups: Sequence[str] = ()) -> type:
    """A Hydra schema with the records' keys and types and no defaults (the yaml files have them). Not the frozen
    records themselves: OmegaConf makes a frozen dataclass's nodes read-only, and Hydra merges the yaml into them."""
    fields: list[tuple[str, Any, Any]] = []
    for record in records:
        hints = typing.get_type_hints(record)
        for f in dataclasses.fields(record):
            fields.append((config_key(f), _hydra_type(hints[f.name]), dataclasses.field(default=MISSING)))
    fields += [(group, Any, dataclasses.field(default=MISSING)) for group in groups]  # typed by their own files
    schema = dataclasses.make_dataclass(name, fields)
    _SCHEMAS[schema] = (list(records), what)
    return schema


def register() -> None:
    """Register the schemas and the resolver with Hydra (once per process; before any config is composed)."""
    if OmegaConf.has_resolver("deepinit_unnamed"):
        return
    store = ConfigStore.instance()
    store.store(group=SCHEMA, name="train", node=_schema("TrainSchema", TOP_LEVEL, "the config", Settings.GROUPS))
    store.store(group=SCHEMA, name="data", node=_schema("DataSchema", [DataSettings], "data"))
    store.store(group=SCHEMA, name="param", node=_schema("ParamSchema", [ParamSettings], "param"))
    store.store(group=SCHEMA, name="stats", node=_schema("StatsSchema", [StatsSettings], "stats"))
    store.store(group=SCHEMA, name="speed", node=_schema("SpeedSchema", [SpeedSettings], "speed"))
    store.store(group=SCHEMA, name="checkpoint", node=_schema("CheckpointSchema", [CheckpointSettings], "checkpoint"))
    for name, scheme in SCHEMES.items():
        schema = _schema(f"{scheme.settings.__name__}Schema_{name}", [scheme.settings], f"init {name}")
        store.store(group=f"{SCHEMA}/init", name=name, node=schema)
    OmegaConf.register_new_resolver("deepinit_unnamed", lambda: list(Settings.UNNAMED))
    OmegaConf.register_new_resolver("deepinit_run_name", _run_name)


def _run_name(_root_: DictConfig) -> str:
    """A lone run's folder name (train.yaml's hydra.run.dir): records.folder_name of the config being composed."""
    return folder_name(_root_)


def from_config(cfg: DictConfig) -> Settings:
    """The run's Settings from Hydra's composed config (ConfigError, one line, for a value out of range)."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(_first_line(e)) from None
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return Settings.from_dict(config, multirun=multirun, swept=_swept(cfg) if multirun else {})


def _swept(cfg: DictConfig) -> dict[str, Any]:
    """The config keys this job's sweep varies (a comma list or sweep function on the command line, or an
    experiment's hydra.sweeper.params), with this job's values: a group's by its chosen file's name."""
    hydra = HydraConfig.get()
    master = Path(hydra.sweep.dir) / "multirun.yaml"
    stamp = master.stat().st_mtime_ns if master.is_file() else None
    params = tuple(f"{key}={value}" for key, value in (hydra.sweeper.get("params") or {}).items())
    keys = _swept_keys(str(master), stamp, params)
    choices = hydra.runtime.choices
    return {key: choices[key] if key in choices else OmegaConf.select(cfg, key) for key in keys}


@functools.lru_cache(maxsize=8)
def _swept_keys(master: str, stamp: int | None, params: tuple[str, ...]) -> tuple[str, ...]:
    """The keys a sweep varies, read once per sweep (every job of it asks): the command's own overrides (a job's
    are expanded; the sweep's are in its multirun.yaml, Hydra's record of the command) and the sweeper's params."""
    overrides = list(OmegaConf.load(master).hydra.overrides.task) if stamp is not None else []
    try:
        parsed = OverridesParser.create().parse_overrides([*overrides, *params])
    except OverrideParseException:
        return ()
    return tuple(dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override()))


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _records_of(error: OmegaConfBaseException) -> tuple[list[type], str] | None:
    return _SCHEMAS.get(error.object_type) if isinstance(error.object_type, type) else None


def compose_error(error: BaseException) -> str | None:
    """The one line for a config that Hydra could not compose (an unknown group choice, a misspelled key in an
    override or a config file, a value of the wrong type, a bad override), or None for any other error."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, choice = error.missing_cfg_file.rpartition("/")
        if group and error.options is not None:
            return f"unknown {group} {choice!r}; choose one of: {', '.join(sorted(error.options))}"
        return _first_line(error)
    if isinstance(error, OverrideParseException):
        # Hydra's grammar error ("mismatched input '('") says what the parser expected, not what the key takes
        key = error.override.partition("=")[0].lstrip("+~")
        records = (*TOP_LEVEL, DataSettings, StatsSettings, SpeedSettings, CheckpointSettings)
        rule = next((r for record in records if (r := record.rule_of(key)) is not None), None)
        hint = f"{key} must be {rule.text}" if rule else f"quote a value with special characters: {key}='...'"
        return f"cannot read the override {error.override} ({_first_line(error)}); {hint}"
    if isinstance(error, HydraException) and str(error).startswith("Ambiguous value for argument"):
        # Hydra's message goes on with three numbered lines of what to do: the same choices, in one line
        given = str(error).splitlines()[0].partition("'")[2].rstrip("'")
        key, _, values = given.partition("=")
        return (f"{given} gives several values: add -m to sweep over them (one run each), or write {key}=[{values}] "
                f"for a list, or {key}='{values}' for a string")  # fmt: skip
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, ValueError):
        return str(error.__cause__)  # a plugin (the batched launcher) refusing its settings, in its own words
    if not isinstance(error, HydraException | OmegaConfBaseException):
        return None
    cause = next(
        (c for c in (error, error.__cause__, error.__context__) if isinstance(c, OmegaConfBaseException)), None
    )
    if cause is None:
        return _first_line(error)
    key, known = cause.full_key or "", _records_of(cause)
    if isinstance(cause, ValidationError) and known is not None:
        records, _ = known
        name = key.rpartition(".")[2]
        for record in records:
            for f in dataclasses.fields(record):
                if config_key(f) == name:
                    return f.metadata["rule"].explain(key, cause.value)
    if isinstance(cause, ConfigKeyError | AttributeError) and key:
        where = f" (in {w})" if (w := _compose_file(error)) else ""
        if known is not None:
            records, what = known
            takes = ", ".join(k for record in records for k in record.keys())
            return f"{key}{where} is not a setting of {what}; it takes: {takes}"
        return f"{key}{where} is not in the config; to add a key that the config does not have, use +{key}=<value>"
    return f"{_first_line(error)}: {_first_line(cause)}" if cause is not error else _first_line(error)


def _compose_file(error: BaseException) -> str | None:
    """The config file Hydra was merging when it failed ("In 'init/gaussian': ..."), if it says."""
    text = str(error)
    if text.startswith("In '") and "':" in text:
        return text[4 : text.index("':")] + ".yaml"
    return None


def check_runs_dir(overrides: Sequence[str]) -> None:
    """Raise ConfigError when a `runs_dir=` override names a folder that cannot be made: Hydra makes the run's
    folder before any of our code runs, and would answer with a traceback."""
    values = [o.partition("=")[2] for o in overrides if o.lstrip("+").startswith("runs_dir=")]
    if not values or "," in values[-1]:
        return
    try:
        Path(values[-1]).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"runs_dir={values[-1]} cannot be made ({e.strerror}); choose a folder you can write to"
        ) from None

"""What a setting may be, said once: a `Rule` per field of the settings records, which both checks a value and says,
in one line, what is allowed. The records (deepinit.settings.records, the init schemes' options) declare each field
with `setting(rule, ...)`; `Checked.__post_init__` applies every rule, naming the key as the config spells it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A setting the study cannot run with; the message names it and the valid choices."""


def shown(value: Any) -> str:
    """A value as the error line quotes it: strings quoted, floats short (-1.0 as -1, as the user typed it)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Rule:
    """text: what a value must be ("an integer >= 2"), for `<key> must be <text> (got <value>)`; ok: whether a
    value is; choices: for a choice among names, the line says `unknown <key> <value>; choose one of: ...`."""

    text: str
    ok: Callable[[Any], bool]
    choices: tuple[str, ...] | None = None

    def explain(self, key: str, value: Any) -> str:
        if self.choices is not None and isinstance(value, str):
            return f"unknown {key} {value!r}; choose one of: {', '.join(self.choices)}"
        return f"{key} must be {self.text} (got {shown(value)})"

    def check(self, key: str, value: Any) -> None:
        if not self.ok(value):
            raise ConfigError(self.explain(key, value))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def _nullable(rule: Rule, null: bool) -> Rule:
    if not null:
        return rule
    return Rule(f"null or {rule.text}", lambda v: v is None or rule.ok(v), rule.choices)


def integer(minimum: int | None = None, null: bool = False, note: str = "", maximum: int | None = None) -> Rule:
    if minimum is not None and maximum is not None:
        bound = f" from {minimum} to {maximum}"
    else:
        bound = f" >= {minimum}" if minimum is not None else f" <= {maximum}" if maximum is not None else ""

    def ok(v: Any) -> bool:
        return _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum)

    return _nullable(Rule("an integer" + bound + note, ok), null)


def number(above: float | None = None, at_least: float | None = None, null: bool = False) -> Rule:
    bound = f" > {above:g}" if above is not None else f" >= {at_least:g}" if at_least is not None else ""

    def ok(v: Any) -> bool:
        return _is_number(v) and (above is None or v > above) and (at_least is None or v >= at_least)

    return _nullable(Rule(f"a number{bound}", ok), null)


def flag() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def text(null: bool = False) -> Rule:
    return _nullable(Rule("a string", lambda v: isinstance(v, str)), null)


def one_of(choices: Iterable[str]) -> Rule:
    names = tuple(choices)
    return Rule(f"one of: {', '.join(names)}", lambda v: v in names, names)


def names_from(choices: Iterable[str], what: str) -> Rule:
    """A list of names, each one of `choices` (stats.groups)."""
    names = tuple(choices)

    def ok(v: Any) -> bool:
        return isinstance(v, list | tuple) and all(isinstance(n, str) and n in names for n in v)

    return Rule(f"a list of {what} from: {', '.join(names)}", ok)


def setting(rule: Rule, *, key: str | None = None, neutral: bool = False, per_member: bool = False) -> Any:
    """A settings field. key: its name in the config where that differs (`_target_`); neutral: it does not change
    a run's results (where it writes, what it reads from, how many threads), so a sweep's name, a rerun's comparison
    and a batched group leave it out; per_member: members of one batched group may differ in it."""
    return dataclasses.field(metadata={"rule": rule, "key": key, "neutral": neutral, "per_member": per_member})


def config_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


class Checked:
    """Base of the settings records: every field's rule checked on construction, the key named as in the config
    (PREFIX: where the record's keys live, "" for the top level). No field has a default: the yaml files in conf/
    are the one place of defaults, and a key missing from them is an error, never a silent default."""

    PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rule = f.metadata.get("rule")
            if rule is not None:
                rule.check(self.key(config_key(f)), getattr(self, f.name))

    @classmethod
    def key(cls, name: str) -> str:
        return f"{cls.PREFIX}.{name}" if cls.PREFIX else name

    @classmethod
    def rule_of(cls, key: str) -> Rule | None:
        """The rule of the field that the config spells `key` (dotted, with PREFIX), or None if the record has none."""
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        return next((f.metadata.get("rule") for f in fields if cls.key(config_key(f)) == key), None)

    @classmethod
    def keys(cls) -> list[str]:
        """The record's keys as the config spells them."""
        return [config_key(f) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: dict[str, Any], what: str | None = None) -> Any:
        """The record from its part of the composed config: a key it does not have, or one missing, is one line."""
        fields = {config_key(f): f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        what = what or (cls.PREFIX or "the config")
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.key(unknown[0])} is not a setting of {what}; it takes: {', '.join(fields)}")
        missing = [k for k in fields if k not in values]
        if missing:
            raise ConfigError(f"{cls.key(missing[0])} is missing; {what} takes: {', '.join(fields)}")
        return cls(**{fields[k]: v for k, v in values.items()})

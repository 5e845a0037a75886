"""A run's settings as one typed record: written with the run when it is registered, read back
(checked field by field) by the workers, the reports and ``status``.

Each job declares its own frozen dataclass of ``RunSettings`` (``shared/relations/run_settings.py``,
``shared/editbench/run_settings.py``). Its fields made with ``result()`` change results: they
make the run's identity and its run id (``producer/run_identity.py``); the others are operational
(batch sizes, where the judge is served), the latest registration's. The stored record holds
plain values only (str, int, float, bool, lists and dicts of them), so it travels as JSON or
msgpack alike.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

from shared.errors import shown

S = TypeVar("S", bound="RunSettings")

_IDENTITY = "identity"
# A field whose value is left out of the record while it is its default: settings added to a
# run's identity later keep the run ids of the runs that leave them off.
_ONLY_WHEN_SET = "only_when_set"


class RunSettingsError(ValueError):
    """A run's stored settings lack a field or hold one of the wrong type."""


def result(default: Any = dataclasses.MISSING, *, only_when_set: bool = False) -> Any:
    """A field that changes results: part of the run's identity and run id."""
    return dataclasses.field(default=default, metadata={_IDENTITY: True, _ONLY_WHEN_SET: only_when_set})


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The base of a job's run settings: how they become a record and are read back from one."""

    def record(self) -> dict[str, Any]:
        """Every field, as stored with the run."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not (f.metadata.get(_ONLY_WHEN_SET) and getattr(self, f.name) == f.default)}

    def identity(self) -> dict[str, Any]:
        """The fields that change results, as stored: what the run id is derived from."""
        return {name: value for name, value in self.record().items() if name in self.identity_keys()}

    @classmethod
    def identity_keys(cls) -> tuple[str, ...]:
        """The names of the fields that change results (those left out while unset included)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(_IDENTITY))

    @classmethod
    def from_record(cls: type[S], record: Mapping[str, Any], run_id: str) -> S:
        """The settings stored with run ``run_id``; keys of the record that are no field are
        ignored (the run's job, inputs and times).

        Raises RunSettingsError, saying how to go on, if a field without a default is missing
        (a run registered by an older evalfleet) or a field has a value of the wrong type.
        """
        return _parse(cls, record, f"run {run_id!r}")


def _parse(cls: type[S], record: Mapping[str, Any], where: str, within: str = "") -> S:
    """``within``: the setting ``record`` is the value of (a LoRA of ``editor_loras.``)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = within + f.name
        if f.name in record:
            values[f.name] = _typed(record[f.name], hints[f.name], name, where)
        elif f.default is dataclasses.MISSING:
            raise RunSettingsError(
                f"{where} was registered without the setting {name!r} (by an older evalfleet), so "
                "evalfleet cannot tell what it asked for: start it over with the same command and --restart")
    return cls(**values)


def _typed(value: Any, hint: Any, name: str, where: str) -> Any:
    """``value`` as the type ``hint`` names (an int stands for a float), or RunSettingsError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return _parse(hint, value, where, f"{name}.")
    if origin is tuple and isinstance(value, list):
        return tuple(_typed(item, args[0], name, where) for item in value)
    if origin is dict and isinstance(value, Mapping):
        return {_typed(k, args[0], name, where): _typed(v, args[1], name, where) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not isinstance(hint, types.GenericAlias) and isinstance(value, hint) \
            and not (hint is int and isinstance(value, bool)):
        return value
    raise RunSettingsError(
        f"{where} holds {shown(value)} for the setting {name!r}, which needs {_type_name(hint)}: "
        "start it over with the same command and --restart")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _plain(value: Any) -> Any:
    """A field's value as stored: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value

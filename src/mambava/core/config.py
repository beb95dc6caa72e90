"""Typed configs on OmegaConf structured configs: a dataclass is the schema, values (a YAML file's mapping,
`--set a.b=value` dot-lists) are merged over its defaults, and OmegaConf converts them ("3e-4" -> float, 32 ->
"32") and refuses a value of the wrong type or a key the schema lacks. Its errors become one-line MambavaErrors
naming the key: `unknown key 'data.fetures' (known keys of data: ...)`, `key 'epochs' must be int, got 'ten'`.
Strings are never resolved as OmegaConf interpolations (a path may hold `${`)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mambava.core.errors import MambavaError


def structured(schema: type) -> DictConfig:
    """The schema's defaults as a typed OmegaConf config."""
    return OmegaConf.structured(schema)


def merge(conf: DictConfig, values: Mapping[str, Any], prefix: str = "") -> DictConfig:
    """`values` (nested mappings) over `conf`; MambavaError naming the key (`prefix.key`) on an unknown key,
    a section given a non-mapping, or a value OmegaConf cannot convert to the field's type."""
    schema = OmegaConf.get_type(conf)
    _check_sections(schema, values, prefix)
    try:
        return OmegaConf.merge(conf, values)
    except ConfigKeyError as error:
        key = _join(prefix, error.full_key)
        section = key.rpartition(".")[0]
        known = ", ".join(sorted(_field_types(_section_type(schema, error.full_key.rpartition(".")[0]))))
        raise MambavaError(f"unknown key '{key}' (known keys{' of ' + section if section else ''}: {known})") from None
    except ValidationError as error:
        key = _join(prefix, error.full_key)
        expected = _type_name(_leaf_type(schema, error.full_key))
        raise MambavaError(f"key '{key}' must be {expected}, got {_plain(error.value)!r}") from None
    except OmegaConfBaseException as error:  # anything else OmegaConf refuses (e.g. an unsupported value type)
        raise MambavaError(f"{prefix or 'config'}: {str(error).splitlines()[0]}") from None


def to_dict(conf: DictConfig) -> dict[str, Any]:
    """Plain nested dicts and lists of a config (interpolation strings left as they are)."""
    return OmegaConf.to_container(conf, resolve=False)


def dotted(item: str) -> dict[str, Any]:
    """`a.b=value` as {"a": {"b": value}}, the value parsed as YAML (3 -> int, 3e-4 -> float, [1,2] -> list,
    null -> None); MambavaError when it is not key=value."""
    key = item.split("=", 1)[0].strip()
    if "=" not in item:
        raise MambavaError(f"--set {item!r}: expected key=value (e.g. --set lr=1e-4 or --set model.kind=tcn)")
    if not key or any(not part for part in key.split(".")):
        raise MambavaError(f"--set {item!r}: empty key")
    try:
        return to_dict(OmegaConf.from_dotlist([item]))
    except OmegaConfBaseException as error:
        raise MambavaError(f"--set {item!r}: {str(error).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------------------
# Field types, for the messages


def _join(prefix: str, key: Any) -> str:
    key = str(key or "")
    return f"{prefix}.{key}" if prefix and key else prefix or key


def _field_types(schema: Any) -> dict[str, Any]:
    return typing.get_type_hints(schema) if dataclasses.is_dataclass(schema) else {}


def _section_type(schema: Any, dotted_key: str) -> Any:
    for part in filter(None, dotted_key.split(".")):
        schema = _field_types(schema).get(part)
    return schema


def _leaf_type(schema: Any, dotted_key: str) -> Any:
    section, _, leaf = str(dotted_key).rpartition(".")
    return _field_types(_section_type(schema, section)).get(leaf, Any)


def _type_name(kind: Any) -> str:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    origin = typing.get_origin(kind)
    if origin is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if args and origin is not None:  # Union / Optional
        return " or ".join(_type_name(a) for a in args)
    return getattr(kind, "__name__", str(kind))


def _check_sections(schema: Any, values: Mapping[str, Any], prefix: str) -> None:
    """A section (a dataclass or dict field) given something other than a mapping, named (OmegaConf's own
    message for it names no key)."""
    if not isinstance(values, Mapping):
        raise MambavaError(f"'{prefix or 'config'}' must be a mapping, got {_plain(values)!r}")
    for key, kind in _field_types(schema).items():
        if key in values and (dataclasses.is_dataclass(kind) or kind is dict or typing.get_origin(kind) is dict):
            if not isinstance(values[key], Mapping):
                raise MambavaError(f"'{_join(prefix, key)}' must be a mapping, got {_plain(values[key])!r}")
            _check_sections(kind, values[key], _join(prefix, key))


def _plain(value: Any) -> Any:
    return (
        to_dict(value)
        if isinstance(value, DictConfig)
        else OmegaConf.to_container(value)
        if OmegaConf.is_list(value)
        else value
    )

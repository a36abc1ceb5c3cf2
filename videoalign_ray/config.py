"""Typed, validated job configs: defaults < YAML file (``--config``) < command-line flags.

Each job owns one flat pydantic model (fields shared between jobs live in the mixin sections of
``videoalign_ray.sections``), so a
key has the same name in YAML (``max_steps``) and on the command line (``--max-steps``). Validation
errors name the offending key and where its value came from.
"""

from __future__ import annotations

import argparse
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.fields import PydanticUndefined

from videoalign_ray.errors import ConfigError

C = TypeVar("C", bound="JobConfig")

RENAMED_KEYS = {
    "steps": "sample_steps", "shift": "sample_shift", "sample_guidance": "cfg_scale",
    "weights": "reward_weights", "checkpoint": "reward_checkpoint", "policy": "policy_weights",
    "reference": "reference_weights", "input": "data", "output": "scores_file",
    "actors": "scorer_actors", "generators": "generator_actors",
}
"""Old key -> its one name across jobs (the same concept had different flags in different jobs). The old names
are still accepted, as flags, YAML keys and keyword arguments, with a deprecation line, for one release; they
apply to a config only where the new name is its field and the old one is not (``reference`` stays the online
job's base/previous choice)."""
DEPRECATED_PREFIX = "__deprecated__"


class JobConfig(BaseModel):
    """Base of every job config: frozen, unknown keys rejected.

    A job config that re-declares a shared field only to change its default (``max_steps: int = 1500``)
    keeps the constraints and description of the section that declared it (pydantic alone would drop
    them, and ``--max-steps -3`` would pass): see :meth:`__pydantic_init_subclass__`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        changed = False
        for name, field in cls.model_fields.items():
            for base in cls.__mro__[1:]:
                parent = base.__dict__.get("__pydantic_fields__", {}).get(name)
                if parent is None:
                    continue
                if parent.annotation == field.annotation:
                    if parent.metadata and not field.metadata:
                        field.metadata, changed = list(parent.metadata), True
                    if parent.description and not field.description:
                        field.description, changed = parent.description, True
                break
        if changed:
            cls.model_rebuild(force=True)

    @model_validator(mode="before")
    @classmethod
    def _accept_deprecated_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in RENAMED_KEYS or str(k).startswith(DEPRECATED_PREFIX) for k in data):
            return _rename_deprecated(cls, data, cls.__name__)
        return data

    def to_flat_dict(self) -> dict[str, Any]:
        """The resolved config as JSON-compatible values (for MLflow params and config.yaml)."""
        return json.loads(self.model_dump_json())

    def effective(self: C) -> C:
        """This config with every value that was left to a default chosen at run time (``None``: "from the
        preset") replaced by the value the job uses, for ``config.yaml`` and the MLflow params. Job configs whose
        defaults come from a preset override it; the base returns ``self``."""
        return self


def _field_type(annotation: Any) -> tuple[Any, bool]:
    """The argparse converter for a field annotation and whether it is a bool flag."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _field_type(args[0]) if len(args) == 1 else (str, False)
    if origin is Literal:
        return (lambda s, _vals=get_args(annotation): _coerce_literal(s, _vals)), False
    if annotation is bool:
        return _parse_bool, True
    if annotation in (int, float, str):
        return annotation, False
    return str, False


def _coerce_literal(value: str, allowed: tuple) -> Any:
    for a in allowed:
        if str(a) == value:
            return a
    raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(map(str, allowed))}")


def _parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the job docstring's example lines as written (the default formatter reflows them into one
    paragraph)."""


def _help_text(field) -> str:
    """A field's description with its default appended (``--help`` shows every default; the flags themselves
    default to ``SUPPRESS`` so that a YAML value is not overridden by an absent flag)."""
    text = field.description or ""
    default = field.default
    if default is not None and default is not PydanticUndefined:
        shown = str(default).lower() if isinstance(default, bool) else default
        text = f"{text} (default: {shown})".lstrip()
    # argparse %-formats help strings ("~30% more compute" made --help raise): escape the percent signs
    return text.replace("%", "%%")


def _choices(annotation: Any) -> list | None:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _choices(args[0]) if len(args) == 1 else None
    return list(get_args(annotation)) if origin is Literal else None


def is_test_hook(field) -> bool:
    """Fields marked ``json_schema_extra={"test_hook": True}`` (fault injection) are hidden from ``--help``."""
    return bool(isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("test_hook"))


def deprecated_names(cls: type[JobConfig]) -> dict[str, str]:
    """``{old: new}`` of :data:`RENAMED_KEYS` that apply to ``cls`` (``new`` is its field, ``old`` is not)."""
    fields = cls.model_fields
    return {old: new for old, new in RENAMED_KEYS.items() if new in fields and old not in fields}


def build_parser(cls: type[JobConfig], description: str) -> argparse.ArgumentParser:
    """An argparse parser with one ``--kebab-name`` flag per config field, plus ``--config FILE.yaml``.

    ``--help`` shows each flag's default and choices; test hooks and the deprecated names of renamed keys are
    accepted but not listed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file with any of the keys below (snake_case).")
    for name, field in cls.model_fields.items():
        parser.add_argument("--" + name.replace("_", "-"), **_flag_kwargs(name, field))
    for old, new in deprecated_names(cls).items():
        kwargs = {**_flag_kwargs(new, cls.model_fields[new]), "dest": DEPRECATED_PREFIX + old,
                  "help": argparse.SUPPRESS}
        parser.add_argument("--" + old.replace("_", "-"), **kwargs)
    return parser


def _flag_kwargs(name: str, field) -> dict[str, Any]:
    conv, is_bool = _field_type(field.annotation)
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                              "help": argparse.SUPPRESS if is_test_hook(field) else _help_text(field)}
    if is_bool:
        kwargs.update(nargs="?", const=True, type=conv, metavar="BOOL")
    else:
        kwargs["type"] = conv
        choices = _choices(field.annotation)
        if choices:
            kwargs["choices"] = choices
    return kwargs


def _rename_deprecated(cls: type[JobConfig], values: dict[str, Any], source: str) -> dict[str, Any]:
    """Move the values of deprecated key names onto their new names, logging one deprecation line each.

    Raises:
        ConfigError: the old and the new name are both given.
    """
    renames = deprecated_names(cls)
    out = dict(values)
    for key in list(out):
        old = key.removeprefix(DEPRECATED_PREFIX)
        if old not in renames:
            continue
        new = renames[old]
        if new in out:
            raise ConfigError(f"{source}: '{old}' is the old name of '{new}'; give only '{new}'")
        out[new] = out.pop(key)
        flag_old, flag_new = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
        logging.getLogger("videoalign_ray.config").warning(
            "%s: %s / '%s' is deprecated and will be removed in the next release; use %s / '%s'",
            source, flag_old, old, flag_new, new)
    return out


def resolve_config(cls: type[C], argv: list[str] | None = None, description: str = "") -> C:
    """Parse ``argv`` into a validated ``cls``: defaults, then ``--config`` YAML, then flags.

    Raises:
        ConfigError: unknown YAML key, unreadable YAML, or a value failing validation (names the key).
    """
    ns = vars(build_parser(cls, description).parse_args(argv))
    config_file = ns.pop("config", None)
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_rename_deprecated(cls, load_yaml_keys(config_file), str(config_file)))
    values.update(_rename_deprecated(cls, ns, "command line"))
    return validate_config(cls, values, source=str(config_file) if config_file else "command line")


def load_yaml_keys(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping; keys may use dashes or underscores."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(loaded).__name__}")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def validate_config(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Validate ``values`` into ``cls`` (deprecated key names accepted with a warning); errors name every
    offending key."""
    try:
        return cls.model_validate(_rename_deprecated(cls, values, source) if values else values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"key '{key}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid config ({source}): " + "; ".join(problems)) from None

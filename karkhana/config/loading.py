"""Load YAML config files into pydantic models, refusing bad ones with one clear message."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from karkhana.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class _Yaml12BoolLoader(yaml.SafeLoader):
    """SafeLoader where only true/false are booleans (YAML 1.2), so state names such as
    ``off`` or ``OFF`` and answers such as ``no`` stay strings."""


_Yaml12BoolLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12BoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``('sites', 0, 'areas')`` -> ``sites[0].areas``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_to_config_error(source: str | Path, exc: ValidationError) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    # Drop pydantic's internal tags (e.g. union member names) from the key path.
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    problem = first["msg"]
    if first["type"] == "extra_forbidden":
        problem = "unknown key (check spelling; see the documented keys)"
    elif first["type"] == "missing":
        problem = "required key is missing"
    if "input" in first and first["type"] not in ("missing", "extra_forbidden"):
        shown = repr(first["input"])
        if len(shown) <= 60:
            problem += f" (got {shown})"
    if len(errors) > 1:
        problem += f" [and {len(errors) - 1} more problem(s)]"
    return ConfigError(source, format_loc(loc), problem)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; syntax errors become a ConfigError with line and column."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(p, "", "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(p, "", f"cannot read file: {exc}") from exc
    try:
        return yaml.load(text, Loader=_Yaml12BoolLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(p, "", f"invalid YAML at {where}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(p, "", f"invalid YAML: {exc}") from exc


def parse_model(model: type[M], data: Any, source: str | Path) -> M:
    if not isinstance(data, dict):
        raise ConfigError(source, "", "the file must contain a mapping of keys at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_to_config_error(source, exc) from exc


def load_model(model: type[M], path: str | Path) -> M:
    """Read ``path`` and validate it as ``model``; any problem raises one ConfigError."""
    return parse_model(model, read_yaml(path), path)

"""Typed, strict configs: dataclasses loaded from YAML plus `key=value` command-line overrides.

Every recipe declares one dataclass tree. `load_config` builds it and fails at once, before any
model loads, on an unknown key (naming the nearest valid one), a wrong type, a missing required
value, a bad YAML file or a missing file. The resolved config is written beside the outputs with
`save_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from finetune.errors import UserError
from finetune.io import atomic_write_text

_MISSING = dataclasses.MISSING


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _all_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass tree (for 'did you mean')."""
    keys = []
    hints = typing.get_type_hints(cls)
    for name in _field_names(cls):
        key = f"{prefix}{name}"
        keys.append(key)
        tp = _strip_optional(hints[name])
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, key + "."))
    return keys


def _strip_optional(tp):
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp) -> str:
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str, where: str):
    """Return `value` converted to type `tp`, or raise UserError naming the key."""

    def bad():
        return UserError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}; fix the value")

    if tp is Any:
        return value
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except UserError:
                continue
        raise bad()
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        near = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}{hint}; fix the value")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad()
        return [_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # an annotation: a dataclass there is a class
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, key + ".", where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise bad()
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    if isinstance(value, tp):
        return value
    raise bad()


def _build(cls, data: dict, prefix: str, where: str):
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    for key in data:
        if key not in names:
            full = f"{prefix}{key}"
            near = difflib.get_close_matches(full, _all_keys(cls, prefix), n=1, cutoff=0.5)
            near = near or difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0] if '.' in near[0] or not prefix else prefix + near[0]}'?" if near else ""
            raise UserError(f"{where}: unknown key '{full}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name in data:
            value = data[f.name]
            default = _field_default(f)
            if isinstance(value, dict) and dataclasses.is_dataclass(default):
                # A section given in part keeps the recipe's own defaults for the keys not given.
                value = {**_shallow_dict(default), **value}
            kwargs[f.name] = _coerce(value, hints[f.name], key, where)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise UserError(f"{where}: required key '{key}' is missing; set it in the YAML or as {key}=VALUE")
    return cls(**kwargs)


def _field_default(f):
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return None if f.default is _MISSING else f.default


def _shallow_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _read_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{path}' does not exist; pass an existing YAML file with --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}{line}: not valid YAML ({problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"override '{item}' is not of the form key=value (e.g. optim.lr=1e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"override '{item}' has no key; write key=value (e.g. optim.lr=1e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(cls, path: str | None = None, overrides: list[str] | tuple[str, ...] = ()):
    """Build dataclass `cls` from an optional YAML file and `key=value` overrides; strict."""
    data = _read_yaml(path) if path else {}
    where = path or "config"
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
    return _build(cls, data, "", where)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """{field name: the `# ...` comment written after it} for a dataclass, inherited fields included.

    Read from the source with tokenize, so the meaning is written once, beside the default: a field is a line of
    the class body that starts with `name:`, its meaning the first comment before that logical line ends.
    """
    comments: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if "__dataclass_fields__" in vars(k)]):  # a subclass's comment wins
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # built at run time: no source to read
            continue
        own: dict[str, str] = {}
        depth, line = 0, list[tokenize.TokenInfo]()  # line: the significant tokens of the current logical line
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.INDENT:
                depth += 1
            elif tok.type == tokenize.DEDENT:
                depth -= 1
            elif tok.type == tokenize.NEWLINE:
                line = []
            elif tok.type == tokenize.COMMENT:
                if depth == 1 and len(line) > 1 and line[0].type == tokenize.NAME and line[1].string == ":":
                    own.setdefault(line[0].string, tok.string.lstrip("#").strip())
            elif tok.type != tokenize.NL:
                line.append(tok)
        comments.update(own)
    return comments


def _show_default(value) -> str:
    """A default as it is written in YAML or key=value (JSON is YAML's flow style)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def config_keys(cls, defaults=None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, "default X" / "required" / "" for a section, meaning) for every key of a config tree.

    `defaults` is the section's default object: a recipe may give a section other defaults than its class has
    (e.g. `optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4))`), and --help shows those.
    """
    rows: list[tuple[str, str, str, str]] = []
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        if defaults is not None:
            value, required = getattr(defaults, f.name), False
        else:
            required = f.default is _MISSING and f.default_factory is _MISSING
            value = None if required else _field_default(f)
        section = _strip_optional(tp)
        if dataclasses.is_dataclass(section):
            shown = "required" if required else ("" if section is tp else f"default {_show_default(value)}")
            rows.append((key, "section" if section is tp else "section or null", shown, comments.get(f.name, "")))
            rows.extend(
                config_keys(section, value if isinstance(value, typing.cast(type, section)) else None, key + ".")
            )
        else:
            shown = "required" if required else f"default {_show_default(value)}"
            rows.append((key, _type_name(tp), shown, comments.get(f.name, "")))
    return rows


def config_help(cls) -> str:
    """The key list --help prints: one line per key with its type, default and the meaning beside it in the source."""
    lines = ["config keys (set them in the --config YAML, or as key=value; a section's keys are section.key):"]
    for key, type_name, shown, meaning in config_keys(cls):
        lines.append(f"  {key} ({type_name}{'; ' + shown if shown else ''}): {meaning}")
    return "\n".join(lines)


def parse_recipe_args(cls, argv: list[str] | None = None, description: str = ""):
    """`--config FILE key=value ...` -> a validated config of type `cls`; --help lists every key (config_help).

    Every recipe starts here, before anything loads, so this is also where library noise is switched off
    (finetune.quiet; FINETUNE_VERBOSE=1 keeps it)."""
    from finetune.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(
        description=description, epilog=config_help(cls), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.overrides)


def load_section(cls, path: str, key: str, overrides: list[str] | tuple[str, ...] = ()):
    """Build one section (e.g. `data:`) of a recipe YAML as dataclass `cls`; overrides under `key.` apply."""
    data = _read_yaml(path).get(key) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: '{key}' must be a mapping")
    prefix = key + "."
    for item in overrides:
        k, value = _parse_override(item)
        if k.startswith(prefix):
            _set_dotted(data, k[len(prefix) :], value)
    return _build(cls, data, prefix, path)

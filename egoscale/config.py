"""Stage configs: one dataclass per stage, mapped onto CLI flags and YAML files.

A field's `metadata={"help": ...}` becomes its --help text; `choices` restricts values. YAML
keys must be field names (dashes or underscores): an unknown key is an error naming the file,
the key and the close matches, never silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from egoscale.errors import ConfigError

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_list) for annotations like `int`, `int | None`, `list[float]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset()) -> None:
    """Add one --flag per field of `cls` (a dataclass) to `parser`; defaults are shown in help."""
    hints = typing.get_type_hints(cls)
    # fields marked `last` (shared option groups inherited from a base class) after the stage's own
    for f in sorted(dataclasses.fields(cls), key=lambda f: bool(f.metadata.get("last"))):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help strings
        if f.metadata.get("positional"):
            nargs = "*" if is_list else (None if f.metadata.get("required") else "?")
            shown = f" (default: {default})" if default not in (None, []) and nargs == "?" else ""
            parser.add_argument(f.name, metavar=f.metadata.get("metavar", f.name.upper()), nargs=nargs,
                                default=argparse.SUPPRESS, choices=f.metadata.get("choices"), help=help_ + shown,
                                **({"type": tp} if tp in (int, float) and not is_list else {}))
            continue
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.metadata.get("action") == "append":
            parser.add_argument(flag, action="append", metavar=f.metadata.get("metavar", f.name.upper()),
                                help=help_, **kw)
            continue
        if tp is bool:
            shown = "" if default is None else f" (default: {default})"  # None: the help says what decides
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_ + shown, **kw)
            continue
        if is_list:
            kw["type"] = _list_parser(tp)
        else:
            kw["type"] = tp if tp in (int, float, str) else (Path if tp is Path else str)
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        flags = [f.metadata["short"], flag] if "short" in f.metadata else [flag]
        # a help that says its own default (what decides when none is given) keeps it; "None" says nothing
        shown = "" if "(default:" in help_ or default is None else f" (default: {default})"
        parser.add_argument(*flags, metavar=f.metadata.get("metavar", f.name.upper()), help=help_ + shown, **kw)


def _list_parser(tp: type):
    def parse(text: str) -> list:
        try:
            return [tp(x) for x in text.split(",") if x.strip()]
        except ValueError:
            msg = f"expected a comma-separated list of {tp.__name__}, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
    return parse


def build(cls: type[T], values: dict, source: str = "arguments") -> T:
    """Make `cls(**values)`, rejecting unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(cls)}
    clean = {}
    for key, v in values.items():
        k = key.replace("-", "_")
        if k not in names:
            close = difflib.get_close_matches(k, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r} for {cls.__name__}{hint}")
        clean[k] = v
    try:
        return cls(**clean)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def to_dict(cfg: Any) -> dict:
    """Plain-data view of a config (paths as strings) for JSON files and checkpoints."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out


def opt(default: Any, help: str, **meta) -> Any:
    """A config field with its --help text: `lr: float = opt(3e-4, "learning rate")`.

    Lists are given as their default value and copied per instance.
    """
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})

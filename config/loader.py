"""Load YAML into the frozen config objects of config/schema.py.

The YAML is composed into nodes (not constructed into dicts) so that every
error can name the dotted path and the line it came from::

    flow.idle_timeout_s (line 7): expected a positive number, got 'abc'

Every error is collected before ``ConfigError`` is raised; unknown keys are
errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .schema import (Config, ConfigError, check_value, cross_checks, expected,
                     field_types, is_section, list_item_type, validate)

_KIND = {MappingNode: "a mapping", SequenceNode: "a list"}


def default_config() -> Config:
    """The configuration with every default."""
    return Config()


#: A check beyond the schema's (e.g. compiling capture.filter with libpcap,
#: which this package does not import): config -> [(dotted path, message)].
Check = Callable[[Config], list[tuple[str, str]]]


def load_config(path: str | Path, checks: Sequence[Check] = ()) -> Config:
    """Load and validate a YAML file; raises ConfigError (also if unreadable).
    ``checks`` run on a config the schema accepted; their errors carry the
    key's line like the schema's."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"cannot read config file: {reason}"], source=str(path)) from None
    return load_config_text(text, str(path), checks)


def load_config_text(text: str, source_name: str = "<config>",
                     checks: Sequence[Check] = ()) -> Config:
    """Load and validate YAML text; ``source_name`` prefixes error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError([f"<yaml>{line}: invalid YAML: {exc.problem or exc}"],
                          source=source_name) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"<yaml>: invalid YAML: {exc}"], source=source_name) from None
    builder = _Builder()
    cfg = builder.section(Config, root, "")
    if not builder.errors:
        for path, message in cross_checks(cfg):
            builder.error(path, builder.nodes.get(path), message)
    if not builder.errors:
        for check in checks:
            for path, message in check(cfg):
                builder.error(path, builder.nodes.get(path), message)
    if builder.errors:
        raise ConfigError(builder.errors, source=source_name)
    return cfg


def apply_overrides(cfg: Config, overrides: dict[str, Any], origin: str = "command line") -> Config:
    """Return ``cfg`` with dotted-path overrides applied (None values are skipped),
    validated like a file. Example: ``{"flow.idle_timeout_s": 5.0}``."""
    changed = {k: v for k, v in overrides.items() if v is not None}
    for dotted, value in changed.items():
        cfg = _replace_path(cfg, dotted.split("."), value)
    errors = validate(cfg)
    if errors:
        raise ConfigError([_tag(e, changed, origin) for e in errors])
    return cfg


def _replace_path(obj: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return dataclasses.replace(obj, **{parts[0]: value})
    child = getattr(obj, parts[0])
    return dataclasses.replace(obj, **{parts[0]: _replace_path(child, parts[1:], value)})


def _tag(error: str, changed: dict[str, Any], origin: str) -> str:
    path, sep, rest = error.partition(": ")
    return f"{path} ({origin}): {rest}" if sep and path in changed else error


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Builder:
    """Walks YAML nodes alongside the dataclasses, collecting errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nodes: dict[str, Node] = {}  # dotted path -> value node, for line numbers
        self._constructor = yaml.SafeLoader("")  # only its scalar constructor is used

    def error(self, path: str, node: Node | None, message: str) -> None:
        where = path or "<root>"
        if node is not None:
            where += f" (line {_line(node)})"
        self.errors.append(f"{where}: {message}")

    def scalar(self, node: ScalarNode) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def is_null(self, node: Node | None) -> bool:
        return node is None or (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null")

    def section(self, cls: type, node: Node | None, path: str) -> Any:
        """Build dataclass ``cls`` from a mapping node; None on error."""
        if self.is_null(node):
            node = None  # an empty section takes every default
        elif not isinstance(node, MappingNode):
            self.error(path, node, f"expected a mapping, got {self._kind(node)}")
            return None
        hints = field_types(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        ok = True
        seen: set[str] = set()
        for key_node, value_node in (node.value if node else []):
            key = self.scalar(key_node) if isinstance(key_node, ScalarNode) else None
            kpath = f"{path}.{key}" if path else str(key)
            if key not in fields:
                self.error(kpath, key_node, f"unknown key {key!r} (valid keys: {', '.join(fields)})")
                ok = False
                continue
            if key in seen:
                self.error(kpath, key_node, "duplicate key")
                ok = False
                continue
            seen.add(key)
            self.nodes[kpath] = value_node
            value, good = self.value(hints[key], dict(fields[key].metadata), value_node, kpath)
            ok = ok and good
            if good:
                values[key] = value
        for name, f in fields.items():
            if (name not in seen and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                self.error(f"{path}.{name}" if path else name, node, "missing required key")
                ok = False
        return cls(**values) if ok else None

    def value(self, tp: Any, meta: dict[str, Any], node: Node, path: str) -> tuple[Any, bool]:
        if is_section(tp):
            obj = self.section(tp, node, path)
            return obj, obj is not None
        item_tp = list_item_type(tp)
        if item_tp is not None:
            return self.items(item_tp, node, path)
        if not isinstance(node, ScalarNode):
            self.error(path, node, f"expected {expected(tp, meta)}, got {self._kind(node)}")
            return None, False
        try:
            raw = self.scalar(node)
        except yaml.YAMLError as exc:
            self.error(path, node, f"cannot read value: {exc}")
            return None, False
        value, err = check_value(tp, meta, raw)
        if err:
            self.error(path, node, err)
            return None, False
        return value, True

    def items(self, item_tp: type, node: Node, path: str) -> tuple[Any, bool]:
        """A list of sections; a bare string item is shorthand for {url: ...}."""
        if self.is_null(node):
            return (), True
        if not isinstance(node, SequenceNode):
            self.error(path, node, f"expected a list, got {self._kind(node)}")
            return None, False
        out, ok = [], True
        for i, item in enumerate(node.value):
            ipath = f"{path}[{i}]"
            if isinstance(item, ScalarNode) and not self.is_null(item):
                item = MappingNode("tag:yaml.org,2002:map",
                                   [(ScalarNode("tag:yaml.org,2002:str", "url",
                                                item.start_mark, item.end_mark), item)],
                                   item.start_mark, item.end_mark)
            obj = self.section(item_tp, item, ipath) if not self.is_null(item) else None
            if self.is_null(item):
                self.error(ipath, item, "expected a mapping, got null")
            if obj is None:
                ok = False
            else:
                out.append(obj)
        return tuple(out), ok

    def _kind(self, node: Node) -> str:
        if isinstance(node, ScalarNode):
            return repr(self.scalar(node))
        return _KIND.get(type(node), "a node")

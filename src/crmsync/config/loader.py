"""Read crmsync.yaml: YAML with line numbers, ``${VAR}`` substitution, pydantic validation.

Every problem is collected and raised at once as ``ConfigError`` with
locations ``file:line key.path`` and plain-word messages.

Over 500 lines on purpose: reading, locating and explaining a problem are one
concept here (each problem needs the key path and line the reader recorded).
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError

from crmsync.config.models import NAME_RE, Config, Direction
from crmsync.config.secrets import redact, register_secret
from crmsync.config.urls import http_url_problem, sql_url_problem
from crmsync.errors import ConfigError

Problem = tuple[str, str]

_NAME = re.compile(NAME_RE)
# `$${` is a literal `${`; `${NAME}` is substituted.
_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Labels pydantic puts into error locations for union branches (our Tag names).
_TAGS = frozenset(
    {"AllOf", "AnyOf", "Condition", "SetAction", "UnmappedValue", "mode", "sql", "webhook"}
)


# -- key paths and lines -------------------------------------------------


def join_path(parent: str, key: Any) -> str:
    """``links.customers.fields[3].target``; odd keys are quoted: ``values['1.5']``."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{parent}[{key}]"
    text = str(key)
    if _NAME.match(text):
        return f"{parent}.{text}" if parent else text
    return f"{parent}[{text!r}]"


def parent_path(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rfind("[")]
    dot = path.rfind(".")
    return path[:dot] if dot >= 0 else ""


@dataclass(slots=True)
class SourceMap:
    """Where each key path sits in the file, so problems can say ``file:line``."""

    file: str
    lines: dict[str, int] = field(default_factory=dict)

    def line(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest ancestor present in the file."""
        while True:
            found = self.lines.get(path)
            if found is not None or not path:
                return found
            path = parent_path(path)

    def locate(self, path: str) -> str:
        line = self.line(path)
        head = f"{self.file}:{line}" if line is not None else self.file
        return f"{head} {path}" if path else head


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Stable sort by the line number in each location (``file:LINE path``)."""

    def line_of(p: Problem) -> int:
        m = re.search(r":(\d+)(?: |$)", p[0])
        return int(m.group(1)) if m else 0

    return sorted(problems, key=line_of)


# -- YAML -> plain data ------------------------------------------------------


class _Reader:
    """Turns the round-trip YAML tree into plain Python, recording lines and substituting."""

    def __init__(self, smap: SourceMap, env: Mapping[str, str], problems: list[Problem]) -> None:
        self.smap = smap
        self.env = env
        self.problems = problems

    def problem(self, path: str, message: str) -> None:
        self.problems.append((self.smap.locate(path), message))

    def plain(self, node: Any, path: str) -> Any:
        if isinstance(node, CommentedMap):
            out: dict[Any, Any] = {}
            for k, v in node.items():
                key = self.plain_key(k)
                kp = join_path(path, key)
                try:
                    self.smap.lines[kp] = node.lc.key(k)[0] + 1
                except (KeyError, TypeError, AttributeError):  # merged keys (<<:) have no position
                    pass
                out[key] = self.plain(v, kp)
            return out
        if isinstance(node, CommentedSeq):
            items = []
            for i, v in enumerate(node):
                ip = join_path(path, i)
                try:
                    self.smap.lines[ip] = node.lc.item(i)[0] + 1
                except (KeyError, TypeError, AttributeError, IndexError):
                    pass
                items.append(self.plain(v, ip))
            return items
        if isinstance(node, str):
            return self.substitute(str(node), path)
        if isinstance(node, bool) or node is None:
            return node
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, datetime):
            n = node
            return datetime(
                n.year, n.month, n.day, n.hour, n.minute, n.second, n.microsecond, n.tzinfo
            )
        if isinstance(node, date):
            return date(node.year, node.month, node.day)
        if isinstance(node, TaggedScalar):
            self.problem(path, f"YAML tags are not supported, got {node.tag.value}")
            return None
        if isinstance(node, dict):
            return {self.plain_key(k): self.plain(v, join_path(path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [self.plain(v, join_path(path, i)) for i, v in enumerate(node)]
        return node

    @staticmethod
    def plain_key(k: Any) -> Any:
        if isinstance(k, bool) or k is None:
            return k
        if isinstance(k, int):
            return int(k)
        if isinstance(k, str):
            return str(k)
        return str(k)

    def substitute(self, text: str, path: str) -> str:
        if "$" not in text:
            return text

        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name = m.group(1)
            if not _VAR_NAME.match(name):
                self.problem(path, f"invalid environment variable reference ${{{name}}}")
                return m.group(0)
            value = self.env.get(name)
            if value is None:
                self.problem(path, f"environment variable {name!r} is not set")
                return m.group(0)
            register_secret(value)
            return value

        return _VAR.sub(repl, text)


def _yaml_problem(file: str, err: YAMLError) -> Problem:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{file}:{mark.line + 1}" if mark is not None else file
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if isinstance(err, DuplicateKeyError):
        m = re.search(r'duplicate key "(.*?)" with value', problem)
        ctx = getattr(err, "context_mark", None)
        first = f" (first at line {ctx.line + 1})" if ctx is not None else ""
        key = m.group(1) if m else "?"
        return where, f"invalid YAML: duplicate key {key!r}{first}"
    context = getattr(err, "context", None)
    cmark = getattr(err, "context_mark", None)
    if context and cmark is not None and mark is not None and cmark.line != mark.line:
        problem = f"{problem} ({context} at line {cmark.line + 1})"
    return where, redact(f"invalid YAML: {problem}")


# -- pydantic errors -> plain words ------------------------------------------


def _members(tp: Any) -> list[Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in get_args(tp) for m in _members(a)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _step(tp: Any, el: Any) -> Any:
    for m in _members(tp):
        if _is_model(m):
            if el == m.__name__:
                return m
            for name, f in m.model_fields.items():
                if el == name or el == f.alias:
                    return f.annotation
        origin = get_origin(m)
        if origin is dict and isinstance(el, str):
            return get_args(m)[1]
        if origin is list and isinstance(el, int):
            return get_args(m)[0]
        if origin is Literal and el == "mode":
            return m
    return None


def _type_at(loc: tuple[Any, ...]) -> Any:
    tp: Any = Config
    for el in loc:
        tp = _step(tp, el)
        if tp is None:
            return None
    return tp


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    models = [m for m in _members(_type_at(loc)) if _is_model(m)]
    return models[0] if len(models) == 1 else None


def _choices(tp: Any) -> list[str]:
    out: list[str] = []
    for m in _members(tp):
        if get_origin(m) is Literal:
            out += [a.value if isinstance(a, Enum) else str(a) for a in get_args(m)]
        elif isinstance(m, type) and issubclass(m, Enum):
            out += [str(e.value) for e in m]
    return out


def _show(v: Any) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, int | float):
        return str(v)
    return repr(v)


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """The location without union branch labels, walking the data to tell keys from labels."""
    out: list[Any] = []
    node = data
    for el in loc:
        if isinstance(node, dict) and el in node:
            node = node[el]
            out.append(el)
        elif isinstance(node, list) and isinstance(el, int) and 0 <= el < len(node):
            node = node[el]
            out.append(el)
        elif isinstance(el, str) and (
            el in _TAGS or el.startswith(("function-", "literal[", "tagged-union["))
        ):
            continue
        else:
            node = None
            out.append(el)
    return tuple(out)


def _path(loc: tuple[Any, ...]) -> str:
    path = ""
    for el in loc:
        path = join_path(path, el)
    return path


_TYPE_WORDS = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
}
_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _validation_problems(exc: ValidationError, data: Any, smap: SourceMap) -> list[Problem]:
    errors = exc.errors(include_url=False)
    # A typo (`tagret`) also makes `target` missing; the unknown-key message covers both.
    extras: dict[tuple[Any, ...], list[str]] = {}
    for e in errors:
        if e["type"] == "extra_forbidden":
            extras.setdefault(tuple(e["loc"][:-1]), []).append(str(e["loc"][-1]))
    problems: list[Problem] = []
    for e in errors:
        raw = tuple(e["loc"])
        kind = e["type"]
        inp = e.get("input")
        ctx = e.get("ctx") or {}
        if kind == "missing":
            if difflib.get_close_matches(str(raw[-1]), extras.get(raw[:-1], []), n=1):
                continue
            path = _path(_clean_loc(raw[:-1], data))
            problems.append((smap.locate(path), f"missing required key {raw[-1]!r}"))
            continue
        path = _path(_clean_loc(raw, data))
        if kind == "extra_forbidden":
            model = _model_at(raw[:-1])
            allowed = [f.alias or n for n, f in model.model_fields.items()] if model else []
            msg = f"unknown key {raw[-1]!r}"
            if allowed:
                msg += f" (expected one of: {', '.join(allowed)})"
        elif kind in ("literal_error", "enum"):
            choices = _choices(_type_at(raw))
            expected = ", ".join(choices) if choices else str(ctx.get("expected", "?"))
            msg = f"expected one of {expected}; got {_show(inp)}"
        elif kind in ("value_error", "assertion_error"):
            msg = str(ctx.get("error", e["msg"]))
        elif kind in _TYPE_WORDS:
            msg = f"expected {_TYPE_WORDS[kind]}, got {_show(inp)}"
        elif kind in _BOUNDS:
            sign, key = _BOUNDS[kind]
            bound = ctx.get(key)
            if isinstance(bound, float) and bound.is_integer():
                bound = int(bound)
            msg = f"expected a number {sign} {bound}, got {_show(inp)}"
        elif kind == "too_short":
            n = ctx.get("min_length", 1)
            msg = f"expected at least {n} {'entry' if n == 1 else 'entries'}, got none"
            if ctx.get("actual_length"):
                msg = f"expected at least {n} entries, got {ctx['actual_length']}"
        elif kind == "too_long":
            msg = (
                f"expected at most {ctx.get('max_length')} entries, got {ctx.get('actual_length')}"
            )
        elif kind in ("criteria", "on_delete"):
            msg = f"{e['msg']}; got {_show(inp)}"
        elif kind == "union_tag_invalid":
            path = path + ".connector" if path else "connector"
            msg = (
                f"expected one of {ctx.get('expected_tags')}; got {ctx.get('tag')!r}"
            )
        elif kind == "union_tag_not_found":
            path = path + ".connector" if path else "connector"
            msg = "expected a connector (sql or webhook)"
        else:
            msg = f"{e['msg']}; got {_show(inp)}"
        problems.append((smap.locate(path), redact(msg)))
    return problems


# -- static cross-references (no I/O) -----------------------------------------


def _object_problem(
    systems: dict[str, Any], ref: Any, path: str, smap: SourceMap
) -> Problem | None:
    """``SYSTEM.OBJECT`` at ``path`` names a declared system and object, or a problem."""
    if not isinstance(ref, str):
        return None
    sname, dot, oname = ref.partition(".")
    if not dot or not _NAME.match(sname) or not _NAME.match(oname):
        return None  # pydantic already says "expected SYSTEM.OBJECT"
    if sname not in systems:
        known = ", ".join(map(str, systems)) or "none"
        return (smap.locate(path), f"system {sname!r} is not defined (systems: {known})")
    sys_cfg = systems[sname]
    objects = sys_cfg.get("objects") if isinstance(sys_cfg, dict) else None
    if isinstance(objects, dict) and oname not in objects:
        known = ", ".join(map(str, objects)) or "none"
        return (
            smap.locate(path),
            f"object {oname!r} is not declared under system {sname!r} (objects: {known})",
        )
    return None


def _cross_problems(data: dict[str, Any], smap: SourceMap) -> list[Problem]:
    problems: list[Problem] = []
    systems = data.get("systems")
    links = data.get("links")
    if not isinstance(systems, dict) or not isinstance(links, dict):
        return problems
    for lname, link in links.items():
        if not isinstance(link, dict):
            continue
        lpath = join_path("links", lname)
        for side in ("source", "target"):
            if (p := _object_problem(systems, link.get(side), join_path(lpath, side), smap)):
                problems.append(p)
        problems += _duplicate_writes(link, lpath, smap)
    rules = data.get("rules")
    if isinstance(rules, dict):
        for rname, rule in rules.items():
            if isinstance(rule, dict):
                problems += _rule_refs(rule, join_path("rules", rname), systems, links, smap)
    return problems


def _rule_refs(
    rule: dict[str, Any],
    rpath: str,
    systems: dict[str, Any],
    links: dict[str, Any],
    smap: SourceMap,
) -> list[Problem]:
    """A rule's object, and the links its actions name, exist."""
    problems: list[Problem] = []
    if (p := _object_problem(systems, rule.get("on"), join_path(rpath, "on"), smap)):
        return [p]
    known = ", ".join(map(str, links)) or "none"
    steps = rule.get("then")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict) or len(step) != 1:
            continue
        kind, spec = next(iter(step.items()))
        spath = f"{rpath}.then[{i}].{kind}"
        if kind == "sync":
            name, npath = spec, spath
        elif kind in ("set", "activity") and isinstance(spec, dict):
            name, npath = spec.get("via"), join_path(spath, "via")
        else:
            continue
        if not isinstance(name, str):
            continue
        if name not in links:
            problems.append((smap.locate(npath), f"link {name!r} is not defined (links: {known})"))
            continue
        lc = links[name]
        ends = [lc.get("source"), lc.get("target")] if isinstance(lc, dict) else []
        if rule.get("on") not in ends:
            problems.append((
                smap.locate(npath),
                f"link {name!r} pairs {' and '.join(map(str, ends))}, not the rule's object "
                f"{rule.get('on')!r}",
            ))
    return problems


def _duplicate_writes(link: dict[str, Any], lpath: str, smap: SourceMap) -> list[Problem]:
    """Two mappings writing one field would overwrite each other in an arbitrary order."""
    fields = link.get("fields")
    if not isinstance(fields, list):
        return []
    link_dir = link.get("direction", "forward")
    written: dict[tuple[str, str], int] = {}
    problems: list[Problem] = []
    for i, m in enumerate(fields):
        if not isinstance(m, dict):
            continue
        d = m.get("direction") or link_dir
        sides = []
        if d in (Direction.FORWARD, Direction.BOTH):
            sides.append("target")
        if d in (Direction.BACKWARD, Direction.BOTH):
            sides.append("source")
        for side in sides:
            name = m.get(side)
            if not isinstance(name, str):
                continue
            first = written.setdefault((side, name), i)
            if first != i:
                problems.append(
                    (
                        smap.locate(join_path(join_path(join_path(lpath, "fields"), i), side)),
                        f"{side} field {name!r} is already written by fields[{first}]",
                    )
                )
    return problems


def _url_problems(config: Config, smap: SourceMap, known: list[Problem]) -> list[Problem]:
    """URLs that cannot work whatever the servers say. Drivers are checked when a
    connection is built (a config can be read where a driver is not installed)."""
    problems: list[Problem] = []
    # A value already reported (an unset ${VAR}) gets no second problem.
    said = {loc for loc, _ in known}
    state_at = smap.locate("state")
    why = None if state_at in said else sql_url_problem(config.state, driver=False)
    if why is not None:
        problems.append((state_at, f"state database: {why}"))
    for name, sys_cfg in config.systems.items():
        url = getattr(sys_cfg, "url", None)
        if not isinstance(url, str):
            continue
        where = smap.locate(join_path(join_path("systems", name), "url"))
        if where in said:
            continue
        if sys_cfg.connector == "sql":
            why = sql_url_problem(url, driver=False)
        else:
            why = http_url_problem(url)
        if why is not None:
            problems.append((where, why))
    return problems


# -- entry points -------------------------------------------------------------


def load_config_text(
    text: str, file: str = "<config>", env: Mapping[str, str] | None = None
) -> tuple[Config, SourceMap]:
    """Parse and validate config text; raises ``ConfigError`` listing every problem."""
    smap = SourceMap(file, {"": 1})
    yaml = YAML(typ="rt")
    try:
        tree = yaml.load(text)
    except YAMLError as err:
        raise ConfigError([_yaml_problem(file, err)]) from None
    if tree is None:
        raise ConfigError([(f"{file}:1", "the file is empty; expected systems: and links:")])
    if not isinstance(tree, CommentedMap):
        raise ConfigError(
            [(f"{file}:1", f"expected a mapping with systems: and links:, got {_show(tree)}")]
        )
    problems: list[Problem] = []
    data = _Reader(smap, os.environ if env is None else env, problems).plain(tree, "")
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += _validation_problems(exc, data, smap)
    problems += _cross_problems(data, smap)
    if config is not None:
        problems += _url_problems(config, smap, problems)
    if problems:
        raise ConfigError(sort_problems(problems))
    assert config is not None
    return config, smap


def load_config_with_lines(
    path: str | Path, env: Mapping[str, str] | None = None
) -> tuple[Config, SourceMap]:
    """Load a config file; the ``SourceMap`` lets later checks point at ``file:line``."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [(file, "config file not found (pass the config file with -c FILE)")]
        ) from None
    except IsADirectoryError:
        raise ConfigError([(file, "is a directory, not a config file (use -c FILE)")]) from None
    except UnicodeDecodeError as err:
        raise ConfigError([(file, f"not UTF-8 text ({err.reason})")]) from None
    except OSError as err:
        raise ConfigError([(file, f"cannot read the file: {err.strerror}")]) from None
    return load_config_text(text, file, env)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate ``crmsync.yaml``; raises ``ConfigError`` listing every problem."""
    return load_config_with_lines(path, env)[0]


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (``crmsync schema``)."""
    return Config.model_json_schema()

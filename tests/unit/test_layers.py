"""Imports run one way: model/errors/schedule <- config <- connectors, state <- engine
<- service, api <- cli (demo and testing sit at the top with cli).

A small AST check over src/crmsync: every import, also those inside functions
and under TYPE_CHECKING (a type is a dependency too), must point to the same
part, a lower layer, or an allowed sideways part. README "How it works" shows
the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "crmsync"

# Each top-level part of the package and its layer (higher imports lower).
LAYERS: dict[str, int] = {
    "__init__": 0,
    "model": 0,
    "errors": 0,
    "schedule": 0,
    "convert": 0,  # pure value typing, beside the model
    "config": 1,
    "connectors": 2,
    "state": 2,
    "engine": 3,
    "service": 4,
    "api": 4,
    "cli": 5,
    "demo": 5,
    "testing": 5,
    "__main__": 5,
}
TOP = max(LAYERS.values())
# Sideways imports within one layer that are allowed (importer part, imported part).
SIDEWAYS = {
    ("convert", "model"),  # values are typed by the model's field types
    ("connectors", "state"),  # the webhook connector keeps pushed records in the state
    ("api", "service"),  # the API runs inside the service and uses its context
}
# Modules private to their part even though the layer would allow them: the SQL
# of crmsync's own state belongs in state/.
PRIVATE = {"crmsync.state.schema": "state"}

# Imports against the layers that are accepted for now, each with its reason (none
# today); the test fails on an entry that no longer occurs, so the list stays true.
KNOWN: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every crmsync module ``path`` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                pkg = pkg if is_package else pkg[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            for a in node.names:  # `from crmsync.state import schema`: a name may be a module
                sub = f"{base}.{a.name}"
                found.add(sub if _is_module(sub) else base)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _is_module(name: str) -> bool:
    where = SRC.joinpath(*name.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None when it may."""
    src, dst = _part(importer), _part(imported)
    for mod, owner in PRIVATE.items():
        if (imported == mod or imported.startswith(mod + ".")) and src != owner:
            return f"{mod} is private to {owner}/"
    if src == dst:
        return None
    for mod, part in ((importer, src), (imported, dst)):
        if part not in LAYERS:
            return f"{mod} is in no layer (add it to LAYERS in tests/unit/test_layers.py)"
    ls, ld = LAYERS[src], LAYERS[dst]
    if ld < ls or (ld == ls and ((src, dst) in SIDEWAYS or ls == TOP)):
        return None
    return f"{src} (layer {ls}) may not import {dst} (layer {ld})"


def _all_imports() -> list[tuple[str, str]]:
    pairs = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        module = _module_name(path)
        pairs += [(module, imported) for imported in sorted(_imports(path, module))]
    return pairs


def test_every_part_has_a_layer() -> None:
    parts = {_part(_module_name(p)) for p in (SRC / PACKAGE).rglob("*.py")}
    assert parts - set(LAYERS) == set(), "place the new part in LAYERS"


def test_imports_run_one_way() -> None:
    found = {
        (importer, imported): why
        for importer, imported in _all_imports()
        if (why := _violation(importer, imported)) is not None
    }
    new = [f"{a} imports {b}: {why}" for (a, b), why in sorted(found.items())
           if (a, b) not in KNOWN]
    assert not new, "imports against the layers:\n" + "\n".join(new)
    gone = sorted(KNOWN - set(found))
    assert not gone, f"fixed, remove from KNOWN: {gone}"


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("crmsync.engine.runner", "crmsync.state.store", True),
        ("crmsync.connectors.webhook", "crmsync.state.store", True),
        ("crmsync.api.routes", "crmsync.service.context", True),
        ("crmsync.cli.serve", "crmsync.api.app", True),
        ("crmsync.demo.tryton", "crmsync.testing.tryton", True),
        ("crmsync.config.check", "crmsync.engine.filters", False),
        ("crmsync.service.cli", "crmsync.api.app", False),
        ("crmsync.state.store", "crmsync.connectors.base", False),
        ("crmsync.engine.quota", "crmsync.state.schema", False),
        ("crmsync.state.queue", "crmsync.state.schema", True),
        ("crmsync.model", "crmsync.config.models", False),
    ],
)
def test_the_rule(importer: str, imported: str, allowed: bool) -> None:
    assert (_violation(importer, imported) is None) is allowed


def test_function_level_and_relative_imports_count(tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_text(
        "def f():\n    from crmsync.engine import runner\n"
        "from . import sibling\nfrom crmsync import demo\nfrom .models import Config\n"
    )
    assert _imports(f, "crmsync.config.mod") == {
        "crmsync.engine.runner", "crmsync.config", "crmsync.demo", "crmsync.config.models",
    }

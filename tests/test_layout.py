"""The package's shape, as docs/development.md draws it: layers, families, declarations.

Read from the source (``ast``), not from a running interpreter, so that every import counts,
also those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import lowrank
from lowrank.registry import FAMILIES, families

PACKAGE = Path(lowrank.__file__).parent

# Bottom to top: a module may import its own layer and those below it (docs/development.md).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("lowrank._version", "lowrank.errors"),
    ("lowrank.core",),
    ("lowrank.maths",),
    ("lowrank.inputs",),
    ("lowrank.hooks",),
    ("lowrank.runs",),
    ("lowrank.plots",),
    ("lowrank.families",),
    ("lowrank.registry",),
    ("lowrank.api", "lowrank"),
    ("lowrank.cli", "lowrank.__main__"),
)
# Inside the families layer, the one family others build on: scaling writes spectrum runs.
BASE_FAMILIES = ("spectrum",)
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _annotation_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``: they never run."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(inner) for part in node.body for inner in ast.walk(part)}
    return skip


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The lowrank modules ``name`` imports, anywhere in the file (at the top or inside a
    function), except those under ``TYPE_CHECKING``, which are annotations."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    skip = _annotation_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                root = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*root, base] if base else root)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("lowrank") and target != name:
                out.add(target)
    return out


def _layer(name: str) -> int:
    best, depth = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            hit = name == prefix or name.startswith(prefix + ".")
            if hit and len(prefix) > depth:
                best, depth = index, len(prefix)
    assert best >= 0, f"{name} belongs to no layer of docs/development.md"
    return best


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_the_import_graph_has_no_cycle(graph):
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in colour:
                visit(nxt)
        stack.pop()
        colour[node] = 2

    for node in sorted(graph):
        if node not in colour:
            visit(node)


def test_no_module_imports_a_layer_above_it(graph):
    upward = [
        f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)
    ]
    assert upward == []


def test_families_import_only_themselves_and_the_base_families(graph):
    wrong = []
    for name, targets in graph.items():
        if not name.startswith("lowrank.families."):
            continue
        own = name.split(".")[2]
        for target in targets:
            if target.startswith("lowrank.families."):
                other = target.split(".")[2]
                if other != own and other not in BASE_FAMILIES:
                    wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_the_shared_layers_name_no_family():
    """runs/, inputs/, hooks/, core/ and maths/ know no family: no import of one, no format."""
    formats = [f.format for f in families()]
    for folder in ("runs", "inputs", "hooks", "core", "maths", "plots"):
        for path in (PACKAGE / folder).rglob("*.py"):
            text = path.read_text()
            assert "lowrank.families" not in text, path
            for fmt in formats:
                assert f'"{fmt}"' not in text, (path, fmt)


def test_every_family_folder_is_registered_and_declares_itself():
    folders = sorted(
        p.name for p in (PACKAGE / "families").iterdir() if (p / "__init__.py").is_file()
    )
    assert sorted(FAMILIES) == folders
    for family in families():
        assert family.name in FAMILIES
        assert family.load_options().command == family.name
        assert family.load_api().__name__ == family.name


def test_no_module_is_over_500_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize("name", FAMILIES)
def test_the_api_signature_is_the_declaration(name):
    """Every keyword of ``lowrank.<family>`` is declared once, with the same default, and
    every declared option is a keyword: the CLI and the API cannot drift apart."""
    family = next(f for f in families() if f.name == name)
    options = family.load_options()
    signature = inspect.signature(family.load_api()).parameters
    assert sorted(signature) == sorted(o.name for o in options)
    positional = [n for n, p in signature.items() if p.kind is not p.KEYWORD_ONLY]
    assert positional == [o.name for o in options][: len(positional)]  # model, tokenizer, data
    for option in options:
        assert signature[option.name].default == option.default, option.name


@pytest.mark.parametrize("name", FAMILIES)
def test_the_command_offers_every_declared_cli_option(name):
    from lowrank.cli import main

    family = next(f for f in families() if f.name == name)
    command = main.commands[name]
    declared = [o.name for o in family.load_options() if o.cli]
    assert [p.name for p in command.params] == declared
    assert command.short_help == family.summary

"""The house rules, read off the source with ``ast`` (ARCHITECTURE.md, "The layers").

Every import counts: at the top, inside functions, and under ``TYPE_CHECKING``. A module
imports only from its own unit (a subpackage, or the vocabulary modules at the top) or from a
unit of a lower layer; units of one layer do not import each other; no two modules import each
other, however far round; no private name crosses a module; click is the CLI's alone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchgen"

# Bottom to top. "vocabulary" is every module directly under batchgen/.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"vocabulary"}),
    frozenset({"folder", "fake", "pacing", "manifest"}),
    frozenset({"store", "api"}),
    frozenset({"planning"}),
    frozenset({"live", "batch"}),
    frozenset({"reporting", "export"}),
    # The review page serves what reporting/ reads (and its thumbnails) and writes verdicts.
    frozenset({"review"}),
    # The CLI and batchgen from Python (python_api/): two faces of the same pipeline.
    frozenset({"cli", "python_api"}),
)
LAYER_OF = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
MAX_TOP_LEVEL = 12
MAX_LINES = 450


def read_sources(root: Path = PACKAGE) -> dict[str, str]:
    """Dotted module name -> source, for every module of the package."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        sources[".".join(parts)] = path.read_text()
    return sources


def unit_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and not _is_package(parts[1])):
        return "vocabulary"
    return parts[1]


def _is_package(name: str) -> bool:
    return (PACKAGE / name).is_dir()


def imports(module: str, source: str, modules: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """(imported module, name or "") for every import of batchgen in ``source``."""
    is_pkg = any(m.startswith(module + ".") for m in modules)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "batchgen":
                    yield alias.name, ""
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "batchgen":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub, "") if sub in modules else (target, alias.name)


def graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    return {
        mod: {target for target, _ in imports(mod, src, sources) if target != mod}
        for mod, src in sources.items()
    }


def layer_violations(sources: Mapping[str, str]) -> list[str]:
    found = []
    for mod, targets in graph(sources).items():
        if mod in ("batchgen.__main__", "batchgen"):
            # `python -m batchgen`: the CLI itself; `batchgen/__init__.py`: the public face,
            # which names python_api's functions (imported when first used).
            continue
        src_unit = unit_of(mod)
        for target in sorted(targets):
            dst_unit = unit_of(target)
            if target == "batchgen" or dst_unit == src_unit:
                continue
            if LAYER_OF[dst_unit] >= LAYER_OF[src_unit]:
                found.append(f"{mod} ({src_unit}) imports {target} ({dst_unit})")
    return found


def cycles(sources: Mapping[str, str]) -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module)."""
    edges = graph(sources)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def private_imports(sources: Mapping[str, str]) -> list[str]:
    return [
        f"{mod} imports {target}.{name}"
        for mod, src in sources.items()
        for target, name in imports(mod, src, sources)
        if name.startswith("_") and not name.startswith("__") and target != mod
    ] + [
        f"{mod} imports the private module {target}"
        for mod, src in sources.items()
        for target, _ in imports(mod, src, sources)
        if target.rsplit(".", 1)[-1].startswith("_") and not target.endswith("__")
    ]


def click_users(sources: Mapping[str, str]) -> list[str]:
    users = []
    for mod, src in sources.items():
        for node in ast.walk(ast.parse(src)):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if any(n.split(".")[0] == "click" for n in names):
                users.append(mod)
                break
    return [m for m in users if unit_of(m) != "cli"]


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return read_sources()


def test_every_import_goes_down_the_layers(sources: dict[str, str]) -> None:
    units = {unit_of(m) for m in sources} - {"vocabulary"}
    assert units <= set(LAYER_OF), f"a subpackage with no layer: {units - set(LAYER_OF)}"
    assert layer_violations(sources) == []


def test_an_upward_import_is_caught_even_inside_a_function(sources: dict[str, str]) -> None:
    hostile = dict(sources)
    hostile["batchgen.folder.layout"] += (
        "\n\ndef _late() -> None:\n    from ..cli.app import main  # noqa: F401\n"
    )
    assert layer_violations(hostile) == [
        "batchgen.folder.layout (folder) imports batchgen.cli.app (cli)"
    ]
    sibling = dict(sources)
    sibling["batchgen.fake.stats"] += "\nif True:\n    from ..pacing import rates\n"
    assert layer_violations(sibling) == [
        "batchgen.fake.stats (fake) imports batchgen.pacing.rates (pacing)"
    ]


def test_there_are_no_import_cycles(sources: dict[str, str]) -> None:
    assert cycles(sources) == []
    looped = dict(sources)
    looped["batchgen.errors"] += "\n\ndef _f() -> None:\n    from . import words  # noqa: F401\n"
    looped["batchgen.words"] += "\nfrom .errors import InputError  # noqa: F401\n"
    assert cycles(looped) == [["batchgen.errors", "batchgen.words"]]


def test_no_private_name_crosses_a_module(sources: dict[str, str]) -> None:
    assert private_imports(sources) == []


def test_click_is_imported_only_by_the_cli(sources: dict[str, str]) -> None:
    assert click_users(sources) == []


def test_the_top_level_is_a_handful_of_vocabulary_modules(sources: dict[str, str]) -> None:
    top = sorted(m for m in sources if unit_of(m) == "vocabulary" and m != "batchgen")
    assert len(top) <= MAX_TOP_LEVEL, top


def test_every_module_stays_small(sources: dict[str, str]) -> None:
    big = {m: n for m, s in sources.items() if (n := len(s.splitlines())) > MAX_LINES}
    assert big == {}

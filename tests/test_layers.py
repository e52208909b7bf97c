"""The architecture holds: imports run one way (sdbot -> generation -> bot) and nothing imports in a
circle, lazy imports inside functions included. Walks the source with `ast`; imports nothing."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sdbot", "generation", "bot")

# Lower layers first; a module may import its own layer and the layers before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sdbot",),
    ("generation.errors", "generation.prompt_check", "generation.requests", "generation.engine", "generation"),
    ("generation.jobs",),
    ("bot",),
    ("bot.app", "bot.cli"),
)
# The engine is plain, blocking model code: no event loop, no database, no Discord.
ENGINE_FORBIDDEN = ("asyncio", "aiosqlite", "discord", "sdbot.store", "sdbot.migrate", "generation.jobs", "bot")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules(root: Path = ROOT) -> dict[str, Path]:
    return {
        module_name(path, root): path
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    }


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module `path` imports, at any depth of the file (lazy imports count)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return found


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = product_modules(root)
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for importer, imported in sorted(graph.items()):
        for target in sorted(imported):
            low, high = layer_of(target), layer_of(importer)
            if low is not None and high is not None and low > high:
                problems.append(f"{importer} imports {target}, a layer above it")
            if importer.startswith("generation.engine") and any(
                target == banned or target.startswith(banned + ".") for banned in ENGINE_FORBIDDEN
            ):
                problems.append(f"{importer} (engine) imports {target}")
    return problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among product modules, as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_imports_follow_the_layer_order() -> None:
    graph = import_graph()
    assert set(graph) >= {"sdbot.store", "generation.engine.diffusion", "generation.jobs.worker", "bot.cli"}
    assert layer_violations(graph) == []


def test_there_is_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_checks_catch_a_back_edge_and_a_cycle(tmp_path: Path) -> None:
    """The same checks on a copy of the tree with one bad import added must fail."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            copy = tmp_path / path.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text("utf-8"), "utf-8")
    store = tmp_path / "sdbot" / "store.py"
    store.write_text(store.read_text("utf-8") + "\n\ndef _late() -> None:\n    from bot.errors import explain\n", "utf-8")
    graph = import_graph(tmp_path)
    assert "sdbot.store imports bot.errors, a layer above it" in layer_violations(graph)
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]


def test_every_module_says_what_it_holds() -> None:
    missing = [name for name, path in product_modules().items() if not ast.get_docstring(ast.parse(path.read_text("utf-8")))]
    assert missing == []


@pytest.mark.timeout(120)
def test_the_engine_loads_without_discord_or_the_database() -> None:
    code = (
        "import sys, generation.engine.diffusion, generation.engine.tiny_models, generation.requests;"
        "print(sorted(m for m in ('discord', 'aiosqlite', 'sdbot.store') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list
    assert "discord" not in loaded and "aiosqlite" not in loaded and "sdbot.store" not in loaded

"""The package graph points one way: each layer imports only from layers below it, siblings never import each
other, so there is no cycle (DESIGN: "no layer imports one above it"). Type-only imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "odock"

# top to bottom; the units of one layer are independent of each other
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"commands"},
    {"config_file", "mock"},
    {"app"},
    {"console"},
    {"edge", "gateway", "admin"},
    {"pipeline"},
    {"usage_writer"},
    {"routing", "governance", "usage", "mcp", "cache", "plugins"},
    {"context"},
    {"state"},
    {"safety"},
    {"providers"},
    {"dialects", "transport"},
    {"model", "settings", "metrics", "logs", "services"},
    {"errors"},
]


def units(root: Path) -> set[str]:
    """The top-level modules and packages of the package at `root`."""
    return {
        p.stem if p.is_file() else p.name
        for p in root.iterdir()
        if (p.is_file() and p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").exists()
    }


def violations(root: Path, layers: list[set[str]]) -> list[str]:
    """Every import of the package at `root` that does not go to a strictly lower layer."""
    layer_of = {unit: depth for depth, layer in enumerate(layers) for unit in layer}
    name = root.name
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        source = parts[0]
        if source == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == name:
                    targets = [alias.name for alias in node.names]
                elif node.module.startswith(name + "."):
                    targets = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith(name + ".")]
            for target in targets:
                if target != source and layer_of[target] <= layer_of[source]:
                    found.append(f"{'/'.join(parts)}.py:{node.lineno}: {source} imports {target}")
    return found


def test_every_unit_has_a_layer() -> None:
    """A new top-level module or package must be placed in a layer, so the rule keeps covering everything."""
    assert units(SRC) - set().union(*LAYERS) == set()


def test_imports_point_down() -> None:
    """Each import goes to a strictly lower layer: never up, never sideways to a sibling."""
    assert violations(SRC, LAYERS) == []


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    """The check can fail: a lower layer importing a higher one, and two siblings, are both reported."""
    pkg = tmp_path / "pkg"
    for unit, source in {
        "top": "from pkg import low\n",
        "low": "import pkg.top\n",
        "side": "from pkg.twin import x\n",
        "twin": "",
    }.items():
        (pkg / unit).mkdir(parents=True)
        (pkg / unit / "__init__.py").write_text(source)
    found = violations(pkg, [{"top"}, {"side", "twin"}, {"low"}])
    assert found == ["low/__init__.py:1: low imports top", "side/__init__.py:1: side imports twin"]

"""ARCHITECTURE.md describes the code as it is: every module, its size, the direction of imports."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "open_buildings"
PAGE = ROOT / "ARCHITECTURE.md"
MAX_LINES = 450

#: Modules of ``pipelines`` that hold plain stage functions (no Beam at import time); training
#: may import these and no other part of ``pipelines``.
STAGES = {
    "config",
    "runtime",
    "onnx_backend",
    "onnx_model",
    "torch_runtime",
    "device_decode",
    "forward",
    "postprocess",
    "domain",
    "probabilities",
    "sinks",
    "faults",
    "download",
}
BASE = {"errors", "config", "remote", "resources", "__init__", "__version__"}
#: What each layer may import (besides itself and the base modules).
ALLOWED = {
    "base": set(),
    "geo": set(),
    "models": set(),
    "evaluation": {"geo"},
    "stages": {"geo", "models"},
    "training": {"stages", "evaluation", "geo", "models"},
    "jobs": {"stages", "training", "evaluation", "geo", "models"},
    "commands": {"jobs", "stages", "training", "evaluation", "geo", "models"},
    "api": {"commands", "jobs", "stages", "training", "evaluation", "geo", "models"},
}
#: The package root re-exports the Python API (``open_buildings.detect``), lazily in a module
#: ``__getattr__``, so ``import open_buildings`` loads nothing of it.
ROOT_EXPORTS = {"open_buildings.api"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer(module: str) -> str:
    """The layer of a dotted module name such as ``open_buildings.pipelines.sinks``."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in BASE:
        return "base"
    if parts[0] == "pipelines":  # the package itself is empty: importing it is importing nothing
        return "stages" if len(parts) == 1 or parts[1] in STAGES else "jobs"
    return parts[0]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every ``open_buildings`` module ``path`` imports, at any depth (lazy imports count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("open_buildings"):
                found.append((node.lineno, node.module))
                # ``from open_buildings.pipelines import sinks`` imports the submodule
                found.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.startswith("open_"))
    return found


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_every_module_is_on_the_architecture_page_and_every_listed_one_exists() -> None:
    text = PAGE.read_text(encoding="utf-8")
    listed = set(re.findall(r"\| `([a-z0-9_/]+\.py)` \|", text))
    actual = {p.relative_to(PACKAGE).as_posix() for p in modules()}
    assert actual - listed == set(), "modules missing from ARCHITECTURE.md"
    assert listed - actual == set(), "ARCHITECTURE.md lists modules that do not exist"


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_is_over_450_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it"


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in modules():
        here = layer(dotted(path))
        for line, target in imports_of(path):
            there = layer(target)
            if dotted(path) == "open_buildings" and target in ROOT_EXPORTS:
                continue
            if there not in {here, "base"} and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({here}) imports {target} ({there})")
    assert wrong == []


def test_the_layer_rule_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from open_buildings.commands import infer\n")
    assert imports_of(bad) == [(2, "open_buildings.commands"), (2, "open_buildings.commands.infer")]
    assert "commands" not in ALLOWED[layer("open_buildings.geo.grid")]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_pipeline_stages_do_not_import_beam_at_import_time(name: str) -> None:
    tree = ast.parse((PACKAGE / "pipelines" / f"{name}.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.startswith("apache_beam")]


def test_there_is_one_load_config() -> None:
    defined = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in modules()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name == "load_config"
    ]
    assert defined == ["open_buildings/config.py:" + defined[0].rsplit(":", 1)[1]]


def test_the_registry_imports_no_model_family() -> None:
    from open_buildings import models

    families = {f"open_buildings.models.{f}" for f in models.FAMILIES}
    imported = {target for _, target in imports_of(PACKAGE / "models" / "registry.py")}
    assert imported & families == set()
    assert families <= {f"open_buildings.models.{p.stem}" for p in (PACKAGE / "models").glob("*")}


def test_the_registry_still_lists_every_family() -> None:
    from open_buildings.models.registry import list_models

    names = list_models()
    for prefix in ("unet_", "vit_siglip_", "vmoe_", "owlvit_"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_importing_the_heads_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import open_buildings.models.heads as h\n"
        "assert h.CHANNELS\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


def test_the_root_loads_the_api_only_when_asked() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not [n for n in top if isinstance(n, ast.ImportFrom) and n.module == "open_buildings"]

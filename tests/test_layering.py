"""Dependencies point one way: `shared/` never imports or names `functions/` (it is handed what
it needs, such as the registry of functions or the machine program)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMES_FUNCTIONS = re.compile(r"\bfunctions\.(?:handlers|machine|ingress|dispatcher|registry)\b")


def test_shared_never_imports_or_names_functions() -> None:
    offenders = []
    for path in sorted((REPO / "shared").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "functions":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(REPO)}:{node.lineno} imports {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] == "functions"
                ]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and NAMES_FUNCTIONS.search(node.value):
                if not _is_docstring(tree, node):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} names {node.value!r}")
    assert offenders == []


def test_the_registry_loads_no_heavy_library() -> None:
    """The API and the dispatcher read the registry: Pillow, WeasyPrint and openpyxl stay out."""
    import subprocess
    import sys

    code = (
        "import sys, functions.registry as r; r.load_registry(); print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not {"PIL", "weasyprint", "openpyxl", "pyvips"} & set(ast.literal_eval(loaded))


def _is_docstring(tree: ast.AST, node: ast.Constant) -> bool:
    for parent in ast.walk(tree):
        body = getattr(parent, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and body[0].value is node:
            return True
    return False

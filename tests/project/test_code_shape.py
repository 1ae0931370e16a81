"""The code's shape: no function in engine/ or strategies/ is over MAX_LINES lines.

A function's length is counted from its ``def`` line to the last line of its body,
both included, decorators excluded (``ast``'s ``lineno`` to ``end_lineno``): its
signature, docstring, comments and blank lines inside it all count.  Methods and nested
functions count on their own, and a nested function's lines count in its enclosing one
too.  A function that grows past the limit is split into named pieces; the test names
every offender as ``path:line name (N lines)``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "strategies")
MAX_LINES = 60


def long_functions(source: str, path: str, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` for each function in ``source`` longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_engine_or_strategies_is_over_60_lines():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            offenders += long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert offenders == [], f"functions over {MAX_LINES} lines (split them): " + "; ".join(offenders)


def test_the_count_runs_from_the_def_line_to_the_end_of_the_body_without_decorators():
    body = "\n".join(f"    x{i} = {i}" for i in range(57))
    at_limit = f"@decorator\n@another(1)\ndef f(\n    a,\n):\n{body}\n"  # 3 + 57 = 60 lines from `def`
    assert long_functions(at_limit, "m.py") == []
    over = f"@decorator\ndef g(a):\n{body}\n    x = 1\n    y = 2\n    return y\n"  # 1 + 57 + 3 = 61
    assert long_functions(over, "m.py") == ["m.py:2 g (61 lines)"]
    in_method = "\n".join("    " + line for line in body.split("\n"))  # 57 lines of a method's body
    nested = f"class C:\n    async def h(self):\n        def inner():\n            pass\n{in_method}\n{in_method}\n"
    assert long_functions(nested, "m.py") == ["m.py:2 h (117 lines)"]  # 1 + 2 + 2 x 57

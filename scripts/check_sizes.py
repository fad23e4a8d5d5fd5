"""List package functions over 60 lines and modules over 400 lines (issue: long functions)."""

import ast
import pathlib
import sys

FUNC, MODULE = 60, 400
bad = 0
for path in sorted(pathlib.Path("oversquash_lens").rglob("*.py")):
    text = path.read_text()
    lines = len(text.splitlines())
    if lines > MODULE:
        print(f"{path}: module {lines} lines")
        bad += 1
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body_start = node.body[0].lineno
            if isinstance(node.body[0], ast.Expr) and isinstance(
                getattr(node.body[0], "value", None), ast.Constant
            ):  # skip the docstring
                body_start = node.body[0].end_lineno + 1 if len(node.body) > 1 else node.end_lineno
            n = node.end_lineno - body_start + 1
            if n > FUNC:
                print(f"{path}:{node.lineno}: {node.name} {n} lines (code, docstring excluded)")
                bad += 1
sys.exit(1 if bad else 0)

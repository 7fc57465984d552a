"""Checks on the user's own code at submit, before anything is launched or billed.

``workdir`` must be a folder no larger than the configured cap (it is uploaded as the Ray
job's working directory); ``train: package.module:function`` must name a function that
exists, in the workdir or among the installed packages. The target is found by reading
the module's source, never by importing it: submitting runs none of the user's code.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from broker.errors import SpecError

SKIPPED_DIRS = {".git", "__pycache__"}


def resolve_workdir(path: str, max_bytes: int, *, base: Path | None = None) -> str:
    """The absolute workdir; ``SpecError`` when it is missing, not a folder or too large."""
    folder = (base or Path.cwd()) / Path(path).expanduser()
    if not folder.is_dir():
        raise SpecError("workdir", "must be an existing folder")
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
            if total > max_bytes:
                raise SpecError(
                    "workdir",
                    f"is larger than {max_bytes / 2**20:g} MiB (GPUBROKER_WORKDIR_MAX_MIB); "
                    "keep data out of it and read it from storage",
                )
    return str(folder.resolve())


def _module_file(module: str, roots: list[Path]) -> Path | None:
    parts = module.split(".")
    for root in roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _defines(source: str, name: str) -> bool:
    """Whether a module's top level defines or imports ``name``."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return True
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        elif isinstance(node, ast.Import | ast.ImportFrom) and any(
            (alias.asname or alias.name.split(".")[0]) == name for alias in node.names
        ):
            return True
    return False


def check_train_target(target: str, workdir: str | None, field: str = "train") -> None:
    """Refuse a ``train:`` (or ``serve:``) target whose module or name does not exist."""
    module, _, function = target.partition(":")
    roots = ([Path(workdir)] if workdir else []) + [
        Path(entry) for entry in sys.path if entry and Path(entry).is_dir()
    ]
    path = _module_file(module, roots)
    where = "the workdir or the installed packages" if workdir else "the installed packages"
    if path is None:
        raise SpecError(field, f"module {module} is not in {where}")
    try:
        found = _defines(path.read_text(encoding="utf-8", errors="replace"), function)
    except SyntaxError:
        raise SpecError(field, f"module {module} is not valid Python") from None
    if not found:
        raise SpecError(field, f"module {module} defines no {function}")

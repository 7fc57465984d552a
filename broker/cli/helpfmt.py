"""Metavars in ``--help`` as command lines write them.

Recent typer releases label every option with its Python type (``<bool>`` on a flag,
``<list[str]>`` on a repeatable option) and wrap a required argument in braces
(``{spec}``). gpubroker's help shows what to type instead: nothing after a flag, an
upper-case placeholder after an option (``TEXT``, ``INTEGER``, ``FILE``, or the choices
``table|json|csv``), and arguments as ``SPEC`` / ``[REVISION]``. An explicit ``metavar=``
on an option still wins. Typer versions without these hooks are left as they are.
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "bool": "BOOLEAN"}


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) in (list, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return _type_name(args[0]) if args else "TEXT"
    name = getattr(annotation, "__name__", str(annotation))
    return _NAMES.get(name, name.upper())


def _display_type(self: Any, ctx: Any) -> str | None:
    if getattr(self, "is_flag", False) or getattr(self, "count", False):
        return None
    if self.metavar is not None and self.param_type_name == "option":
        return str(self.metavar)
    desc = self.type_descriptor
    if desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    if desc.is_path:
        return "FILE" if str(desc.path_type).lower() == "file" else "PATH"
    if desc.is_datetime:
        return "DATETIME"
    return _type_name(desc.annotation)


def _usage_display_name(self: Any) -> str:
    name = str(self.metavar or self.name or "").upper()
    if self.nargs != 1:
        name += "..."
    return name if self.required else f"[{name}]"


def _rich_display_name(self: Any) -> str:
    name = str(self.metavar or self.name or "").upper()
    return name + "..." if self.nargs != 1 else name


def install() -> None:
    """Replace typer's type labels in help with command-line metavars (idempotent)."""
    from typer import core

    parameter = getattr(core, "_TyperParameter", None)
    if parameter is not None and hasattr(parameter, "display_type"):
        parameter.display_type = _display_type
    argument = getattr(core, "TyperArgument", None)
    if argument is not None and hasattr(argument, "_usage_display_name"):
        argument._usage_display_name = _usage_display_name
        argument._rich_display_name = _rich_display_name

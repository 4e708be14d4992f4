"""Griffe extension for the API reference: show what a module exports, once, with its own docstrings.

The handler inspects the live objects (``force_inspection: true`` in mkdocs.yml: the structures are
frozen dataclasses built by a decorator, whose signatures static analysis cannot see).  What inspection
gets wrong, this extension puts right, without touching the package's docstrings:

- A module's members include everything it imports (``Structure`` was rendered in six modules).  Here a
  module that defines ``__all__`` keeps only the names in it (and its submodules).
- An attribute's "docstring" is the docstring of its value's type (``float``, ``str``, ``bool``,
  ``dict``: "Convert a string or number to a floating point number, if possible.").  Here such an
  attribute gets the docstring written under it in the source, if there is one, else none (and
  ``show_if_no_docstring: false`` hides it; dataclass fields are documented in their class's
  docstring).
- A dataclass field with a ``default_factory`` showed ``= <factory>`` in the signature.  Here it shows
  what the factory makes (``= {}``).
- Bases were written with their private module path (``precondalg.structures._base.Structure``).
  Here they use the public path the class is exported under, where there is one.
- A ``*args`` / ``**kwargs`` parameter has no default, so the parameter table called it "required".
  Here its default in the table reads ``()`` / ``{}`` (the signature is unchanged): it may be left out.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
from typing import Any

import griffe


@functools.cache
def _exports(module_path: str) -> frozenset[str] | None:
    try:
        module = importlib.import_module(module_path)
    except Exception:  # not importable: leave the members as griffe found them
        return None
    names = getattr(module, "__all__", None)
    return None if names is None else frozenset(names)


@functools.cache
def _source_docstrings(module_path: str) -> dict[str, str]:
    """{"Class.attr" or "attr": docstring} for the attribute docstrings written in a module's source."""
    try:
        source = inspect.getsource(importlib.import_module(module_path))
    except (Exception, OSError):
        return {}
    found: dict[str, str] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for stmt, following in zip(body, [*body[1:], None]):
            if isinstance(stmt, ast.ClassDef):
                visit(stmt.body, f"{prefix}{stmt.name}.")
                continue
            if not isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                continue
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                for target in targets:
                    if isinstance(target, ast.Name):
                        found[prefix + target.id] = inspect.cleandoc(following.value.value)

    visit(ast.parse(source).body, "")
    return found


def _public_path(path: str) -> str:
    """`path` without its private module components, if the object is importable from there."""
    parts = path.split(".")
    public = [p for p in parts[:-1] if not p.startswith("_")] + parts[-1:]
    if public == parts:
        return path
    try:
        value = importlib.import_module(".".join(parts[:-1]))
        target = importlib.import_module(".".join(public[:-1]))
        same = getattr(value, parts[-1]) is getattr(target, public[-1])
    except Exception:
        return path
    return ".".join(public) if same else path


def _runtime(obj: griffe.Object) -> Any:
    """The live object griffe inspected, or None."""
    try:
        value: Any = importlib.import_module(obj.module.path)
        for name in obj.path[len(obj.module.path) + 1 :].split("."):
            value = getattr(value, name)
    except Exception:
        return None
    return value


class CleanApi(griffe.Extension):
    """See the module docstring."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._clean(pkg)

    def _clean(self, obj: griffe.Object) -> None:
        if obj.is_module:
            exports = _exports(obj.path)
            for name, member in list(obj.members.items()):
                if not member.is_alias and member.is_module:
                    self._clean(member)
                elif exports is not None and name not in exports:
                    del obj.members[name]
        for member in list(obj.members.values()):
            if member.is_alias or member.is_module:
                continue
            if member.is_attribute:
                self._fix_attribute(member)
            elif member.is_class:
                self._clean(member)
                self._fix_factory_defaults(member)
                member.bases = [_public_path(b) if isinstance(b, str) else b for b in member.bases]
            if member.is_function or member.is_class:
                self._fix_var_parameters(member)

    @staticmethod
    def _fix_attribute(attr: griffe.Attribute) -> None:
        if attr.docstring is None or "property" in attr.labels:
            return
        qualname = attr.path[len(attr.module.path) + 1 :]
        written = _source_docstrings(attr.module.path).get(qualname)
        if written is not None:
            old = attr.docstring
            attr.docstring = griffe.Docstring(
                written, parent=attr, parser=old.parser, parser_options=old.parser_options
            )
            return
        # No docstring in the source: what inspection found is the value's type's docstring.
        attr.docstring = None

    @staticmethod
    def _fix_factory_defaults(cls: griffe.Class) -> None:
        init = cls.members.get("__init__")
        runtime = _runtime(cls)
        if init is None or init.is_alias or not dataclasses.is_dataclass(runtime):
            return
        for field in dataclasses.fields(runtime):
            if field.default_factory is not dataclasses.MISSING and field.name in init.parameters:
                init.parameters[field.name].default = repr(field.default_factory())

    @staticmethod
    def _fix_var_parameters(obj: griffe.Object) -> None:
        if obj.docstring is None:
            return
        for section in obj.docstring.parsed:
            if section.kind is not griffe.DocstringSectionKind.parameters:
                continue
            for parameter in section.value:
                if parameter.value is None and parameter.name.startswith("**"):
                    parameter.value = "{}"
                elif parameter.value is None and parameter.name.startswith("*"):
                    parameter.value = "()"

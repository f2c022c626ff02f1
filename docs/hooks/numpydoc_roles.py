"""Griffe extension: numpydoc/Sphinx cross-reference roles become mkdocstrings cross-references.

Docstrings follow numpydoc and write ``:class:`~rdpo_theory.errors.InputError```,
``:func:`fit```, ``:mod:`.fast```, ``:data:``, ``:meth:``, ``:attr:``, ``:obj:`` and ``:exc:``.
mkdocstrings does not read Sphinx roles, so without this extension they show as literal text.
Each role is resolved the way Sphinx resolves it (a leading ``~`` shows only the last name; a
leading ``.`` or a bare name is looked up from the documented object outwards: the object, its
parents, its module, its packages) and replaced by an *optional* autorefs reference
(``<autoref optional identifier="...">``): a link when the target is rendered somewhere on the
site, otherwise plain code. Names outside the package (``numpy.ndarray``) become code spans.
A role in a numpydoc parameter's type (``x : as in :func:`f```) becomes plain text, because the
type is rendered inside a code element.

Registered in mkdocs.yml under the python handler's ``extensions``.
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(
    r":(?:py:)?(class|func|mod|data|meth|attr|obj|exc|const):`(~?)([.\w]+(?:\s*\n\s*[.\w]+)?)(\(\))?`"
)
PARAM_LINE = re.compile(r"^\s*[\w*, ]+ : ")


def _display(tilde: str, name: str, call: str | None) -> str:
    shown = name.rsplit(".", 1)[-1] if tilde else name.lstrip(".")
    return shown + ("()" if call else "")


def _lookup(root: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    if path == root.path:
        return root
    if not path.startswith(root.path + "."):
        return None
    try:
        return root[path[len(root.path) + 1 :]]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def resolve(obj: griffe.Object, name: str) -> str | None:
    """Full path of ``name`` as seen from ``obj`` (Sphinx's search order), or None."""
    root = obj.package
    bare = name.lstrip(".")
    ups = len(name) - len(bare)
    scopes: list[griffe.Object] = []
    scope: griffe.Object | None = obj
    while scope is not None:
        scopes.append(scope)
        scope = scope.parent
    if ups > 1:  # "..data.X": relative to the module's package, like a relative import
        mod = obj.module
        base = mod if mod.is_package else mod.parent
        for _ in range(ups - 1):
            base = base.parent if base is not None and base.parent is not None else base
        scopes = [base] if base is not None else []
    candidates = [f"{s.path}.{bare}" for s in scopes] + [bare]
    for path in candidates:
        found = _lookup(root, path)
        if found is not None:
            return path
    return None


def rewrite(text: str, obj: griffe.Object) -> str:
    """``text`` with every role replaced (see the module docstring)."""

    def sub(m: re.Match) -> str:
        _, tilde, name, call = m.groups()
        name = re.sub(r"\s+", "", name)  # a target wrapped over two docstring lines
        shown = _display(tilde, name, call)
        line = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        if PARAM_LINE.match(line):
            return shown
        target = resolve(obj, name)
        code = f"<code>{html.escape(shown)}</code>"
        if target is None:
            return code
        return f'<autoref optional identifier="{target}">{code}</autoref>'

    return ROLE.sub(sub, text)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class NumpydocRoles(griffe.Extension):
    """Rewrite the roles of every docstring of a loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:  # noqa: D102
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = rewrite(obj.docstring.value, obj)

"""mkdocs hook: the tutorial page shows the executed notebook, outputs and figures included.

The tutorial is a jupytext percent-format script (``docs/tutorials/first-steps.py``). Its page
(``docs/tutorials/first-steps.md``) marks where the notebook goes with a line

    <!-- notebook: docs/tutorials/first-steps.py -->

and this hook replaces that line with the executed notebook rendered as Markdown: markdown
cells as they are (headings one level down, under the page's title), code cells as Python
blocks, printed and returned text as text blocks, and figures as inline PNG images.

Execution (jupytext + nbclient, a ``python3`` kernel in the repository root) takes about a
minute, so the executed notebook is cached under ``.cache/docs-notebooks/`` keyed by a hash of
the script and of the package's sources: a rebuild with neither changed renders instantly.
``.ci/run`` executes the tutorial through :func:`executed` too, so CI runs it once.
A cell that raises fails the build.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.tutorial")

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "docs-notebooks"
MARKER = re.compile(r"^<!-- notebook: (\S+) -->$", re.M)
TIMEOUT_S = 900


def source_key(script: Path) -> str:
    """Hash of the notebook script and of every source file of the package it imports."""
    h = hashlib.sha256(script.read_bytes())
    for f in sorted((ROOT / "rdpo_theory").rglob("*.py")):
        h.update(f.relative_to(ROOT).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:20]


def executed(script: str | Path):
    """The executed notebook of a jupytext script (an ``nbformat`` node), from the cache when
    neither the script nor the package changed. Raises when a cell fails."""
    import jupytext
    import nbclient
    import nbformat

    script = ROOT / script
    cached = CACHE / f"{script.stem}-{source_key(script)}.ipynb"
    if cached.exists():
        return nbformat.read(cached, as_version=4)
    log.info("executing %s (cached afterwards in %s)", script.relative_to(ROOT), cached)
    nb = jupytext.read(script)
    nbclient.NotebookClient(
        nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(cached)
    return nb


def _text(output) -> str | None:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    if "image/png" in data:
        return None
    return data.get("text/plain")


def _merged_streams(outputs: list) -> list:
    """Consecutive prints to the same stream as one output (one text block per cell)."""
    merged: list = []
    for o in outputs:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and o.get("output_type") == "stream"
            and prev.get("output_type") == "stream"
            and prev.get("name") == o.get("name")
        ):
            merged[-1] = {**prev, "text": prev.get("text", "") + o.get("text", "")}
        else:
            merged.append(o)
    return merged


def _fence(body: str, lang: str = "") -> str:
    body = body.rstrip("\n")
    ticks = "```" if "```" not in body else "````"
    return f"{ticks}{lang}\n{body}\n{ticks}"


def to_markdown(nb) -> str:
    """Markdown of an executed notebook (see the module docstring)."""
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(re.sub(r"^(#+) ", r"#\1 ", cell.source, flags=re.M))
            continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        code = "\n".join(
            line for line in cell.source.splitlines() if not line.startswith("%")
        ).strip("\n")
        code = re.sub(r"^# %matplotlib.*\n", "", code)
        parts.append(_fence(code, "python"))
        for output in _merged_streams(cell.get("outputs", [])):
            if output.get("output_type") == "error":
                raise RuntimeError(f"the tutorial cell failed: {output.get('ename')}")
            png = output.get("data", {}).get("image/png")
            if png:
                data = png if isinstance(png, str) else base64.b64encode(png).decode()
                parts.append(
                    f'<img class="notebook-figure" alt="figure drawn by the cell above" '
                    f'src="data:image/png;base64,{data.strip()}">'
                )
                continue
            text = _text(output)
            if text and text.strip():
                parts.append(_fence(text, "text"))
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: D103
    def render(m: re.Match) -> str:
        return to_markdown(executed(m.group(1)))

    return MARKER.sub(render, markdown)

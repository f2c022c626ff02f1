"""The repository's own documentation: anchors that docstrings cite exist, the README stays short
and carries the two commands CI reads."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = (
    "preference-model dpo-loss log-linear-policies kl-dro kl-dual kl-regimes wasserstein-dro "
    "w1-continuous wp-continuous finite-candidates exact-programs certificates optimality-gap "
    "algorithm-1-wdpo algorithm-2-kldpo code-variants minibatch-fixed-point bounds coverage "
    "shift-families baselines subpopulation-radius"
).split()


def theory_anchors() -> set[str]:
    text = (ROOT / "docs" / "theory.md").read_text()
    return set(re.findall(r"^#+ .*\{#([a-z0-9-]+)\}\s*$", text, flags=re.M))


def test_theory_has_every_fixed_anchor():
    assert set(ANCHORS) <= theory_anchors()


def test_every_cited_theory_anchor_exists():
    cited = {}
    files = [*ROOT.glob("rdpo_theory/**/*.py"), *ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md")]
    files += [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("experiments/**/*.py")]
    for f in files:
        for a in re.findall(r"theory\.md#([A-Za-z0-9_-]+)", f.read_text()):
            cited.setdefault(a, f.relative_to(ROOT).as_posix())
    missing = {a: f for a, f in cited.items() if a not in theory_anchors()}
    assert not missing, f"cited anchors missing from docs/theory.md: {missing}"


def test_readme_is_short_and_has_the_two_ci_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    for tag in ("<!-- ci:main-command -->", "<!-- ci:test-command -->"):
        i = lines.index(tag)
        assert lines[i + 1] == "```bash" and lines[i + 2].startswith("pip install torch==")
    main = lines[lines.index("<!-- ci:main-command -->") + 2]
    assert main.endswith("pip install -e . && rdpo figures --quick")  # core dependencies only


def test_no_reference_points_outside_the_repository():
    """The theory lives in docs/theory.md; nothing cites notes outside the repository."""
    import subprocess

    notes = "THE" + "ORY"  # spelled in two pieces so this file does not match itself
    parts = [notes + r"\.md", notes + " [0-9]", notes + "'s", "shared" + " notes"]
    pattern = "|".join([*parts, r"\.\./shared/", "/work" + "/shared"])
    hits = subprocess.run(
        ["git", "grep", "-nIE", pattern],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if hits.returncode == 128:  # not a git checkout (e.g. an sdist): nothing to check
        return
    assert hits.stdout == "", hits.stdout


def _hook(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_check_flags_unrendered_maths_and_literal_roles():
    """docs/hooks/site_checks.py: what the strict build rejects, on the HTML patterns of the old
    theory page (a list item's display maths that arithmatex missed, garbled by emphasis)."""
    check = _hook("site_checks").find_problems
    good = (
        '<article><p>Let <span class="arithmatex">\\(x = \\frac12\\)</span>.</p>'
        '<div class="arithmatex">\\[\\sum_i p_i\\]</div><code>$HOME \\theta</code></article>'
    )
    assert check(good) == []
    bad = {
        "stray '$'": '<article><p>so $<span class="arithmatex">\\(x\\)</span>$</p></article>',
        "garbled": "<article><p>\\mathrm{KL}<em _in _mathbb_R w>{\\min}</em></p></article>",
        "TeX outside": "<article><p>the bound \\(x\\) and \\lambda_0</p></article>",
        "literal numpydoc role": "<article><p>see :class:<code>~a.B</code></p></article>",
    }
    folded = _hook("site_checks").folded_bullets
    assert folded("<article><li><p>(stable form).\n* <strong>Loss.</strong></p></li></article>")
    assert not folded("<article><table></table>\n<p>* A footnote marker.</p></article>")
    for kind, html in bad.items():
        problems = check(html)
        assert any(kind in p for p in problems), (kind, problems)


def test_numpydoc_roles_become_cross_references():
    """docs/hooks/numpydoc_roles.py resolves roles like Sphinx (``~`` shortens, bare and ``.``
    names are looked up from the documented object outwards) into optional autorefs."""
    import griffe

    roles = _hook("numpydoc_roles")
    pkg = griffe.load("rdpo_theory", search_paths=[str(ROOT)], resolve_aliases=False)
    fit = pkg["approx.fit"]
    out = roles.rewrite(
        "See :class:`~rdpo_theory.errors.InputError`, :func:`fit`, :func:`numpy.exp` and\n"
        ":mod:`rdpo_theory.\n    approx`.\nx : as in :func:`fit`.",
        fit,
    )
    assert '<autoref optional identifier="rdpo_theory.errors.InputError"><code>InputError<' in out
    assert '<autoref optional identifier="rdpo_theory.approx.fit"><code>fit</code>' in out
    assert '<autoref optional identifier="rdpo_theory.approx"><code>rdpo_theory.approx<' in out
    assert "<code>numpy.exp</code>" in out and "numpy.exp</code></autoref>" not in out
    assert out.endswith("x : as in fit.")  # a parameter's type is rendered as code: plain text
    assert ":func:" not in out and ":class:" not in out and ":mod:" not in out


def _drawn(module, draw, *args):
    """Call a plotting function of ``module`` and return its figure instead of saving it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    figs = []
    original = module.savefig
    module.savefig = lambda fig, path, **kw: figs.append(fig) or path
    try:
        draw(*args, "unused.png")
    finally:
        module.savefig = original
    return figs[0]


def _data_axes(fig):
    return [ax for ax in fig.axes if ax.axison and (ax.lines or ax.collections)]


def test_committed_figures_keep_legends_off_the_data_and_label_their_axes():
    """The shift trade-off and the rates bounds, redrawn from the committed tables: every
    panel with data has both axis labels and no legend of its own (legends sit in a panel
    kept for them), and Theorem 2's bound near 1e41 is clipped off the axis with a note."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from rdpo_theory.plots import rates, shift

    fig = _drawn(shift, shift.plot_tradeoff, pd.read_csv(ROOT / "figures" / "shift_tradeoff.csv"))
    panels = _data_axes(fig)
    assert len(panels) == 4
    for ax in panels:
        assert ax.get_legend() is None and ax.get_xlabel() and ax.get_ylabel()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and len(legends[0].get_texts()) >= 10
    plt.close(fig)

    bounds = pd.read_csv(ROOT / "figures" / "rates_bounds.csv")
    assert bounds["bound_certified"].max() > 1e40  # the case the clipping is for
    fig = _drawn(rates, rates.bound_vs_observed, bounds)
    panels = _data_axes(fig)
    assert len(panels) == 3
    for ax in panels:
        assert ax.get_legend() is None and ax.get_xlabel() and ax.get_ylabel()
        observed_max = max(line.get_ydata().max() for line in ax.lines[:1])
        assert ax.get_ylim()[1] <= observed_max * 10 ** (rates._DECADES_ABOVE + 1)
    notes = [t.get_text() for ax in panels for t in ax.texts]
    assert any("axis clipped" in t and "e+40" in t for t in notes), notes
    plt.close(fig)


def _ci_commands(path: Path) -> dict[str, str]:
    """The command after each ``<!-- ci:NAME -->`` marker's bash fence, as .ci/run reads it."""
    lines = path.read_text().splitlines()
    out = {}
    for tag in ("main-command", "test-command"):
        i = lines.index(f"<!-- ci:{tag} -->")
        assert lines[i + 1] == "```bash", (path, tag)
        out[tag] = lines[i + 2]
    return out


def test_getting_started_shows_the_readme_commands():
    """docs/getting-started.md repeats README's two commands verbatim (it once lacked lora)."""
    readme = _ci_commands(ROOT / "README.md")
    assert _ci_commands(ROOT / "docs" / "getting-started.md") == readme
    assert "lora" in readme["test-command"]


def test_data_format_page_example_is_what_the_reader_accepts(tmp_path, capsys):
    """The CSV example of docs/data-format.md loads, and its documented command solves it."""
    from rdpo_theory.cli import main
    from rdpo_theory.io import read_preference_data

    page = (ROOT / "docs" / "data-format.md").read_text()
    example = re.search(r"```text\n(x0,x1,y,weight\n.*?)```", page, flags=re.S).group(1)
    path = tmp_path / "pairs.csv"
    path.write_text(example)
    data = read_preference_data(path)
    assert data.X.shape == (4, 2) and data.y.tolist() == [1, 0, 0, 1]
    assert data.weights.tolist() == [0.4, 0.1, 0.25, 0.25]
    command = re.search(r"```bash\n(rdpo solve --data pairs\.csv[^\n]*)\n```", page).group(1)
    argv = command.split()[1:]
    argv[argv.index("pairs.csv")] = str(path)
    assert main(argv) == 0
    assert "kldpo" in capsys.readouterr().out.lower()

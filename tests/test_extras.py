"""A core-only install: figures that need an extra are skipped with one line, never a traceback.

The ``llm`` extra is hidden by putting ``None`` in ``sys.modules`` for its modules, which makes
both ``importlib.util.find_spec`` and ``import`` behave as if the packages were not installed.
"""

import sys

import pytest

import rdpo_theory.commands.figures as figcmd
from rdpo_theory import extras
from rdpo_theory.cli import main
from rdpo_theory.figures import FigureSpec, load_all


@pytest.fixture
def no_llm(monkeypatch):
    for mod in extras.EXTRAS["llm"]:
        monkeypatch.setitem(sys.modules, mod, None)


def _core_make(out, *, quick, jobs):
    p = out / "core.csv"
    p.write_text("a\n1\n")
    return [p]


def _fake_registry(*extra_specs):
    reg = {"core": FigureSpec("core", _core_make, "a core figure")}
    reg.update({s.name: s for s in extra_specs})
    return reg


def test_missing_reports_hidden_modules(no_llm):
    assert extras.missing("llm") == ["transformers", "tokenizers", "accelerate"]
    assert extras.extra_of("tokenizers.models") == "llm"
    assert extras.extra_of("numpy") is None
    with pytest.raises(extras.MissingExtraError, match=r'pip install -e "\.\[llm\]"'):
        extras.require("llm", what="this")
    with pytest.raises(KeyError, match="unknown extra"):
        extras.missing("nope")


def test_llm_figure_declares_its_extra():
    assert load_all()["llm-tiny"].extra == "llm"
    assert all(s.extra is None or s.extra in extras.EXTRAS for s in load_all().values())
    assert load_all()["rates"].extra is None  # the core figures need no extra


def test_figures_skips_llm_figure_with_one_line(no_llm, monkeypatch, tmp_path, capsys):
    llm = load_all()["llm-tiny"]  # the real spec: its make must not be called
    monkeypatch.setattr(figcmd, "load_all", lambda: _fake_registry(llm))
    assert main(["figures", "--quick", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "core.csv").exists() and "[core]" in out
    lines = [ln for ln in out.splitlines() if "llm-tiny" in ln]
    assert lines == ["skipped llm-tiny: needs the 'llm' extra; pip install -e \".[llm]\""]
    assert "Traceback" not in out + err


def test_figures_only_names_a_skipped_figure_exits_2(no_llm, monkeypatch, tmp_path, capsys):
    llm = load_all()["llm-tiny"]
    monkeypatch.setattr(figcmd, "load_all", lambda: _fake_registry(llm))
    assert main(["figures", "--only", "llm-tiny", "--out", str(tmp_path)]) == 2
    assert 'pip install -e ".[llm]"' in capsys.readouterr().out


def test_import_deep_inside_make_is_caught(no_llm, monkeypatch, tmp_path, capsys):
    def make(out, *, quick, jobs):
        import tokenizers  # noqa: F401  (hidden: raises ModuleNotFoundError)

    spec = FigureSpec("undeclared", make, "needs tokenizers without declaring it")
    monkeypatch.setattr(figcmd, "load_all", lambda: _fake_registry(spec))
    assert main(["figures", "--out", str(tmp_path)]) == 0
    assert "skipped undeclared: needs the 'llm' extra" in capsys.readouterr().out


def test_unrelated_missing_module_is_not_hidden(monkeypatch, tmp_path):
    def make(out, *, quick, jobs):
        raise ModuleNotFoundError("No module named 'not_an_extra'", name="not_an_extra")

    spec = FigureSpec("broken", make, "a real bug")
    monkeypatch.setattr(figcmd, "load_all", lambda: _fake_registry(spec))
    with pytest.raises(ModuleNotFoundError):
        main(["figures", "--out", str(tmp_path)])


def test_rdpo_llm_without_extra_is_one_line_error(no_llm, capsys):
    assert main(["llm", "--tiny", "--smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[llm]"' in err and "tokenizers" in err


def test_figures_list_marks_extras(capsys):
    assert main(["figures", "--list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("llm-tiny"))
    assert "needs the 'llm' extra" in line

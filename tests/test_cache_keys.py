"""The sweep cache cannot serve stale results (issue 16 item 3): keys hold the package version
and a hash of the package's source; failures are cached with their reason and retried when the
code changes; `rdpo cache clear` and `--no-cache`."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import rdpo_theory
from rdpo_theory.cli import main
from rdpo_theory.data import PreferenceData
from rdpo_theory.studies import sweep as S

DATA = PreferenceData(np.array([[1.0, 0.5], [-0.3, 1.0], [0.7, -0.2]]), np.array([1, 0, 1]))


def solve_task(params, seed, shared):
    """A sweep task that calls a real solver through the package namespace."""
    from rdpo_theory import exact

    res = exact.dpo(DATA, beta=params["beta"], radius=2.0)
    return {"theta0": float(res.theta[0]), "ok": True}


def _tasks():
    return [S.Task({"beta": b}) for b in (0.5, 1.0)]


def _run(tmp_path):
    return S.run_sweep(solve_task, _tasks(), namespace="t", cache_dir=tmp_path, progress=False)


def test_changed_solver_is_never_served_stale(tmp_path, monkeypatch):
    """Issue 16 failure 3: the key was a hand-bumped CACHE_VERSION, so after a solver change
    every run came from the cache with the old code's numbers."""
    first = _run(tmp_path)
    assert first.n_computed == 2 and _run(tmp_path).n_cached == 2
    from rdpo_theory import exact

    real = exact.dpo

    def changed_dpo(*a, **k):  # "the solver code changed": different numbers
        r = real(*a, **k)
        r.theta = r.theta + 1.0
        return r

    sources = S.package_sources()
    patched = dict(sources)
    patched["exact/dpo.py"] = sources["exact/dpo.py"] + b"\n# changed\n"
    monkeypatch.setattr(exact, "dpo", changed_dpo)
    monkeypatch.setattr(S, "package_sources", lambda: patched)
    second = _run(tmp_path)
    assert second.n_cached == 0 and second.n_computed == 2
    for a, b in zip(first.rows, second.rows):
        assert b["theta0"] == pytest.approx(a["theta0"] + 1.0)
    monkeypatch.undo()
    assert _run(tmp_path).n_cached == 2  # the old code's entries are still valid for it


def test_version_is_part_of_the_key(tmp_path, monkeypatch):
    _run(tmp_path)
    monkeypatch.setattr(rdpo_theory, "__version__", "999.0")
    assert _run(tmp_path).n_cached == 0
    payload = json.loads(next(Path(tmp_path).rglob("*.json")).read_text())
    assert {"code", "version", "failed"} <= set(payload)


STATE = {"fixed": False}


def flaky(params, seed, shared):
    if STATE["fixed"]:
        return {"ok": True, "v": 1.0}
    return {"ok": False, "status": "error: infeasible", "reason": "the program was infeasible"}


def test_failures_are_cached_with_reason_and_retried_after_a_code_change(tmp_path, monkeypatch):
    STATE["fixed"] = False
    t = [S.Task({"i": 0})]
    r1 = S.run_sweep(flaky, t, namespace="f", cache_dir=tmp_path, progress=False)
    assert r1.rows[0]["ok"] is False
    payload = json.loads(next(Path(tmp_path).rglob("*.json")).read_text())
    assert payload["failed"] is True and payload["reasons"] == ["the program was infeasible"]
    STATE["fixed"] = True  # same code: the failure is served (it is what this code gives)
    assert S.run_sweep(flaky, t, namespace="f", cache_dir=tmp_path, progress=False).n_cached == 1
    patched = dict(S.package_sources(), **{"fix.py": b"# the fix"})
    monkeypatch.setattr(S, "package_sources", lambda: patched)
    r3 = S.run_sweep(flaky, t, namespace="f", cache_dir=tmp_path, progress=False)
    assert r3.n_computed == 1 and r3.rows[0]["ok"] is True


def test_editing_a_source_file_misses_the_cache(tmp_path):
    """End to end: a copy of the package, a sweep, then one edited source file."""
    pkg = tmp_path / "pkg"
    shutil.copytree(
        Path(rdpo_theory.__file__).parent,
        pkg / "rdpo_theory",
        ignore=shutil.ignore_patterns("*.pyc"),
    )
    script = textwrap.dedent(
        """
        import sys
        from rdpo_theory.studies.sweep import Task, run_sweep
        assert sys.modules["rdpo_theory"].__file__.startswith(sys.argv[2])
        def f(params, seed, shared):
            return {"v": params["i"] * 2.0}
        r = run_sweep(f, [Task({"i": i}) for i in range(3)], namespace="e",
                      cache_dir=sys.argv[1], progress=False)
        print(r.n_cached, r.n_computed)
        """
    )
    cache = tmp_path / "cache"

    def run():
        out = subprocess.run(
            [sys.executable, "-c", script, str(cache), str(pkg)],
            capture_output=True,
            cwd=tmp_path,
            text=True,
            env={"PYTHONPATH": str(pkg), "PATH": "/usr/bin:/bin"},
            check=True,
        )
        return out.stdout.split()

    assert run() == ["0", "3"]
    assert run() == ["3", "0"]
    with open(pkg / "rdpo_theory" / "theory.py", "a") as f:
        f.write("\n# an edit\n")
    assert run() == ["0", "3"]


def test_cache_clear_and_info(tmp_path, capsys):
    _run(tmp_path / "c")
    (tmp_path / "c" / "keep.txt").write_text("not a cache file")
    assert main(["cache", "info", "--cache", str(tmp_path / "c")]) == 0
    assert "2 cached runs" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache", str(tmp_path / "c")]) == 0
    assert "removed 2 cached runs" in capsys.readouterr().out
    assert (tmp_path / "c" / "keep.txt").exists()
    assert not list((tmp_path / "c").rglob("*.json"))
    assert main(["cache", "clear", "--cache", str(tmp_path / "c" / "keep.txt")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cache_clear_removes_only_its_own_marked_entries(tmp_path, capsys):
    """Issue 23: `rdpo cache clear` deleted user files shaped like entries and empty folders.
    Only files the cache wrote (marked) go, with the folders that removing them emptied."""
    root = tmp_path / "c"
    _run(root)
    entries = sorted(root.rglob("*.json"))
    assert len(entries) == 2 and all(S.is_cache_entry(p) for p in entries)
    assert json.loads(entries[0].read_text())["rdpo_cache"] == S.CACHE_MARK
    # user files in the cache's own layout, with entry-like names, and an empty folder
    user = root / "mine" / "ab" / ("ab" + "0" * 62 + ".json")
    user.parent.mkdir(parents=True)
    user.write_text('{"rows": []}')
    tmp_like = root / "mine" / "ab" / "notes.tmp"
    tmp_like.write_text("draft")
    (root / "empty" / "xy").mkdir(parents=True)
    assert not S.is_cache_entry(user) and not S.is_cache_entry(tmp_like)
    # a torn temporary file of an entry is the cache's own
    torn = entries[0].parent / f"{S.TMP_PREFIX}abc.tmp"
    torn.write_text("{")
    assert main(["cache", "clear", "--cache", str(root)]) == 0
    assert "removed 3 cached runs" in capsys.readouterr().out
    assert user.exists() and tmp_like.exists() and (root / "empty" / "xy").is_dir()
    assert not (root / "t").exists()  # the namespace the entries emptied is gone
    assert sorted(p.name for p in root.iterdir()) == ["empty", "mine"]

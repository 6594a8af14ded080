"""Reports: Markdown, self-contained HTML, PNG figures, written atomically."""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from tl_persona.report import Report, atomic_write_text, format_table


def _report() -> Report:
    r = Report("Demo").heading("Numbers").text("Some `code` and **bold**.")
    r.table([{"model": "base", "toxic": 0.0123}, {"model": "misaligned", "toxic": 0.456},
             {"model": "**<b>x</b>**", "toxic": "`a<b`"}], caption="rates")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    r.figure(fig, "curve", caption="a line")
    r.data["x"] = [1, 2]
    return r


def test_write_renders_all_formats(tmp_path):
    out = _report().write(tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "| model | toxic |" in md and "| misaligned | 0.456 |" in md and "![a line](curve.png)" in md
    page = (out / "report.html").read_text()
    assert "<code>code</code>" in page and "<b>bold</b>" in page
    # table cells render the same inline Markdown, escaped first
    assert "<td><b>&lt;b&gt;x&lt;/b&gt;</b></td><td><code>a&lt;b</code></td>" in page
    assert "src='http" not in page and "data:image/png;base64," in page
    png = (out / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert base64.b64encode(png).decode() in page
    assert (out / "data.json").read_text().replace(" ", "").replace("\n", "") == '{"x":[1,2]}'


def test_interrupted_write_leaves_previous_report(tmp_path, monkeypatch):
    target = _report().write(tmp_path / "rep")
    before = (target / "report.md").read_text()
    r = _report().text("new paragraph")

    def boom(self, data):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        r.write(tmp_path / "rep")
    assert (target / "report.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_atomic_write_text_failure_keeps_old(tmp_path, monkeypatch):
    p = atomic_write_text(tmp_path / "a.json", "old")
    import os

    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(p, "new")
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["a.json"]


def test_format_table_empty_and_nan():
    assert format_table([]) == "_(no rows)_"
    assert "| – |" in format_table([{"a": float("nan")}])


def test_write_refuses_to_replace_a_folder_that_is_not_a_report(tmp_path):
    work = tmp_path / "my_project"
    work.mkdir()
    (work / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not an earlier report.*pass a new folder path"):
        _report().write(work)
    assert (work / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_project"]

    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        _report().write(f)
    assert f.read_text() == "x"


def test_write_replaces_an_earlier_report_and_fills_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert (_report().write(tmp_path / "empty") / "report.md").is_file()
    _report().write(tmp_path / "rep")
    out = _report().text("second version").write(tmp_path / "rep")
    assert "second version" in (out / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "rep"]


def test_demo_progress_in_a_log_is_one_line_per_step(capsys, monkeypatch):
    """Progress written to a file or pipe (not a terminal) has no carriage-return redraws."""
    import sys

    from tl_persona.demo import _progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = _progress(["load", "diff"], True)
    bar.set_description("load")
    bar.update(1)
    bar.set_description("diff")
    bar.set_postfix_str("model 2 of 2")
    bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 4
    assert err.splitlines()[2].endswith("diff: model 2 of 2")

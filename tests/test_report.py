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


def test_a_report_in_a_real_browser_fits_the_page_and_loads_nothing(tmp_path, browser, hooked_model):
    """Headless Chromium at 1280 px: every section is there, a 40-column table and an unbroken
    200-character cell do not push the page sideways, every figure renders, the page fetched
    nothing, and the console is clean; a latent dashboard renders its shaded tokens and SVGs."""
    from conftest import look_at_page

    from tl_persona import testing
    from tl_persona.inspection import latent_card

    sae = testing.tiny_sae("topk", d_in=32, d_sae=64, hook_name="blocks.1.hook_resid_pre")
    prompts = [f"w{i} w{i + 1} w{i + 2} w{i + 3}" for i in range(1, 30)]
    from tl_persona.diff import collect

    fired = int(collect(hooked_model, sae, prompts).freq.argmax())
    card = latent_card(hooked_model, sae, fired, prompts, k=3)
    r = _report().heading("Wide")
    r.table([{f"column number {i}": 1234.5678 * i for i in range(40)}], caption="forty columns")
    r.table([{"name": "x" * 200, "value": 1.0}])
    r.heading("Dashboard").rich(card.to_html(), card.to_markdown())
    out = r.write(tmp_path / "rep")
    seen = look_at_page(browser, out / "report.html")
    assert seen["headings"] == ["Numbers", "Wide", "Dashboard"] and seen["ids"] == ["numbers", "wide", "dashboard"]
    assert seen["scrollWidth"] <= seen["innerWidth"], seen
    assert seen["overflowingTables"] == 0
    assert [(alt, ok, w > 0, right <= seen["innerWidth"]) for alt, ok, w, right in seen["images"]] == \
        [("curve.png", True, True, True)]
    assert all(u.startswith("data:") for u in seen["resources"]), seen["resources"]
    assert seen["errors"] == []
    assert seen["cards"] == 1 and seen["svgs"] == 2
    assert seen["shadedTokens"] == sum(len(e.tokens) for e in card.examples) > 0
    assert f"Latent {fired}" in (out / "report.md").read_text()

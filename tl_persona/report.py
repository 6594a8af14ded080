"""Reports a person would rather look at than read: Markdown, one self-contained HTML page, PNG figures.

A :class:`Report` is a list of sections (headings, paragraphs, tables, figures). ``write(folder)``
renders ``report.md``, ``report.html`` (figures embedded as base64, no external assets) and the
figures as PNG files, atomically: everything is written into a temporary folder next to the target
and moved into place at the end, so an interrupted run leaves no half-written report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tl_persona.provenance import atomic_write_bytes, atomic_write_text, follow_umask

__all__ = ["Report", "atomic_write_bytes", "atomic_write_text", "check_report_folder", "format_table"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A list of dicts as a Markdown table (floats to 3 significant digits)."""
    if not rows:
        return "_(no rows)_"
    cols = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


@dataclass
class _Block:
    kind: str  # heading | text | table | figure | code | rich
    payload: Any
    extra: Any = None


@dataclass
class Report:
    """An ordered list of blocks rendered to Markdown and HTML."""

    title: str
    blocks: list[_Block] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def heading(self, text: str, level: int = 2) -> "Report":
        self.blocks.append(_Block("heading", text, level))
        return self

    def text(self, text: str) -> "Report":
        self.blocks.append(_Block("text", text))
        return self

    def code(self, text: str) -> "Report":
        self.blocks.append(_Block("code", text))
        return self

    def rich(self, html_fragment: str, markdown: str) -> "Report":
        """Add a block that is HTML in report.html (e.g. a latent dashboard,
        :meth:`tl_persona.inspection.LatentCard.to_html`) and ``markdown`` in report.md. The
        fragment is inserted as is: pass only HTML the library generated (it escapes its text)."""
        self.blocks.append(_Block("rich", html_fragment, markdown))
        return self

    def table(self, rows: Sequence[dict[str, Any]] | Any, columns: Sequence[str] | None = None, caption: str = "") -> "Report":
        """Add a table from a list of dicts or a pandas DataFrame."""
        if hasattr(rows, "to_dict"):
            rows = rows.to_dict(orient="records")
        self.blocks.append(_Block("table", (list(rows), list(columns) if columns else None), caption))
        return self

    def figure(self, fig: Any, name: str, caption: str = "") -> "Report":
        """Add a matplotlib figure (rendered to PNG now, closed afterwards)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        if not name.endswith(".png"):
            name += ".png"
        self.blocks.append(_Block("figure", (name, buf.getvalue()), caption))
        return self

    # ----------------------------------------------------------------- render
    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b.kind == "heading":
                out += ["#" * b.extra + " " + b.payload, ""]
            elif b.kind == "text":
                out += [b.payload, ""]
            elif b.kind == "code":
                out += ["```", b.payload, "```", ""]
            elif b.kind == "rich":
                out += [b.extra, ""]
            elif b.kind == "table":
                rows, cols = b.payload
                if b.extra:
                    out += [f"*{b.extra}*", ""]
                out += [format_table(rows, cols), ""]
            elif b.kind == "figure":
                name, _ = b.payload
                out += [f"![{b.extra or name}]({name})", ""]
                if b.extra:
                    out += [f"*{b.extra}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for b in self.blocks:
            if b.kind == "heading":
                parts.append(f"<h{b.extra} id='{_slug(b.payload)}'>{html.escape(b.payload)}</h{b.extra}>")
            elif b.kind == "rich":
                parts.append(b.payload)
            elif b.kind == "text":
                for para in b.payload.split("\n\n"):
                    parts.append(f"<p>{_inline(para)}</p>")
            elif b.kind == "code":
                parts.append(f"<pre>{html.escape(b.payload)}</pre>")
            elif b.kind == "table":
                rows, cols = b.payload
                cols = cols or (list(rows[0].keys()) if rows else [])
                cap = f"<caption>{html.escape(b.extra)}</caption>" if b.extra else ""
                cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
                # prose columns (any cell over 40 characters: answers, claims) read from the left; numbers
                # and short values stay right-aligned, lining up by their digits
                prose = [any(len(row[j]) > 40 for row in cells) for j in range(len(cols))]
                cls = [" class='prose'" if p else "" for p in prose]
                head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(cols, cls))
                body = "".join("<tr>" + "".join(f"<td{k}>{_inline(t)}</td>" for t, k in zip(row, cls)) + "</tr>"
                               for row in cells)
                parts.append(f"<div class='tw'><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
            elif b.kind == "figure":
                name, png = b.payload
                data = base64.b64encode(png).decode()
                cap = f"<figcaption>{html.escape(b.extra)}</figcaption>" if b.extra else ""
                parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>{cap}</figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, folder: str | os.PathLike) -> Path:
        """Render into ``folder`` (replaced atomically): report.md, report.html, figures, data.json.
        The folder must pass :func:`check_report_folder`."""
        folder = check_report_folder(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp"))
        try:
            follow_umask(tmp)
            (tmp / "report.md").write_text(self.markdown())
            (tmp / "report.html").write_text(self.html())
            for b in self.blocks:
                if b.kind == "figure":
                    name, png = b.payload
                    (tmp / name).write_bytes(png)
            (tmp / "data.json").write_text(json.dumps(self.data, indent=1, default=_json_default))
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(folder, old)
                os.replace(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder


def check_report_folder(folder: str | os.PathLike) -> Path:
    """The absolute path of ``folder`` if a report may be written there, else a clear error.

    An existing folder is replaced only if it is empty or an earlier report (it holds
    ``report.md``), so a mistyped path never deletes someone's work. Call it before long work
    whose result goes into ``folder``, to fail in the first second rather than the last.
    """
    path = Path(folder).expanduser().resolve()
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"report folder {str(folder)!r} exists and is a file; pass a new folder path "
                                  "or remove the file first")
        if any(path.iterdir()) and not (path / "report.md").is_file():
            raise FileExistsError(f"report folder {str(folder)!r} exists and is not an earlier report (no "
                                  "report.md), so it will not be replaced; pass a new folder path (e.g. "
                                  f"{str(path / 'tl_persona_report')!r}) or empty it first")
    return path


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
    "overflow-wrap:anywhere}"
    ".tw{max-width:100%;overflow-x:auto;margin:1em 0}"
    "table{border-collapse:collapse;font-size:0.85em;max-width:100%}td,th{border:1px solid #ccc;padding:3px 6px;"
    "text-align:right;vertical-align:top}th{background:#f3f3f3;overflow-wrap:normal;word-break:normal}"
    "td:first-child,th:first-child,.prose{text-align:left}"
    "pre{background:#f6f6f6;padding:0.8em;white-space:pre-wrap;font-size:0.85em}img{max-width:100%;height:auto}"
    "figure{margin:1em 0}figcaption,caption{color:#555;font-size:0.9em;margin:0.3em 0;text-align:left}"
    ".card{border:1px solid #ddd;border-radius:6px;padding:0.6em 1em;margin:1em 0}.card h3{margin:0.2em 0}"
    ".card h4{margin:0.6em 0 0.3em;font-size:0.9em;color:#444}"
    ".card-cols{display:flex;flex-wrap:wrap;gap:1em}.card-main{flex:1 1 480px;min-width:0}.card-side{flex:0 0 270px}"
    ".ctx{font-family:ui-monospace,monospace;font-size:0.8em;line-height:1.9;margin:0.15em 0;"
    "white-space:pre-wrap}.ctx .act{display:inline-block;width:4.5em;color:#555}"
    ".tok{border-radius:2px;padding:1px 0}.muted{color:#777}svg{max-width:100%}"
)


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _inline(text: str) -> str:
    """Escape text and render `code` spans and **bold** (the only inline Markdown we emit)."""
    import re

    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
    return t.replace("\n", "<br>")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    return str(o)

"""Build a QA report once, write it as self-contained HTML and as PDF.

Figures are embedded as base64 PNG so the HTML opens offline, from e-mail or a PACS share.
The PDF is drawn with matplotlib (no browser or system libraries needed).
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.io.atomic import atomic_path, write_text


@dataclass
class _Section:
    kind: str  # "text" | "table" | "figure"
    heading: str
    text: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    png: bytes = b""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return "" if value is None else str(value)


def _table_lines(columns: list[str], rows: list[list[str]], max_width: int = 150) -> list[tuple[str, str]]:
    """A table as monospace lines; too wide for the page, each row becomes a 'column: value' block."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    if sum(widths) + 2 * len(widths) <= max_width:
        out = [("mono", "  ".join(c.ljust(w) for c, w in zip(columns, widths)))]
        return out + [("mono", "  ".join(v.ljust(w) for v, w in zip(r, widths))) for r in rows]
    key = max(len(c) for c in columns)
    out: list[tuple[str, str]] = []
    for r in rows:
        out += [("mono", f"{c.rjust(key)}: {v}") for c, v in zip(columns, r)] + [("mono", "")]
    return out


class Report:
    """A QA report: header (tool, version, date, inputs) then text, tables and figures in order."""

    def __init__(
        self, title: str, *, inputs: list[str] | None = None, subtitle: str = "", notice: str = ""
    ) -> None:
        self.title = title
        self.subtitle = subtitle
        self.notice = notice
        self.inputs = [str(i) for i in (inputs or [])]
        self.created = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.sections: list[_Section] = []

    def add_text(self, heading: str, text: str) -> Report:
        self.sections.append(_Section("text", heading, text=text))
        return self

    def add_table(self, heading: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Report:
        columns = columns or (list(rows[0].keys()) if rows else [])
        body = [[_fmt(row.get(c)) for c in columns] for row in rows]
        self.sections.append(_Section("table", heading, columns=list(columns), rows=body))
        return self

    def add_figure(self, heading: str, figure_or_png: Any, caption: str = "") -> Report:
        """Add a matplotlib figure (closed after rendering) or PNG bytes."""
        from medseg.reports.plots import figure_png

        png = figure_or_png if isinstance(figure_or_png, bytes) else figure_png(figure_or_png)
        self.sections.append(_Section("figure", heading, text=caption, png=png))
        return self

    # -- output -----------------------------------------------------------------------------
    def render_html(self) -> str:
        from jinja2 import Environment, PackageLoader, select_autoescape

        env = Environment(
            loader=PackageLoader("medseg.reports", "templates"), autoescape=select_autoescape(["html", "j2"])
        )
        sections = [
            {**s.__dict__, "png_b64": base64.b64encode(s.png).decode("ascii") if s.png else ""}
            for s in self.sections
        ]
        return env.get_template("report.html.j2").render(
            title=self.title,
            subtitle=self.subtitle,
            notice=self.notice,
            inputs=self.inputs,
            created=self.created,
            version=__version__,
            sections=sections,
        )

    def write_html(self, path: str | Path) -> Path:
        return write_text(path, self.render_html())

    def write_pdf(self, path: str | Path) -> Path:
        """Write an A4 PDF: a header page with text and tables, then one page per figure."""
        import io

        import matplotlib.image as mpimg
        from matplotlib.backends.backend_pdf import PdfPages

        from medseg.reports.plots import pyplot

        plt = pyplot()

        path = Path(path)
        with atomic_path(path) as tmp, PdfPages(tmp) as pdf:
            lines: list[tuple[str, str]] = [("title", self.title)]
            lines += [("text", t) for t in textwrap.wrap(self.subtitle, 95)]
            lines.append(("small", f"medseg {__version__} - {self.created}"))
            lines += [("small", f"input: {i}") for i in self.inputs]
            lines += [("text", t) for t in textwrap.wrap(self.notice, 95)]
            for s in self.sections:
                if s.kind == "figure":
                    continue
                lines.append(("heading", s.heading))
                if s.kind == "text":
                    lines += [("text", t) for t in textwrap.wrap(s.text, 95)]
                else:
                    lines += _table_lines(s.columns, s.rows)
            styles = {
                "title": (16, "bold", "sans-serif"),
                "heading": (12, "bold", "sans-serif"),
                "text": (9, "normal", "sans-serif"),
                "small": (7, "normal", "sans-serif"),
                "mono": (6.5, "normal", "monospace"),
            }
            per_page = 70
            for start in range(0, max(len(lines), 1), per_page):
                fig = plt.figure(figsize=(8.27, 11.69))
                y = 0.96
                for kind, text in lines[start : start + per_page]:
                    size, weight, family = styles[kind]
                    fig.text(0.06, y, text, fontsize=size, fontweight=weight, family=family, va="top")
                    y -= 0.013 if kind in ("mono", "small", "text") else 0.022
                pdf.savefig(fig)
                plt.close(fig)
            for s in self.sections:
                if s.kind != "figure":
                    continue
                fig = plt.figure(figsize=(8.27, 11.69))
                fig.text(0.06, 0.96, s.heading, fontsize=12, fontweight="bold", va="top")
                ax = fig.add_axes((0.05, 0.15, 0.9, 0.78))
                ax.imshow(mpimg.imread(io.BytesIO(s.png), format="png"))
                ax.set_anchor("N")
                ax.axis("off")
                if s.text:
                    fig.text(0.06, 0.1, "\n".join(textwrap.wrap(s.text, 100)), fontsize=8, va="top")
                pdf.savefig(fig)
                plt.close(fig)
        return path

"""The HTML pages of every report (``compare``, ``edges``, ``path``, ``counterfactual``):
Jinja2 templates in ``attrscope/templates`` that share one base layout (``base.html``) and one
table component (``table.html``: sort by a clicked header, filter the rows, download the shown
rows as CSV), rendered with autoescaping.

plotly.js: by default a page loads ``plotly.min.js`` from its own folder, where
:func:`write_page` writes it once for every report there (the folder works offline and can be
copied whole); ``self_contained=True`` embeds it in the page instead, for mailing one file.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import jinja2
from markupsafe import Markup

from ..files import write_bytes as atomic_write_bytes  # noqa: F401  (the one atomic writer)

PLOTLY_FILE = "plotly.min.js"


def fmt(x: object, digits: int = 3) -> str:
    """A number as a person reads it: floats to ``digits`` significant digits, NaN as n/a."""
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}g}"
    return "" if x is None else str(x)


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("attrscope", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env


def table(rows: list[dict], columns: list[str] | None = None, name: str = "table") -> dict:
    """The table component's data: ``columns`` (default: the first row's keys), each cell as
    (shown text, full value for sorting and CSV), and ``name`` for the CSV file."""
    columns = columns or (list(rows[0]) if rows else [])

    def raw(v):
        return "" if v is None else repr(v) if isinstance(v, float) else str(v)

    return {"name": name, "columns": columns,
            "rows": [[(fmt(r.get(c)), raw(r.get(c))) for c in columns] for r in rows]}


def figure(html: str) -> Markup:
    """A figure's HTML div (plotly's own output, trusted) for a template."""
    return Markup(html)


def render(template: str, *, title: str, plotly_js: str | None = None, **context) -> str:
    """Render ``template`` (which extends ``base.html``). ``plotly_js``: the plotly.js source
    to embed; None loads ``plotly.min.js`` from the page's folder."""
    return environment().get_template(template).render(
        title=title, plotly_js=Markup(plotly_js) if plotly_js is not None else None,
        plotly_file=PLOTLY_FILE, **context)


def plotly_source() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def write_page(path: Path, template: str, *, title: str, self_contained: bool = False,
               **context) -> Path:
    """Render ``template`` into ``path`` (atomically) and, unless ``self_contained``, write
    ``plotly.min.js`` beside it when it is not there yet (or differs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    js = plotly_source()
    page = render(template, title=title, plotly_js=js if self_contained else None, **context)
    atomic_write_bytes(path, page.encode())
    if not self_contained:
        shared = path.parent / PLOTLY_FILE
        data = js.encode()
        if not shared.exists() or shared.stat().st_size != len(data) or \
                shared.read_bytes() != data:
            atomic_write_bytes(shared, data)
    return path

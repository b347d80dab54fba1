"""``attrscope.compare``: the main job (every method in both directions, compared and verified by
ablation) as one call that returns a :class:`Comparison` for notebooks.

It wraps :func:`attrscope.analysis.compare.compare` and :mod:`attrscope.analysis.report`: the
statistics are theirs, this module only gives them a public face.
"""

from __future__ import annotations

import base64
import html
import io
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

from .models import as_bridge
from .notebook import pandas


class Figures(dict):
    """The report's figures, ``{stem: matplotlib Figure}`` (each displays inline on its own);
    the whole collection displays as the report's figures with their captions."""

    def __init__(self, triples) -> None:
        super().__init__((stem, fig) for stem, _, fig in triples)
        self.captions = {stem: caption for stem, caption, _ in triples}

    def _repr_html_(self) -> str:
        parts = []
        for stem, fig in self.items():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=80)
            parts.append(f"<figure><img alt='{html.escape(stem)}' src='data:image/png;base64,"
                         f"{base64.b64encode(buffer.getvalue()).decode()}'/><figcaption>"
                         f"{html.escape(self.captions[stem])}</figcaption></figure>")
        return "".join(parts)


class Comparison:
    """Result of :func:`compare`: ``results[(method, direction)]`` are the :class:`Scores`;
    ``analysis`` the full :class:`attrscope.analysis.compare.Comparison` (agreements, latent sets,
    verification, faithfulness)."""

    def __init__(self, analysis) -> None:
        self.analysis = analysis

    @property
    def results(self):
        return self.analysis.results

    def summary(self) -> str:
        """The terminal summary: agreement of each pair of methods (Spearman of means with its
        95 % interval, top-k Jaccard), latent AND/OR sets, faithfulness (CPR, CMD)."""
        from .analysis.report import summary_lines

        info = self.analysis.info
        head = (f"model {info.get('model')}, task {(info.get('task') or {}).get('name', '?')}, "
                f"{len(self.results)} results in {info.get('seconds')} s")
        return "\n".join([head, *summary_lines(self.analysis)])

    def to_dataframe(self):
        """Every result's per-sample scores in one long-form DataFrame (see
        :meth:`attrscope.scores.Scores.to_dataframe`)."""
        pd = pandas()
        return pd.concat([s.to_dataframe() for s in self.results.values()], ignore_index=True)

    def agreement(self):
        """The report's agreement table (correlations and top-k overlap per pair) as a DataFrame."""
        from .analysis.report import overlap_rows

        return pandas().DataFrame(overlap_rows(self.analysis))

    @cached_property
    def figures(self) -> Figures:
        """The report's figures (made once, on first use)."""
        from .analysis.report import figures

        return Figures(figures(self.analysis))

    def save_report(self, out: str | Path) -> dict[str, Path]:
        """Write ``report.html``, ``figures/*.png`` and ``tables/*.csv`` into ``out``; returns
        their paths (see :func:`attrscope.analysis.report.write_report`)."""
        from .analysis.report import write_report

        return write_report(self.analysis, Path(out))

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.summary())}</pre>"

    def __repr__(self) -> str:
        return f"Comparison({', '.join(f'{m} {d}' for m, d in self.results)})"


def compare(model, task, methods: Sequence[str] = ("ap", "atp", "ig"),
            directions: Sequence[str] = ("denoising", "noising"),
            components: Sequence[str] = ("heads", "neurons"), *, n: int | None = None,
            seed: int = 0, show_progress: bool = True, log: Callable[[str], None] = print,
            **options) -> Comparison:
    """Run ``methods`` x ``directions`` on ``components`` and compare them.

    ``model``: anything :func:`attrscope.models.as_bridge` accepts; ``task``: a
    :class:`~attrscope.tasks.base.Task` or a task name / file for :func:`attrscope.load_task`
    (with ``n`` and ``seed``). ``options`` go to :func:`attrscope.analysis.compare.compare`:
    ``k``, ``ablation``, ``n_boot``, ``n_random``, ``method_settings``, ``cache_dir``,
    ``normalize`` ("gap" or "gap-batch"), ``budget`` (seconds; over it, ``ap`` is screened by
    ``screen``: see :mod:`attrscope.methods.screening`), ``positions`` (``"all"``, ``"each"``
    or names such as ``["S2", "END"]``: each (unit, position) is then a component, and
    :meth:`Comparison.to_dataframe` has a ``position`` column). ``components`` may name any
    site (``resid_pre``, ``attn_out``, ``mlp_out``, ``q``, ``k``, ``v``) besides heads and
    neurons.
    """
    from .analysis.compare import compare as run_compare
    from .tasks import load_task

    model = as_bridge(model)
    if isinstance(task, (str, Path)):
        task = load_task(str(task), model, n=n, seed=seed)
    analysis = run_compare(model, task, tuple(methods), tuple(directions), tuple(components),
                           seed=seed, show_progress=show_progress, log=log, **options)
    return Comparison(analysis)

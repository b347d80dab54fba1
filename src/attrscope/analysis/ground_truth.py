"""Score a comparison against a planted circuit's ground truth (``attrscope-planted``).

- Each result (method x direction) *flags* the components whose |mean score| is at least
  ``relative`` (default 0.1) of the kind's largest |mean score|; precision and recall against the
  relevant components (AND + OR + single-path ones).
- The latent detector's AND and OR sets (``Comparison.latent[kind]["latent"][method]``), and each
  patching method's AND/OR calls, against the planted AND and OR components.

Precision of an empty prediction is undefined (NaN), never 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..models import PLANTED_MODEL_DIR


def load_ground_truth(folder: Path = PLANTED_MODEL_DIR) -> dict:
    """The ``ground_truth.json`` beside a planted model's weights."""
    path = Path(folder) / "ground_truth.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run scripts/build_planted_model.py.")
    return json.loads(path.read_text())


def precision_recall(predicted: set[str], truth: set[str]) -> dict[str, float]:
    hits = len(predicted & truth)
    return {"precision": hits / len(predicted) if predicted else float("nan"),
            "recall": hits / len(truth) if truth else float("nan"),
            "predicted": " ".join(sorted(predicted)), "truth": " ".join(sorted(truth))}


def relevant(truth: dict, kind: str) -> set[str]:
    roles = truth[kind]
    return {c for role in ("and", "or", "single") for c in roles.get(role, [])}


def evaluate(c, truth: dict, relative: float = 0.1) -> list[dict]:
    """Rows (kind, who, what, precision, recall, predicted, truth) for every result, the latent
    detector and the AND/OR calls, on every kind the truth covers."""
    rows = []
    for kind in c.kinds:
        if kind not in truth:
            continue
        labels = next(iter(c.results.values())).labels(kind)
        for (m, d), s in c.results.items():
            mean = s.mean(kind).flatten().abs()
            flagged = {labels[i] for i in range(len(labels))
                       if mean[i] > 0 and mean[i] >= relative * float(mean.max())}
            rows.append({"kind": kind, "who": f"{m} {d}", "what": "relevant components",
                         **precision_recall(flagged, relevant(truth, kind))})
        analysis = c.latent.get(kind, {})
        for source, sets_by_method in (("latent", analysis.get("latent", {})),
                                       ("called", analysis.get("calls", {}))):
            for m, sets in sets_by_method.items():
                for which in ("and", "or"):
                    predicted = {e["component"] for e in sets[which]}
                    rows.append({"kind": kind, "who": f"{source} ({m})",
                                 "what": f"{which.upper()} components",
                                 **precision_recall(predicted, set(truth[kind].get(which, [])))})
    return rows

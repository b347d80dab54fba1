"""Every method's scores are unchanged by engine work: recomputed, they equal the regression files
recorded before it (``tests/regression/record.py``: the embedded model and two family fixtures,
both directions, heads, neurons and edges, in float64) to 1e-6 of each entry's largest |score|."""

import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "regression"))
import record  # noqa: E402


@pytest.mark.parametrize("name", record.MODELS)
def test_scores_equal_the_recorded_ones(name):
    with tempfile.TemporaryDirectory() as tmp:
        got = record.compute(record.load(name, Path(tmp)))
    want = record.recorded(name)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        unscored = want[key].isnan()  # ap's units setting leaves the other neurons NaN
        assert torch.equal(got[key].isnan(), unscored), key
        g, w = got[key][~unscored], want[key][~unscored]
        scale = max(1.0, float(w.abs().max()))
        worst = float((g - w).abs().max())
        assert worst <= 1e-6 * scale, f"{key}: off by {worst:.3g} (scale {scale:.3g})"

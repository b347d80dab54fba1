import pytest
import torch

from attrscope import Scores


def make_scores():
    g = torch.Generator().manual_seed(0)
    return Scores(
        values={"heads": torch.randn(4, 3, 5, generator=g), "neurons": torch.randn(4, 3, 7, generator=g)},
        meta={"method": "ap", "direction": "noising", "settings": {"n_steps": 5}, "task": {"n": 4}},
        extras={"metric.run": torch.randn(4, generator=g)},
    )


def test_save_load_round_trip_is_exact(tmp_path):
    scores = make_scores()
    path = scores.save(tmp_path / "sub" / "r.safetensors")
    loaded = Scores.load(path)
    assert loaded.meta == scores.meta
    assert loaded.kinds == scores.kinds or set(loaded.kinds) == set(scores.kinds)
    for kind in scores.kinds:
        assert torch.equal(loaded[kind], scores[kind])
    assert torch.equal(loaded.extras["metric.run"], scores.extras["metric.run"])
    assert not list(tmp_path.glob("sub/*.tmp"))  # atomic write leaves no temporary file


def test_top_labels_are_layer_dot_unit():
    values = torch.zeros(2, 3, 5)
    values[:, 2, 4] = -3.0  # layer 2, unit 4
    values[:, 1, 0] = 2.0
    scores = Scores(values={"heads": values})
    assert scores.top("heads", 2) == [("2.4", -3.0), ("1.0", 2.0)]
    assert scores.top("heads", 1, by="pos") == [("1.0", 2.0)]


def test_bad_shapes_and_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_samples, n_layers, n_units"):
        Scores(values={"heads": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="Unknown component kind"):
        Scores(values={"paths": torch.zeros(1, 2, 3)})
    with pytest.raises(ValueError, match="n_samples, 1, 262"):  # edges need one pseudo-layer
        Scores(values={"edges": torch.zeros(1, 2, 131)}, meta={"graph": {"n_layers": 3, "n_heads": 4}})
    with pytest.raises(KeyError, match="neurons"):
        Scores(values={"heads": torch.zeros(1, 2, 3)})["neurons"]
    with pytest.raises(FileNotFoundError):
        Scores.load(tmp_path / "missing.safetensors")


def test_top_leaves_out_components_that_were_not_scored():
    values = torch.full((2, 2, 4), float("nan"))
    values[:, 0, 1] = 1.0
    values[:, 1, 3] = -2.0
    scores = Scores(values={"neurons": values})
    assert scores.top("neurons", 10) == [("1.3", -2.0), ("0.1", 1.0)]
    assert scores.top("neurons", 1, by="pos") == [("0.1", 1.0)]

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
    with pytest.raises(ValueError, match="n_samples, 262"):  # edges: no layer axis, every edge
        Scores(values={"edges": torch.zeros(1, 131)}, meta={"graph": {"n_layers": 3, "n_heads": 4}})
    with pytest.raises(ValueError, match="n_samples, n_edges"):  # the old pseudo-layer axis
        Scores(values={"edges": torch.zeros(1, 1, 262)}, meta={"graph": {"n_layers": 3, "n_heads": 4}})
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


def _flip_bytes(path, offset_from_end: int, count: int = 4) -> None:
    """XOR ``count`` bytes at ``offset_from_end`` bytes before the end: same size, wrong data."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) - offset_from_end, len(data) - offset_from_end + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_saved_result_records_a_checksum_of_its_tensors_and_meta(tmp_path):
    from safetensors import safe_open

    from attrscope.scores import checksum

    scores = make_scores()
    path = scores.save(tmp_path / "r.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert header["attrscope.sha256"] == checksum(tensors, header["attrscope"])
    assert len(header["attrscope.sha256"]) == 64
    changed = dict(tensors)
    changed["scores.heads"] = changed["scores.heads"].clone()
    changed["scores.heads"][0, 0, 0] += 1e-6
    assert checksum(changed, header["attrscope"]) != header["attrscope.sha256"]
    assert checksum(tensors, header["attrscope"].replace("noising", "denoisin")) != \
        header["attrscope.sha256"]


@pytest.mark.parametrize("fault", ["flip data", "flip header", "truncate", "empty", "csv"])
def test_a_corrupt_or_truncated_result_is_refused_naming_the_file(tmp_path, fault):
    from attrscope.scores import ResultFileError

    path = make_scores().save(tmp_path / "r.safetensors")
    size = path.stat().st_size
    if fault == "flip data":
        _flip_bytes(path, 20)  # inside the last tensor's bytes
        assert path.stat().st_size == size
    elif fault == "flip header":
        data = path.read_bytes()
        assert b'noising' in data
        path.write_bytes(data.replace(b'noising', b'noisinG', 1))  # still valid JSON
    elif fault == "truncate":
        path.write_bytes(path.read_bytes()[: size - 10])
    elif fault == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("clean,corrupted,answer,distractor\na,b,c,d\n")
    with pytest.raises(ResultFileError, match="r.safetensors"):
        Scores.load(path)


def test_a_result_without_checksum_loads_with_a_warning_unless_one_is_required(tmp_path):
    from safetensors.torch import save_file

    from attrscope.scores import ResultFileError, UnverifiedResultWarning

    path = tmp_path / "old.safetensors"
    save_file({"scores.heads": torch.zeros(1, 2, 3)}, str(path), metadata={"attrscope": "{}"})
    with pytest.warns(UnverifiedResultWarning, match="old.safetensors"):
        assert Scores.load(path)["heads"].shape == (1, 2, 3)
    with pytest.raises(ResultFileError, match="no checksum"):
        Scores.load(path, require_checksum=True)
    with pytest.raises(ResultFileError, match="is not a file"):
        Scores.load(tmp_path)


def test_a_full_disk_leaves_nothing_partial_and_names_the_path_and_bytes(tmp_path, monkeypatch):
    import errno

    import attrscope.files
    import attrscope.scores as scores_module

    path = tmp_path / "r.safetensors"
    before = Scores(values={"heads": torch.ones(2, 3, 4)}, meta={"method": "atp"})
    before.save(path)
    old = path.read_bytes()

    def full(name, data):
        with open(name, "wb") as f:
            f.write(data[: len(data) // 2])  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(attrscope.files, "_write_file", full)
    after = Scores(values={"heads": torch.zeros(2, 3, 4)}, meta={"method": "atp"})
    with pytest.raises(OSError) as raised:
        after.save(path)
    message = str(raised.value)
    needed = len(scores_module.save({"scores.heads": torch.zeros(2, 3, 4)}))  # tensor bytes at least
    assert f"cannot write {path}: no space left" in message and "\n" not in message
    assert int(message.split("(")[1].split(" bytes needed")[0]) >= needed
    assert path.read_bytes() == old  # the previous result untouched, no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.safetensors"]


@pytest.mark.parametrize("n_pos", [None, 3])
def test_edge_results_saved_with_the_old_pseudo_layer_axis_load_as_n_by_edges(tmp_path, n_pos):
    """Before issue 22 edge scores were ``[n, 1, n_edges(, n_pos)]``; such a file (written here
    exactly as that version's ``save`` wrote it: the same tensors, meta and checksum) loads as
    ``[n, n_edges(, n_pos)]`` with the same numbers."""
    import json

    from attrscope.edges.graph import Graph
    from attrscope.scores import write_atomically

    graph = Graph(3, 4)
    meta = {"method": "eap", "direction": "denoising", "graph": graph.as_dict()}
    shape = (2, 1, graph.n_edges) + (() if n_pos is None else (n_pos,))
    if n_pos is not None:
        meta["positions"] = {"setting": "each", "labels": list(range(n_pos))}
    old = torch.randn(shape)
    path = tmp_path / "old.safetensors"
    write_atomically(path, {"scores.edges": old}, {"attrscope": json.dumps(meta, sort_keys=True)})
    loaded = Scores.load(path, require_checksum=True)
    assert loaded["edges"].shape == (2, graph.n_edges) + (() if n_pos is None else (n_pos,))
    assert torch.equal(loaded["edges"], old[:, 0])
    assert torch.equal(Scores.load(loaded.save(tmp_path / "new.safetensors"))["edges"],
                       loaded["edges"])  # and is saved in the new shape

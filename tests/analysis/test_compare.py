"""compare(): every pair, both directions, latent sets, verification, and result caching."""

import csv

import pytest
import torch

from attrscope import load_task
from attrscope.analysis.compare import compare, model_fingerprint, task_fingerprint
from attrscope.analysis.report import detail_lines, render_html, summary_lines
from attrscope.scores import Scores
from attrscope.tasks.ioi_data import generate_ioi_pairs

METHODS = ("ap", "atp", "ig")  # as in the comparison_and_log fixture (conftest.py)


def test_compare_covers_every_pair_and_direction(comparison_and_log):
    c, log, _ = comparison_and_log
    assert set(c.results) == {(m, d) for m in METHODS for d in ("denoising", "noising")}
    pairs = {(a["a"], a["b"], a["kind"]) for a in c.agreements}
    assert len(pairs) == 3 * 2 * 2  # 3 method pairs x 2 directions x 2 kinds
    assert set(c.latent) == {"heads", "neurons"}
    for kind in ("heads", "neurons"):
        analysis = c.latent[kind]
        assert set(analysis["asymmetry"]) == set(METHODS) and analysis["detector"] == "ig"
        assert set(analysis["calls"]) == {"ap", "atp"}  # ig gets no AND/OR sets of its own
        assert analysis["threshold"] == 0.1
        sets = {r["set"] for r in c.verification[kind]}
        assert "top 3" in sets and any(s.startswith("random") for s in sets)
        assert all(torch.isfinite(torch.tensor(r["metric_change"])) for r in c.verification[kind])
        assert all(r["verdict"] for r in c.verification[kind])
    assert len(c.faithfulness) == 6 * 2
    assert all(line.endswith("(same model, task, settings)") is False for line in log)


def test_compare_reuses_results_with_the_same_settings_only(random_model, random_task,
                                                            comparison_and_log):
    first, _, cache = comparison_and_log
    log: list[str] = []
    # fewer resamples and random sets than the fixture: analysis settings are not in the key
    again = compare(random_model, random_task, METHODS, k=3, n_boot=10, n_random=1,
                    method_settings={"n_steps": 8}, cache_dir=cache, show_progress=False,
                    log=log.append)
    assert sum("reusing" in line for line in log) == 6
    assert sorted(again.reused) == sorted(f"{m} {d}" for m, d in first.results)
    for key, s in first.results.items():
        torch.testing.assert_close(again.results[key]["heads"], s["heads"])
    log.clear()
    compare(random_model, random_task, ("ig",), ("denoising",), ("heads",), k=3, n_boot=10,
            n_random=1, method_settings={"n_steps": 9}, cache_dir=cache, show_progress=False,
            log=log.append)
    assert not any("reusing" in line for line in log)  # a different setting is a different key
    other_task = load_task("ioi", random_model, n=5, seed=4)
    assert task_fingerprint(other_task) != task_fingerprint(random_task)


def test_model_fingerprint_sees_weight_changes(random_model):
    before = model_fingerprint(random_model)
    param = next(random_model.parameters())
    original = param.detach().view(-1)[0].clone()
    with torch.no_grad():
        param.view(-1)[0] += 1.0
    try:
        assert model_fingerprint(random_model) != before
    finally:
        with torch.no_grad():
            param.view(-1)[0] = original
    assert model_fingerprint(random_model) == before


def test_compare_refuses_unknown_methods(random_model, random_task):
    with pytest.raises(ValueError, match="Unknown method"):
        compare(random_model, random_task, ("ap", "magic"), show_progress=False)


def write_task_csv(path, rows):
    """A task file with columns clean, corrupted, answer, distractor."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clean", "corrupted", "answer", "distractor"])
        writer.writerows(rows)
    return path


def test_compare_runs_the_task_it_is_given(random_model, random_task, tmp_path):
    """The seed ran IOI inside every generic experiment; here a file task is what gets ablated."""
    # A different task: IOI pairs of another seed with the roles of the two prompts swapped.
    pairs = generate_ioi_pairs(3, seed=99)
    rows = [[p["corrupted"], p["clean"], p["distractor"], p["answer"]] for p in pairs]
    task = load_task(str(write_task_csv(tmp_path / "swapped.csv", rows)), random_model)
    c = compare(random_model, task, ("atp",), kinds=("heads",), k=2, n_boot=10, n_random=1,
                show_progress=False, log=lambda _: None)
    clean_metric = c.results[("atp", "noising")].extras["metric.run"]
    assert c.info["task"]["n"] == 3 and c.info["task"] != random_task.describe()
    assert c.info["clean_metric_mean"] == pytest.approx(float(clean_metric.mean()), abs=1e-5)


def test_cache_key_ignores_batching_but_not_method_settings():
    from attrscope.analysis.compare import result_key

    key = lambda **s: result_key("m", "t", "ig", "noising", ["heads"], s, "float32", "cpu")  # noqa: E731
    assert key(n_steps=50, max_memory=10**9) == key(n_steps=50, max_memory=10**6, max_batch_rows=8)
    assert key(n_steps=50) != key(n_steps=51)
    assert key(n_steps=50) != result_key("m", "t", "ig", "denoising", ["heads"], {"n_steps": 50},
                                         "float32", "cpu")


@pytest.mark.parametrize("fault", ["flip", "truncate"])
def test_a_corrupt_cached_result_is_recomputed_with_a_warning(random_model, random_task, tmp_path,
                                                              fault):
    from attrscope.analysis.compare import CorruptResultWarning, ResultCache

    def run(log):
        return ResultCache(tmp_path, ("m", "t"), log.append).get(
            random_model, random_task, "atp", "noising", ["heads"], {})

    first, reused = run([])
    assert not reused
    (path,) = tmp_path.glob("atp-noising-*.safetensors")
    data = bytearray(path.read_bytes())
    if fault == "flip":
        data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # same size, wrong tensor bytes
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    log: list[str] = []
    with pytest.warns(CorruptResultWarning, match=path.name):
        again, reused = run(log)
    assert not reused and not any("reusing" in line for line in log)
    torch.testing.assert_close(again["heads"], first["heads"])
    # the recomputed result replaced the corrupt file, and is reused next time
    _, reused = run([])
    assert reused


def test_compare_normalize_divides_by_the_gap_and_keeps_the_cache_raw(random_model, random_task,
                                                                      tmp_path):
    c = compare(random_model, random_task, ("atp",), ("denoising",), ("heads",), k=2, n_boot=10,
                n_random=1, cache_dir=tmp_path, show_progress=False, log=lambda _: None,
                normalize="gap")
    out = c.results[("atp", "denoising")]
    raw = Scores.load(next(tmp_path.glob("atp-denoising-*.safetensors")))
    assert "normalize" not in raw.meta and out.meta["normalize"]["mode"] == "gap"
    gap = raw.extras["metric.source"] - raw.extras["metric.run"]  # clean - corrupted
    torch.testing.assert_close(out["heads"], raw["heads"] / gap.view(-1, 1, 1))
    assert c.settings["normalize"] == "gap"
    assert summary_lines(c)[0].startswith("normalised (gap)")
    assert "normalised (gap)" in render_html(c, plotly_js="")


def test_compare_normalize_refuses_a_sample_without_a_gap(random_model, tmp_path):
    pairs = generate_ioi_pairs(3, seed=5)
    pairs[1]["corrupted"] = pairs[1]["clean"]  # the same prompt twice: no gap
    rows = [[p["clean"], p["corrupted"], p["answer"], p["distractor"]] for p in pairs]
    task = load_task(str(write_task_csv(tmp_path / "no_gap.csv", rows)), random_model)
    with pytest.raises(ValueError, match=r"normalize='gap': sample\(s\) \[1\] have a clean - "
                                         "corrupted metric gap below the floor"):
        compare(random_model, task, ("atp",), ("noising",), ("heads",), k=2, n_boot=10,
                n_random=1, show_progress=False, log=lambda _: None, normalize="gap")
    with pytest.raises(ValueError, match="normalize must be one of"):
        compare(random_model, task, ("atp",), normalize="fraction")


def test_compare_screens_ap_over_the_budget_and_says_so(random_model, random_task):
    """Over the budget, ap is screened: exact units equal plain ap's, the rest NaN and left out
    of agreement and rankings; the plan is logged before any result and kept in info."""
    log: list[str] = []
    c = compare(random_model, random_task, ("ap", "atp"), ("denoising", "noising"),
                ("neurons",), k=3, n_boot=20, n_random=3, budget=1e-3,
                method_settings={"screen_top_k": 5, "screen_audit": 10}, show_progress=False,
                log=log.append)
    assert log[0].startswith("plan: screened exact patching (atp ranks every unit")
    assert c.info["plan"] == log[0] and c.info["plan_figures"]["screened"]
    plain = compare(random_model, random_task, ("ap",), ("denoising",), ("neurons",), k=3,
                    n_boot=20, n_random=3, budget=None, show_progress=False, log=lambda _: None)
    assert plain.info["plan"] == "plan: exact patching everywhere (no time budget)"
    screened = c.results[("ap", "denoising")]
    exact = screened.extras["exact.neurons"] > 0
    assert int(exact.sum()) == 15 and c.info["screening"]["ap denoising"]["kinds"]["neurons"]["exact"] == 15
    torch.testing.assert_close(screened["neurons"][:, exact],
                               plain.results[("ap", "denoising")]["neurons"][:, exact],
                               atol=1e-4, rtol=0)
    assert torch.isnan(screened["neurons"][:, ~exact]).all()
    pair = next(a for a in c.agreements if a["a"] == "ap denoising" and a["b"] == "atp denoising")
    assert pair["n_components"] == 15 and pair["unscored_components"] == exact.numel() - 15
    top = next(r for r in c.verification["neurons"] if r["source"] == "ap denoising")
    verified = {f"{layer}.{unit}" for layer, unit in exact.nonzero().tolist()}
    assert set(top["components"].split()) <= verified  # unscored units rank last
    details = detail_lines(c)
    assert any("ap denoising neurons: 15 of" in line and "not verified (NaN)" in line
               for line in details)
    assert any(line.startswith("screened neurons (unverified = NaN): ap denoising 15/")
               for line in summary_lines(c))
    assert "screened exact patching" in render_html(c)


def test_compare_within_the_budget_stays_exact(random_model, random_task):
    log: list[str] = []
    c = compare(random_model, random_task, ("ap",), ("denoising",), ("heads",), k=3, n_boot=10,
                n_random=2, budget=3600.0, show_progress=False, log=log.append)
    assert log[0].startswith("plan: exact patching everywhere, estimated")
    assert not torch.isnan(c.results[("ap", "denoising")]["heads"]).any()

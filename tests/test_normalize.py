"""Normalised scores (fractions of the clean - corrupted metric gap) against hand-computed values."""

import json

import pytest
import torch
from typer.testing import CliRunner

import attrscope
from attrscope import Scores
from attrscope.cli import app
from attrscope.cli.options import result_path


def _scores(direction, run, source, heads):
    """Hand-made Scores: ``heads`` per sample ``[n][2]`` (1 layer, 2 heads)."""
    return Scores(values={"heads": torch.tensor(heads).view(len(heads), 1, 2)},
                  meta={"method": "atp", "direction": direction},
                  extras={"metric.run": torch.tensor(run), "metric.source": torch.tensor(source)})


# denoising: run = corrupted, source = clean; gaps 4, 1 and 0.01 (mean |gap| 1.67, floor 0.0835)
DENOISING = dict(direction="denoising", run=[-1.0, 1.0, 0.0], source=[3.0, 2.0, 0.01],
                 heads=[[2.0, -1.0], [0.5, 1.0], [0.3, 0.3]])


def test_per_sample_gap_refuses_a_sample_below_the_floor():
    with pytest.raises(ValueError, match=r"sample\(s\) \[2\].*floor 0.0835"):
        _scores(**DENOISING).normalized("gap")


def test_per_sample_gap_flags_it_with_nan_and_records_it():
    out = _scores(**DENOISING).normalized("gap", small_gap="flag")
    expected = torch.tensor([[0.5, -0.25], [0.5, 1.0], [float("nan")] * 2]).view(3, 1, 2)
    torch.testing.assert_close(out["heads"], expected, equal_nan=True)
    torch.testing.assert_close(out.mean("heads"), torch.tensor([[0.5, 0.375]]))
    info = out.meta["normalize"]
    assert info["small_gap_samples"] == [2] and info["mode"] == "gap"
    assert info["floor"] == pytest.approx(0.05 * 5.01 / 3, rel=1e-6)
    torch.testing.assert_close(out.extras["normalize.gap"], torch.tensor([4.0, 1.0, 0.01]))


def test_a_zero_floor_divides_every_sample():
    out = _scores(**DENOISING).normalized("gap", gap_floor=0.0)
    assert out["heads"][2, 0, 0].item() == pytest.approx(30.0, rel=1e-4)


def test_batch_gap_divides_by_the_mean_gap():
    out = _scores(**DENOISING).normalized("gap-batch")
    torch.testing.assert_close(out["heads"][:, 0, 0], torch.tensor([2.0, 0.5, 0.3]) / (5.01 / 3))
    assert out.meta["normalize"]["small_gap_samples"] == []


def test_batch_gap_refuses_gaps_that_cancel():
    cancelling = _scores("denoising", run=[0.0, 0.0], source=[2.0, -2.0],
                         heads=[[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="the batch has a mean gap"):
        cancelling.normalized("gap-batch")


def test_noising_keeps_the_sign_convention_and_negative_gaps_are_listed():
    # noising: run = clean, source = corrupted; gap = run - source = 4 and -1
    out = _scores("noising", run=[3.0, 0.0], source=[-1.0, 1.0],
                  heads=[[-2.0, 4.0], [1.0, 0.5]]).normalized("gap")
    torch.testing.assert_close(out["heads"].view(2, 2), torch.tensor([[-0.5, 1.0], [-1.0, -0.5]]))
    assert out.meta["normalize"]["negative_gap_samples"] == [1]


def test_bad_settings_and_double_normalising_are_refused():
    scores = _scores(**DENOISING)
    with pytest.raises(ValueError, match="normalize must be one of"):
        scores.normalized("fraction")
    with pytest.raises(ValueError, match="small_gap"):
        scores.normalized("gap", small_gap="ignore")
    with pytest.raises(ValueError, match="normalised already"):
        scores.normalized("gap-batch").normalized("gap-batch")
    with pytest.raises(ValueError, match="metric.run"):
        Scores(values=scores.values, meta=scores.meta).normalized("gap")


def test_attribute_normalize_equals_dividing_by_the_recorded_gap(random_model, random_task):
    raw = attrscope.attribute(random_model, random_task, "atp", "noising", "heads",
                              show_progress=False)
    out = attrscope.attribute(random_model, random_task, "atp", "noising", "heads",
                              show_progress=False, normalize="gap", small_gap="flag")
    gap = raw.extras["metric.run"] - raw.extras["metric.source"]
    kept = [i for i in range(len(gap)) if i not in out.meta["normalize"]["small_gap_samples"]]
    torch.testing.assert_close(out["heads"][kept], raw["heads"][kept] / gap[kept].view(-1, 1, 1))
    with pytest.raises(ValueError, match="normalize"):
        attrscope.attribute(random_model, random_task, "atp", normalize="yes")


def test_cli_normalize_is_saved_and_shown(random_model_dir, tmp_path):
    result = CliRunner().invoke(app, [
        "attribute", "--model", str(random_model_dir), "--n", "3", "--method", "atp",
        "--direction", "denoising", "--components", "heads", "--normalize", "gap",
        "--small-gap", "flag", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "normalised (gap)" in result.output
    saved = Scores.load(result_path(tmp_path, "atp", "denoising"))
    assert saved.meta["normalize"]["mode"] == "gap"
    shown = CliRunner().invoke(app, ["show", str(result_path(tmp_path, "atp", "denoising"))])
    assert "normalised (gap)" in shown.output
    bad = CliRunner().invoke(app, ["attribute", "--model", str(random_model_dir), "--normalize",
                                   "half", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "normalize must be one of" in bad.output


@pytest.mark.parametrize("mode", ["gap", "gap-batch"])
@pytest.mark.parametrize("small_gap", ["refuse", "flag"])
def test_a_task_whose_gaps_are_all_float_noise_has_no_gap_to_normalise_by(mode, small_gap):
    # metrics of size ~3, gaps of ~3e-6: the batch-relative floor alone flags nothing
    noise = _scores("denoising", run=[3.0, -2.5, 4.0], source=[3.000003, -2.499997, 4.000002],
                    heads=[[1e-6, 0.0], [0.0, 2e-6], [1e-6, 1e-6]])
    with pytest.raises(ValueError, match="has no gap to normalise by"):
        noise.normalized(mode, small_gap=small_gap)


def test_the_noise_floor_is_relative_to_the_metric_scale():
    # the same gaps on a metric 1e5 times smaller are real differences, normalised as usual
    small_metric = _scores("denoising", run=[3e-5, -2.5e-5], source=[6e-5, 0.0],
                           heads=[[3e-5, 0.0], [0.0, 2.5e-5]])
    out = small_metric.normalized("gap")
    torch.testing.assert_close(out["heads"][:, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_attribute_refuses_a_task_without_gap_before_the_method_runs(random_model, tmp_path,
                                                                    monkeypatch):
    import dataclasses

    import attrscope.api

    prompt = "When John and Mary went to the store, John gave a drink to"
    row = {"clean": prompt, "corrupted": prompt, "answer": " Mary", "distractor": " John"}
    (tmp_path / "same.jsonl").write_text(json.dumps(row) + "\n")
    same = attrscope.load_task(str(tmp_path / "same.jsonl"), random_model)

    def never(*args, **kwargs):
        raise AssertionError("the method ran")

    real = attrscope.api.get_method
    monkeypatch.setattr(attrscope.api, "get_method",
                        lambda name: dataclasses.replace(real(name), fn=never))
    with pytest.raises(ValueError, match="same.jsonl has no gap to normalise by"):
        attrscope.attribute(random_model, same, "atp", "noising", normalize="gap",
                            show_progress=False)

"""The command line, run in-process on the small random model."""

import pytest
import torch
from typer.testing import CliRunner

from attrscope import Scores
from attrscope.cli import app
from attrscope.cli.options import indexed_results, result_path

runner = CliRunner()


def test_attribute_writes_one_result_per_method_and_direction(random_model_dir, tmp_path):
    out = tmp_path / "results"
    result = runner.invoke(app, [
        "attribute", "--model", str(random_model_dir), "--n", "3", "--n-steps", "4",
        "--out", str(out), "--no-progress", "--top", "3",
    ])
    assert result.exit_code == 0, result.output
    for method in ("ap", "atp", "ig"):
        for direction in ("denoising", "noising"):
            scores = Scores.load(result_path(out, method, direction))
            assert scores.meta["method"] == method and scores.meta["direction"] == direction
            assert scores["heads"].shape == (3, 3, 4) and scores["neurons"].shape == (3, 3, 96)
            assert f"{method} {direction}" in result.output
    # top components are printed as L.H with their mean score
    top = Scores.load(result_path(out, "ap", "noising")).top("heads", 1)[0]
    assert f"{top[0]} {top[1]:+.3f}" in result.output
    assert "completeness residual" in result.output


def test_ig_settings_reach_the_result(random_model_dir, tmp_path):
    result = runner.invoke(app, [
        "attribute", "--model", str(random_model_dir), "--n", "2", "--method", "ig",
        "--direction", "noising", "--components", "heads", "--n-steps", "3", "--baseline", "zero",
        "--out", str(tmp_path), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    scores = Scores.load(result_path(tmp_path, "ig", "noising"))
    assert scores.meta["settings"]["n_steps"] == 3 and scores.meta["settings"]["baseline"] == "zero"
    assert scores.kinds == ["heads"]
    assert list(indexed_results(tmp_path)) == ["ig-noising"]


@pytest.mark.parametrize("args", [["--help"], ["attribute", "--help"], ["show", "--help"], ["methods", "--help"]])
def test_help_states_the_sign_conventions(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "denoising" in text and "noising" in text and "corrupted prompt" in text


def test_bad_options_are_named(random_model_dir, tmp_path):
    result = runner.invoke(app, ["attribute", "--model", str(random_model_dir), "--method", "ap,magic",
                                 "--out", str(tmp_path)])
    assert result.exit_code != 0 and "magic" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text('clean,corrupted,answer,distractor\n"When John and Mary went","When John and Mary went","Mary"," John"\n')
    result = runner.invoke(app, ["attribute", "--model", str(random_model_dir), "--task", str(bad),
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "row 1" in result.output and "'Mary'" in result.output


def test_show_and_methods(random_model_dir, tmp_path):
    runner.invoke(app, ["attribute", "--model", str(random_model_dir), "--n", "2", "--method", "atp",
                        "--direction", "denoising", "--out", str(tmp_path), "--no-progress"])
    result = runner.invoke(app, ["show", str(result_path(tmp_path, "atp", "denoising"))])
    assert result.exit_code == 0 and "atp" in result.output and "heads" in result.output
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0 and all(m in result.output for m in ("ap", "atp", "ig", "atpstar"))
    assert "--qk-fix=True" in result.output and "--graddrop=True" in result.output
    assert "(edge)" in result.output and "eap-ig-act" in result.output


def test_attribute_atpstar_settings_reach_the_result(random_model_dir, tmp_path):
    result = runner.invoke(app, ["attribute", "--model", str(random_model_dir), "--n", "2",
                                 "--method", "atpstar,atp", "--direction", "noising", "--no-graddrop",
                                 "--components", "heads", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    star = Scores.load(result_path(tmp_path, "atpstar", "noising"))
    atp = Scores.load(result_path(tmp_path, "atp", "noising"))
    assert star.meta["settings"]["qk_fix"] is True and star.meta["settings"]["graddrop"] is False
    assert "qk_fix" not in atp.meta["settings"]
    assert set(star.extras) >= {"qk.value.heads", "qk.query.heads", "qk.key.heads"}


def test_dtype_and_device_reach_the_result(random_model_dir, tmp_path):
    result = runner.invoke(app, [
        "attribute", "--model", str(random_model_dir), "--n", "2", "--method", "ap,ig",
        "--direction", "denoising", "--n-steps", "3", "--dtype", "float64", "--device", "cpu",
        "--out", str(tmp_path), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    for method in ("ap", "ig"):
        meta = Scores.load(result_path(tmp_path, method, "denoising")).meta
        assert meta["dtype"] == "torch.float64" and meta["device"] == "cpu"


def test_compare_writes_the_report_and_reuses_results(random_model_dir, tmp_path):
    args = ["compare", "--model", str(random_model_dir), "--n", "4",
            "--method", "ap,atp", "--components", "heads", "--top-k", "3", "--n-boot", "20",
            "--n-random", "2", "--out", str(tmp_path), "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "report.html").exists()
    assert (tmp_path / "tables" / "verification.csv").exists()
    assert (tmp_path / "figures" / "heads_heatmaps.png").exists()
    assert (tmp_path / "plotly.min.js").exists()  # one copy beside the report
    assert "reusing" not in first.output
    # the summary: the dashboard as text and the report's path, at most 15 lines
    summary = first.output.split("writing the report")[1].splitlines()[1:]
    assert summary[-1].startswith("report: ") and len(summary) <= 15, summary
    assert any(line.startswith("heads denoising ") and "ap/atp" in line for line in summary)
    assert "heads    ap denoising     vs atp denoising" not in first.output
    second = runner.invoke(app, args + ["--verbose", "--self-contained"])
    assert second.exit_code == 0, second.output
    assert second.output.count("reusing") == 4  # 2 methods x 2 directions
    assert "heads    ap denoising     vs atp denoising" in second.output  # today's detail
    assert "* plotly.js v" in (tmp_path / "report.html").read_text()


def test_compare_says_its_plan_and_screens_over_the_budget(random_model_dir, tmp_path):
    """A budget too small for exact patching: the plan line comes before any result, ap is
    screened (--screen-top-k, --screen-audit reach it) and the summary says what is exact."""
    result = runner.invoke(app, [
        "compare", "--model", str(random_model_dir), "--n", "3", "--method", "ap,atp",
        "--components", "neurons", "--top-k", "3", "--n-boot", "10", "--n-random", "2",
        "--budget", "0.001s", "--screen-top-k", "4", "--screen-audit", "6", "--out",
        str(tmp_path), "--no-progress", "--no-cache", "--verbose"])
    assert result.exit_code == 0, result.output
    plan = result.output.index("plan: screened exact patching (atp ranks every unit; the top 4")
    assert plan < result.output.index("ap denoising: computed")
    assert "ap noising neurons: 10 of 288 exact (4 by atp, 6 audited at random)" in result.output
    assert "(on the 10 components both scored)" in result.output


def test_attribute_ap_screened_says_what_is_exact(random_model_dir, tmp_path):
    result = runner.invoke(app, [
        "attribute", "--model", str(random_model_dir), "--n", "2", "--method", "ap",
        "--direction", "noising", "--components", "neurons", "--screen", "atp",
        "--screen-top-k", "3", "--screen-audit", "5", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "neurons  screened by atp: 8 of 288 exact, 280 NaN; estimated misses of the exact top 3:" \
        in result.output
    scores = Scores.load(result_path(tmp_path, "ap", "noising"))
    assert scores.meta["screening"]["kinds"]["neurons"]["exact"] == 8
    assert int(torch.isfinite(scores["neurons"][0]).sum()) == 8


@pytest.mark.parametrize("text, seconds", [("900", 900.0), ("90s", 90.0), ("15min", 900.0),
                                           ("2h", 7200.0), ("none", None)])
def test_budget_values(text, seconds):
    from attrscope.cli.options import parse_budget

    assert parse_budget(text) == seconds


@pytest.mark.parametrize("option, value, message", [
    ("--ablation", "resample", "choose from zero, mean, other"),
    ("--top-k", "2.5", "whole number >= 1 or a fraction"),
    ("--method", "ap,magic", "choose from"),
    ("--budget", "soon", "give a time such as 900s"),
    ("--screen", "eap", "choose one of atp, atpstar, ig"),
])
def test_compare_rejects_bad_options(random_model_dir, tmp_path, option, value, message):
    result = runner.invoke(app, ["compare", "--model", str(random_model_dir), "--n", "2",
                                 "--out", str(tmp_path), option, value])
    assert result.exit_code == 2
    assert message in result.output


def test_units_and_memory_options_reach_ap(random_model_dir, tmp_path):
    result = runner.invoke(app, [
        "attribute", "--model", str(random_model_dir), "--n", "2", "--method", "ap",
        "--direction", "noising", "--units", "neurons=0:96:10,95;heads=2", "--max-memory", "256MB",
        "--out", str(tmp_path), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    scores = Scores.load(result_path(tmp_path, "ap", "noising"))
    chosen = list(range(0, 96, 10)) + [95]
    assert scores.meta["settings"]["units"] == {"neurons": chosen, "heads": [2]}
    assert scores.meta["settings"]["max_memory"] == 256 * 10**6
    scored = ~scores["neurons"][0, 0].isnan()
    assert scored.nonzero().flatten().tolist() == chosen


@pytest.mark.parametrize("args, message", [
    (["--units", "neurons=100"], "neuron index 100 is out of range"),
    (["--units", "neurons=a:b"], "neither an index nor start:stop"),
    (["--units", "neurons"], "KIND=INDICES"),
    (["--max-memory", "lots"], "max_memory must be a size"),
])
def test_bad_units_and_memory_options_are_refused_before_any_run(random_model_dir, tmp_path, args, message):
    result = runner.invoke(app, ["attribute", "--model", str(random_model_dir), "--n", "2",
                                 "--out", str(tmp_path), "--no-progress", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not list(tmp_path.rglob("*.safetensors"))


def test_skip_invalid_reports_the_rows_it_leaves_out(random_model_dir, tmp_path):
    good = ('"When John and Mary went to the store, John gave a drink to",'
            '"When John and Mary went to the store, Mary gave a drink to", Mary, John')
    path = tmp_path / "pairs.csv"
    path.write_text("clean,corrupted,answer,distractor\n" + good + "\n" + good.replace(" Mary, John", "Mary, John") + "\n" + good)
    args = ["attribute", "--model", str(random_model_dir), "--task", str(path), "--method", "atp",
            "--direction", "noising", "--out", str(tmp_path / "out"), "--no-progress"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "row 2" in refused.output
    result = runner.invoke(app, [*args, "--skip-invalid"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 invalid row(s)" in result.output and "row 2: answer 'Mary'" in result.output
    scores = Scores.load(result_path(tmp_path / "out", "atp", "noising"))
    assert scores["heads"].shape[0] == 2 and scores.meta["task"]["skipped"]["count"] == 1


def test_metric_option_reaches_the_result_and_bad_metrics_are_named(random_model_dir, tmp_path):
    path = tmp_path / "sets.jsonl"
    path.write_text('{"clean": "When John and Mary went to the store, John gave a drink to", '
                    '"corrupted": "When John and Mary went to the store, Mary gave a drink to", '
                    '"answer": [" Mary", " Anna"], "distractor": [" John"]}\n')
    args = ["attribute", "--model", str(random_model_dir), "--task", str(path), "--method", "ap",
            "--direction", "noising", "--components", "heads", "--out", str(tmp_path / "out"),
            "--no-progress"]
    result = runner.invoke(app, [*args, "--metric", "prob_diff"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(result_path(tmp_path / "out", "ap", "noising"))
    assert scores.meta["task"]["metric"] == "prob_diff" and scores.meta["metric"].startswith("prob_diff")
    assert "mean prob_diff" in result.output
    bad = runner.invoke(app, [*args, "--metric", "kullback"])
    assert bad.exit_code == 2 and "Unknown metric 'kullback'" in bad.output


def test_tasks_lists_every_task_with_a_sample_row():
    from attrscope.tasks import GENERATED_TASKS

    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    for name, spec in GENERATED_TASKS.items():
        pair = spec.generate(1, 0)[0]
        assert f"{name}  [metric {spec.metric}" in result.output
        assert repr(pair.clean) in result.output and repr(pair.corrupted) in result.output
    assert "positions:  IO, S1, S1+1, S2, END" in result.output
    from attrscope.tasks import METRICS

    for metric, what in METRICS.items():
        assert f"  {metric:<15} {what}" in result.output


def test_without_model_the_task_picks_the_embedded_model_that_performs_it(tmp_path):
    args = ["attribute", "--method", "atp", "--direction", "noising", "--components", "heads",
            "--n", "3", "--no-progress", "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--task", "sva"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(result_path(tmp_path, "atp", "noising"))
    assert scores.meta["model"] == "attrscope-tasks" and scores.meta["task"]["name"] == "sva"
    assert "fails 0 of 3 clean prompts" in result.output
    result = runner.invoke(app, [*args, "--task", "ioi"])
    assert Scores.load(result_path(tmp_path, "atp", "noising")).meta["model"] == "attrscope-default-ioi"


@pytest.mark.parametrize("args, message", [
    (["--head-score", "bogus"], "head_score must be one of"),
    (["--head-score", "paths", "--no-qk-fix"], "needs qk_fix=True"),
])
def test_bad_atpstar_settings_are_refused_before_any_run(random_model_dir, tmp_path, args, message):
    result = runner.invoke(app, ["attribute", "--model", str(random_model_dir), "--n", "2",
                                 "--method", "ap,atpstar", "--out", str(tmp_path), "--no-progress",
                                 *args])
    assert result.exit_code == 2 and message in result.output
    assert not list(tmp_path.rglob("*.safetensors"))


def test_method_settings_are_options_and_a_setting_no_chosen_method_takes_is_refused(tmp_path):
    """The options come from the registry: ig's --n-steps with only ap chosen is an error that
    names the option and the method that takes it, before any model is loaded."""
    result = runner.invoke(app, ["attribute", "--method", "ap", "--n-steps", "3",
                                 "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "--n-steps" in result.output and "ig" in result.output
    help_text = runner.invoke(app, ["compare", "--help"]).output
    for option in ("--n-steps", "--qk-fix", "--baseline", "--units", "--head-score"):
        assert option in help_text


def test_compare_refuses_a_bad_normalize_before_loading(tmp_path):
    assert "--normalize" in runner.invoke(app, ["compare", "--help"]).output
    result = runner.invoke(app, ["compare", "--normalize", "fraction", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "normalize must be one of" in result.output


def test_user_metric_and_kl_from_the_command_line(random_model_dir, tmp_path):
    """--metric module:function gives the built-in logit difference's scores and is recorded by
    name; --metric kl runs (and judges no prompt as failed); a --metric that cannot be imported
    is refused in one line before the model is loaded."""
    args = ["attribute", "--model", str(random_model_dir), "--n", "3", "--method", "ap",
            "--direction", "denoising", "--components", "heads", "--no-progress"]
    builtin = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    user = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--metric",
                               "metric_fns:logit_diff"])
    assert builtin.exit_code == 0 and user.exit_code == 0, builtin.output + user.output
    expected = Scores.load(result_path(tmp_path / "a", "ap", "denoising"))
    got = Scores.load(result_path(tmp_path / "b", "ap", "denoising"))
    assert got.meta["metric_name"] == "metric_fns:logit_diff"
    torch.testing.assert_close(got["heads"], expected["heads"], atol=1e-4, rtol=1e-4)
    kl = runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "--metric", "kl"])
    assert kl.exit_code == 0, kl.output
    assert "mean kl" in kl.output and "fails" not in kl.output
    assert Scores.load(result_path(tmp_path / "c", "ap", "denoising")).meta["metric_name"] == "kl"
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "d"), "--metric", "no_such_mod:f"])
    assert bad.exit_code == 2 and "loading model" not in bad.output
    errors = [line for line in bad.output.splitlines() if line.startswith("error")]
    assert errors == ["error: metric 'no_such_mod:f': cannot import module 'no_such_mod' "
                      "(ModuleNotFoundError: No module named 'no_such_mod')."], bad.output


def test_attribute_and_compare_find_each_others_results(random_model_dir, tmp_path):
    """One result identity: attribute stores each result under the keyed name compare's cache
    uses (results/METHOD-DIRECTION-KEY.safetensors), so compare --out DIR reuses what attribute
    made there and attribute reuses what compare made; DIR/results.json indexes them."""
    common = ["--model", str(random_model_dir), "--n", "3", "--components", "heads",
              "--no-progress", "--out", str(tmp_path)]
    made = runner.invoke(app, ["attribute", *common, "--method", "atp"])
    assert made.exit_code == 0, made.output
    files = {d: result_path(tmp_path, "atp", d) for d in ("denoising", "noising")}
    for d, path in files.items():
        assert path.parent == tmp_path / "results" and path.name.startswith(f"atp-{d}-"), path
        assert Scores.load(path).meta["cache_key"] == indexed_results(tmp_path)[f"atp-{d}"]["key"]
    compared = runner.invoke(app, ["compare", *common, "--method", "ap,atp", "--top-k", "3",
                                   "--n-boot", "10", "--n-random", "2"])
    assert compared.exit_code == 0, compared.output
    for d, path in files.items():
        assert f"atp {d}: reusing {path}" in compared.output
        assert f"ap {d}: computed" in compared.output
    again = runner.invoke(app, ["attribute", *common, "--method", "ap", "--direction", "noising"])
    assert again.exit_code == 0, again.output
    assert f"ap noising: reusing {result_path(tmp_path, 'ap', 'noising')}" in again.output
    assert sorted(indexed_results(tmp_path)) == ["ap-noising", "atp-denoising", "atp-noising"]
    shown = runner.invoke(app, ["show", str(tmp_path / "atp-noising")])  # through the index
    assert shown.exit_code == 0 and "heads" in shown.output, shown.output
    missing = runner.invoke(app, ["show", str(tmp_path / "ig-noising")])
    assert missing.exit_code == 2 and "has no ig noising result" in missing.output, missing.output

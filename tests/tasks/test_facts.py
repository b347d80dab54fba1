"""Facts to edit: the built-in capital facts, CounterFact-format files (round trip, one-line
errors), and the CounterFact-style scores against a hand computation."""

import json
import math

import pytest
import torch

import attrscope
from attrscope.analysis.edit_eval import fact_scores, summarise
from attrscope.tasks.base import TaskDataError
from attrscope.tasks.capital_country_data import CAPITALS, HELDOUT_TEMPLATES
from attrscope.tasks.facts import (Fact, capital_facts, check_facts, fact_task, read_facts,
                                   write_facts)


@pytest.fixture(scope="module")
def task_model():
    return attrscope.load_model("attrscope-tasks")


def test_capital_facts_are_valid_single_token_rewrites(task_model):
    facts = capital_facts(12, seed=3, n_neighbours=4)
    check_facts(facts, task_model.tokenizer)
    country = dict(CAPITALS)
    assert len({f.subject for f in facts}) == 12
    for f in facts:
        assert f.target_true == " " + country[f.subject] != f.target_new
        assert f.paraphrases == tuple(t.replace("{CAP}", f.subject) for t in HELDOUT_TEMPLATES)
        by_prompt = {f.template.format(c): " " + k for c, k in CAPITALS}
        assert all(a != f.target_new and by_prompt[p] == a for p, a in f.neighbourhood)
        # the corrupted prompt names the capital whose country is the new answer
        new_capital = {k: c for c, k in CAPITALS}[f.target_new[1:]]
        assert f.corrupted == f.template.format(new_capital)
    task = fact_task(task_model, facts)
    assert task.n == 12
    assert capital_facts(12, seed=3, n_neighbours=4) == facts != capital_facts(12, seed=4)


def test_counterfact_file_round_trips(tmp_path):
    facts = capital_facts(5, seed=1)
    path = write_facts(facts, tmp_path / "facts.json")
    assert read_facts(path) == facts
    record = json.loads(path.read_text())[0]
    assert record["requested_rewrite"]["prompt"].count("{}") == 1
    assert set(record) >= {"requested_rewrite", "paraphrase_prompts", "neighborhood_prompts"}


def test_a_counterfact_record_with_its_own_answers_and_add_space(tmp_path):
    """CounterFact stores answers without their leading space and neighbours as strings
    answered by target_true."""
    record = {"case_id": 7, "requested_rewrite": {
        "prompt": "{}, the capital of", "subject": "Paris", "target_new": {"str": "Germany"},
        "target_true": {"str": "France"}},
        "paraphrase_prompts": ["We visited Paris, the capital of"],
        "neighborhood_prompts": ["We visited Lyon, a city of"]}
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([record]))
    [fact] = read_facts(path, add_space=True)
    assert fact == Fact("7", "Paris, the capital of", "Paris", " France", " Germany",
                        ("We visited Paris, the capital of",),
                        (("We visited Lyon, a city of", " France"),))
    with pytest.raises(TaskDataError, match="'France' has no leading space") as e:
        check_facts(read_facts(path), attrscope.load_model("attrscope-tasks").tokenizer,
                    str(path))
    assert "\n" not in str(e.value) and "fact '7'" in str(e.value)


def _write(tmp_path, records) -> str:
    path = tmp_path / "bad.json"
    path.write_text(records if isinstance(records, str) else json.dumps(records))
    return str(path)


GOOD = {"requested_rewrite": {"prompt": "We visited {}, the capital of", "subject": "Paris",
                              "target_new": {"str": " Germany"}, "target_true": {"str": " France"}}}


@pytest.mark.parametrize("records, message", [
    ("[{", "is not valid JSON"),
    ([], "no fact records"),
    ([GOOD, {"paraphrase_prompts": []}], "record 2: missing requested_rewrite"),
    ([{"requested_rewrite": {**GOOD["requested_rewrite"], "prompt": "Paris is in"}}],
     "record 1: requested_rewrite.prompt must contain '{}'"),
    ([{"requested_rewrite": {**GOOD["requested_rewrite"], "target_new": "Germany"}}],
     "record 1: missing requested_rewrite.target_new.str"),
    ([{**GOOD, "neighborhood_prompts": [3]}], "record 1: neighborhood_prompts\\[0\\]"),
    ([{**GOOD, "case_id": 1}, {**GOOD, "case_id": 1}], "record 2 repeats case_id '1'"),
])
def test_bad_fact_files_fail_in_one_line(tmp_path, records, message):
    with pytest.raises(TaskDataError, match=message) as e:
        read_facts(_write(tmp_path, records))
    assert "\n" not in str(e.value) and "bad.json" in str(e.value)


@pytest.mark.parametrize("change, message", [
    ({"target_new": " Germanyland"}, "target_new: answer ' Germanyland' is 3 tokens"),
    ({"target_true": "France"}, "target_true: answer 'France' has no leading space"),
    ({"neighbourhood": (("We visited Rome, the capital of", "Italy"),)},
     "neighbourhood prompt 'We visited Rome, the capital of': answer 'Italy' has no leading"),
    ({"target_new": " France"}, "target_new ' France' is its true answer"),
])
def test_bad_answers_are_refused_naming_the_fact(task_model, change, message):
    fact = Fact(**{**dict(case_id="c3", prompt="We visited Paris, the capital of", subject="Paris",
                          target_true=" France", target_new=" Germany"), **change})
    with pytest.raises(TaskDataError, match=message) as e:
        check_facts([fact], task_model.tokenizer, "f.json")
    assert "\n" not in str(e.value) and "f.json: fact 'c3'" in str(e.value)


def test_a_fact_without_corrupted_prompt_cannot_choose_attribution_targets(task_model):
    fact = Fact("x", "We visited Paris, the capital of", "Paris", " France", " Germany")
    with pytest.raises(TaskDataError, match="fact 'x' has no corrupted_prompt"):
        fact_task(task_model, [fact])


# -- the scores ----------------------------------------------------------------------------------
IDS = {" T": 0, " N": 1, " A": 2, " B": 3}


def _table(rows: dict[str, list[float]]):
    """A logprobs function answering each prompt with its row of log-probabilities."""
    return lambda prompts: torch.tensor([rows[p] for p in prompts], dtype=torch.float64)


def test_scores_equal_a_hand_computation():
    fact = Fact("1", "p", "s", " T", " N", paraphrases=("q1", "q2", "q3"),
                neighbourhood=(("n1", " A"), ("n2", " B")))
    rows = {"p": [-2.0, -1.0, -5, -5],      # new beats true: efficacy 1, margin +1
            "q1": [-1.0, -2.0, -5, -5],     # true wins
            "q2": [-3.0, -0.5, -5, -5],     # new wins
            "q3": [-0.5, -0.1, -5, -5],     # new wins: generalisation 2/3
            "n1": [-5, -0.5, -1.0, -5],     # new beats own (' A'): not kept
            "n2": [-5, -2.0, -5, -1.0]}     # own (' B') beats new: kept -> specificity 1/2
    scores = fact_scores(_table(rows), fact, IDS)
    assert scores == {"efficacy": 1.0, "generalisation": pytest.approx(2 / 3),
                      "specificity": 0.5, "margin": 1.0}


def test_specificity_is_one_when_untouched_and_zero_when_the_edit_bleeds():
    """The known cases: a model that still prefers every true answer scores specificity 1 and
    efficacy 0; one that says the new answer everywhere scores specificity 0 and efficacy 1."""
    fact = Fact("1", "p", "s", " T", " N", paraphrases=("q",), neighbourhood=(("n", " A"),))
    untouched = {"p": [-1.0, -3, -3, -3], "q": [-1.0, -3, -3, -3], "n": [-3, -3, -1.0, -3]}
    bleeding = {k: [-3, -0.1, -3, -3] for k in ("p", "q", "n")}
    assert fact_scores(_table(untouched), fact, IDS) == {
        "efficacy": 0.0, "generalisation": 0.0, "specificity": 1.0, "margin": -2.0}
    assert fact_scores(_table(bleeding), fact, IDS) == {
        "efficacy": 1.0, "generalisation": 1.0, "specificity": 0.0, "margin": 2.9}


def test_summary_is_the_mean_with_a_bootstrap_interval_and_skips_missing_scores():
    rows = [{"efficacy": e, "generalisation": g, "specificity": 1.0, "fluency": f, "margin": 0.0}
            for e, g, f in ((1.0, math.nan, 0.1), (0.0, 0.5, 0.3), (1.0, 1.0, 0.2))]
    s = summarise(rows, n_boot=200, seed=0)
    assert s["efficacy"]["mean"] == pytest.approx(2 / 3)
    assert s["generalisation"]["mean"] == 0.75 and s["generalisation"]["n"] == 2
    assert s["fluency"]["low"] <= s["fluency"]["mean"] <= s["fluency"]["high"]
    assert s["specificity"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 3}


def test_load_facts_by_name_or_file(tmp_path):
    from attrscope.tasks.facts import load_facts

    assert load_facts("capital", n=4, seed=2) == capital_facts(4, seed=2)
    path = write_facts(capital_facts(3), tmp_path / "f.json")
    assert load_facts(str(path), n=2) == capital_facts(3)[:2]
    with pytest.raises(TaskDataError, match="asked for 5 facts but the file has 3"):
        load_facts(str(path), n=5)

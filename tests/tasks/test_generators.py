"""Synthetic task generators: determinism, held-out splits, equal-length corruptions, single-token
answers under the task-suite tokenizer, and each task's own corruption semantics."""

from __future__ import annotations

import re

import pytest

from attrscope.tasks import (
    capital_country_data,
    gender_data,
    greater_than_data,
    hypernymy_data,
    ioi_data,
    sva_data,
)

MODULES = {
    "greater_than": (greater_than_data, greater_than_data.generate_greater_than_pairs),
    "capital_country": (capital_country_data, capital_country_data.generate_capital_country_pairs),
    "gender": (gender_data, gender_data.generate_gender_pairs),
    "sva": (sva_data, sva_data.generate_sva_pairs),
    "hypernymy": (hypernymy_data, hypernymy_data.generate_hypernymy_pairs),
}
SET_METRICS = ("prob_diff", "logprob_diff")
ALL = {**{k: v[1] for k, v in MODULES.items()},
       "ioi": ioi_data.generate_ioi_pairs,
       "ioi_abc": lambda n, seed=0, split="train": ioi_data.generate_ioi_pairs(
           n, seed=seed, split=split, corruption="abc")}


@pytest.fixture(scope="module")
def suite_tokenizer():
    from transformers import AutoTokenizer

    from attrscope.models import TASK_MODEL_DIR

    return AutoTokenizer.from_pretrained(TASK_MODEL_DIR, local_files_only=True)


def as_list(x):
    return [x] if isinstance(x, str) else list(x)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_exports_metric_and_description(name):
    mod, _ = MODULES[name]
    assert mod.METRIC in ("logit_diff", "prob_diff", "logprob_diff")
    assert isinstance(mod.DESCRIPTION, str) and "->" in mod.DESCRIPTION


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("split", ["train", "heldout", "all"])
def test_deterministic_for_a_seed_and_different_across_seeds(name, split):
    gen = ALL[name]
    a, b, c = gen(40, seed=3, split=split), gen(40, seed=3, split=split), gen(40, seed=4, split=split)
    assert a == b
    assert [p["clean"] for p in a] != [p["clean"] for p in c]
    assert len(a) == 40 and gen(0, seed=3, split=split) == []
    for p in a:
        assert {"clean", "corrupted", "answer", "distractor"} <= set(p)


@pytest.mark.parametrize("name", sorted(ALL))
def test_bad_split_or_n_is_a_clear_error(name):
    with pytest.raises(ValueError, match="split"):
        ALL[name](3, seed=0, split="test")
    with pytest.raises(ValueError, match="n must be"):
        ALL[name](-1, seed=0, split="train")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_heldout_templates_and_items_never_occur_in_training(name):
    mod, gen = MODULES[name]
    train, held = gen(400, seed=0, split="train"), gen(400, seed=0, split="heldout")
    n_train = len(mod.TRAIN_TEMPLATES)
    assert {p["template"] for p in train} == set(range(n_train))
    assert {p["template"] for p in held} == set(range(n_train, len(mod.TEMPLATES)))
    for p in train + held:  # the recorded template really produced the prompt
        pattern = re.escape(mod.TEMPLATES[p["template"]])
        assert re.fullmatch(re.sub(r"\\\{\w+\\\}", r".+", pattern), p["clean"]), p
    assert not {p["clean"] for p in train} & {p["clean"] for p in held}
    if name == "greater_than":
        assert {p["item"] for p in train} == set(mod.TRAIN_NOUNS)
        assert {p["item"] for p in held} == set(mod.HELDOUT_NOUNS)
        assert not set(mod.TRAIN_NOUNS) & set(mod.HELDOUT_NOUNS)
    if name == "sva":
        assert {p["preposition"] for p in train} == set(mod.TRAIN_PREPOSITIONS)
        assert {p["preposition"] for p in held} == set(mod.HELDOUT_PREPOSITIONS)
    all_templates = {p["template"] for p in gen(400, seed=1, split="all")}
    assert all_templates == set(range(len(mod.TEMPLATES)))


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_corruption_is_an_equal_length_word_swap_that_changes_the_prompt(name, split, suite_tokenizer):
    tok = suite_tokenizer
    lengths = set()
    for p in ALL[name](200, seed=7, split=split):
        assert p["clean"] != p["corrupted"]
        assert len(p["clean"].split()) == len(p["corrupted"].split())
        n_clean = len(tok.encode(p["clean"], add_special_tokens=False))
        assert n_clean == len(tok.encode(p["corrupted"], add_special_tokens=False)), p
        lengths.add(n_clean)
    assert len(lengths) > 1, f"{name}/{split}: every prompt has {lengths} tokens"


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_answer_and_distractor_is_one_token(name, suite_tokenizer):
    tok = suite_tokenizer
    metric = MODULES[name][0].METRIC if name in MODULES else "logit_diff"
    seen = set()
    for p in ALL[name](500, seed=11, split="all"):
        if metric in SET_METRICS:
            assert isinstance(p["answer"], list) and isinstance(p["distractor"], list)
            assert p["answer"] and p["distractor"]
            assert not set(p["answer"]) & set(p["distractor"])
        else:
            assert isinstance(p["answer"], str) and p["answer"] != p["distractor"]
        seen |= set(as_list(p["answer"])) | set(as_list(p["distractor"]))
    for s in seen:
        ids = tok.encode(s, add_special_tokens=False)
        assert len(ids) == 1 and tok.decode(ids) == s, (s, ids)


def test_greater_than_sets_partition_00_to_99_around_the_start_year():
    every = [f"{y:02d}" for y in range(100)]
    starts = set()
    for p in greater_than_data.generate_greater_than_pairs(500, seed=2, split="all"):
        yy = p["start_yy"]
        starts.add(yy)
        assert 2 <= yy <= 98
        assert sorted(p["answer"] + p["distractor"]) == every
        assert all(int(a) > yy for a in p["answer"]) and all(int(d) <= yy for d in p["distractor"])
        cc = p["century"]
        year = f" {cc}{yy:02d}"
        assert p["clean"].count(year) == 1 and p["clean"].endswith(f" {cc}")
        assert p["corrupted"] == p["clean"].replace(year, f" {cc}01")
    assert min(starts) <= 5 and max(starts) >= 95


def test_greater_than_prompt_splits_the_year_into_digit_pairs(suite_tokenizer):
    tok = suite_tokenizer
    ids = tok.encode("The war lasted from the year 1732 to the year 17", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[-1] == " 17" and pieces[-6:-4] == [" 17", "32"], pieces


def test_capital_country_answers_are_the_countries_of_the_named_capitals():
    country = dict(capital_country_data.CAPITALS)
    for p in capital_country_data.generate_capital_country_pairs(200, seed=0, split="all"):
        cap, cap2 = p["item"], p["corrupt_item"]
        assert cap != cap2
        assert f" {cap}," in p["clean"] or f" {cap} " in p["clean"]
        assert p["corrupted"] == p["clean"].replace(f" {cap}", f" {cap2}")
        assert p["answer"] == " " + country[cap] and p["distractor"] == " " + country[cap2]


def test_gender_corruption_uses_the_person_noun_of_the_distractor_pronoun():
    genders = set()
    for p in gender_data.generate_gender_pairs(200, seed=0, split="all"):
        g = p["gender"]
        genders.add(g)
        profs = gender_data.FEMALE_PROFESSIONS if g == "f" else gender_data.MALE_PROFESSIONS
        assert p["item"] in profs
        assert p["answer"] == (" she" if g == "f" else " he")
        assert p["distractor"] == (" he" if g == "f" else " she")
        person = "man" if g == "f" else "woman"
        assert p["corrupted"] == p["clean"].replace(f" {p['item']}", f" {person}")
    assert genders == {"f", "m"}


def test_sva_answer_agrees_with_the_clean_subject_and_corruption_flips_its_number():
    number = {w: i for pair in sva_data.NOUNS for i, w in enumerate(pair)}  # 0 singular, 1 plural
    both = set()
    for p in sva_data.generate_sva_pairs(300, seed=0, split="all"):
        subj = p["item"]
        assert number[subj] == int(p["plural"])
        both.add(p["plural"])
        plural_form, singular_form = p["verbs"]
        assert p["answer"] == (plural_form if p["plural"] else singular_form)
        assert {p["answer"], p["distractor"]} == {plural_form, singular_form}
        pair = next(x for x in sva_data.NOUNS if subj in x)
        other = pair[1 - number[subj]]
        assert p["corrupted"] == p["clean"].replace(f" {subj} ", f" {other} ", 1)
    assert both == {True, False}


def test_hypernymy_sets_are_the_two_categories_hypernyms():
    cats = hypernymy_data.CATEGORIES
    for p in hypernymy_data.generate_hypernymy_pairs(300, seed=0, split="all"):
        c, c2 = p["item"], p["corrupt_item"]
        assert c != c2
        assert p["answer"] == [" " + w for w in cats[c][1]]
        assert p["distractor"] == [" " + w for w in cats[c2][1]]
        words = set(re.findall(r"\w+", p["clean"]))
        words2 = set(re.findall(r"\w+", p["corrupted"]))
        hypo, hypo2 = words & set(cats[c][0]), words2 & set(cats[c2][0])
        assert len(hypo) == len(hypo2) >= 2
        assert words - hypo == words2 - hypo2  # only the hyponyms changed


def test_ioi_default_corruption_is_flip():
    for split in ("train", "heldout", "all"):
        assert ioi_data.generate_ioi_pairs(30, seed=5, split=split) == \
            ioi_data.generate_ioi_pairs(30, seed=5, split=split, corruption="flip")
    with pytest.raises(ValueError, match="corruption"):
        ioi_data.generate_ioi_pairs(3, corruption="swap")


@pytest.mark.parametrize("split", ["train", "heldout", "all"])
def test_ioi_abc_replaces_all_three_names_by_three_other_names(split):
    names = {"train": ioi_data.TRAIN_NAMES, "heldout": ioi_data.HELDOUT_NAMES,
             "all": ioi_data.NAMES}[split]
    flip = ioi_data.generate_ioi_pairs(100, seed=9, split=split)
    abc = ioi_data.generate_ioi_pairs(100, seed=9, split=split, corruption="abc")
    for f, p in zip(flip, abc):
        assert p["clean"] == f["clean"]  # same clean prompts as the default corruption
        assert (p["answer"], p["distractor"]) == (f["answer"], f["distractor"])
        io, s = f["io"], f["s"]
        x, y, z = p["abc_names"]
        assert len({x, y, z, io, s}) == 5 and {x, y, z} <= set(names)
        a, b = (io, s) if f["order"] == "ABBA" else (s, io)
        tpl = ioi_data.TEMPLATES[f["template"]]
        kw = dict(PLACE=f["place"], OBJECT=f["object"])
        assert p["clean"] == tpl.format(A=a, B=b, S=s, **kw)
        assert p["corrupted"] == tpl.format(A=x, B=y, S=z, **kw)
        assert not {io, s} & set(re.findall(r"\w+", p["corrupted"]))

"""Property-based tests of the command line's option parsers: any text either parses to a valid
value or raises a ValueError with a message, never another exception type; the one option check
refuses (naming the option) exactly the numbers outside an option's declared range."""

import pytest
import typer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attrscope.cli.options import INT_LIMIT, NUMBER_RANGES, check_options
from attrscope.components import MAX_UNITS_PER_SPEC, parse_unit_spec
from attrscope.engine import parse_memory

SETTINGS = settings(max_examples=150, deadline=None)
# Text made of the characters the option syntax uses, plus any unicode.
SPEC_TEXT = st.one_of(
    st.text(alphabet="heads=neurons;:,0123456789- _", max_size=40),
    st.text(max_size=30),
)


@SETTINGS
@given(spec=SPEC_TEXT)
@example(spec="neurons=0:99999999999")
@example(spec="neurons=" + "9" * 5000)
@example(spec="heads=0:4:0")
@example(spec="=1")
def test_unit_specs_parse_to_index_lists_or_raise_value_error(spec):
    try:
        parsed = parse_unit_spec(spec)
    except ValueError as e:
        assert str(e)
        return
    assert parsed and all(isinstance(k, str) and k for k in parsed)
    for indices in parsed.values():
        assert all(type(i) is int for i in indices)
        assert len(indices) <= MAX_UNITS_PER_SPEC * spec.count(",") + MAX_UNITS_PER_SPEC


@SETTINGS
@given(start=st.integers(-50, 50), stop=st.integers(-50, 50), step=st.integers(1, 7),
       single=st.integers(0, 10**6))
def test_unit_spec_ranges_match_python_ranges(start, stop, step, single):
    assert parse_unit_spec(f"neurons={start}:{stop}:{step},{single}; heads = {single}") == \
        {"neurons": [*range(start, stop, step), single], "heads": [single]}


@settings(max_examples=150, deadline=None)
@given(value=st.one_of(st.text(alphabet="0123456789.eE+-kKmMgGtTiIbB nNaAfF", max_size=12),
                       st.text(max_size=12), st.integers(), st.floats(allow_nan=True)))
@example(value="infGB")
@example(value=float("inf"))
@example(value=10**400)
def test_memory_sizes_parse_to_positive_bytes_or_raise_value_error(value):
    try:
        size = parse_memory(value)
    except ValueError as e:
        assert "max_memory" in str(e)
        return
    assert type(size) is int and size > 0


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 10**9), ("512 MiB", 512 * 2**20),
                                            ("1.5GiB", int(1.5 * 2**30)), ("1000", 1000)])
def test_memory_sizes_in_the_documented_forms(text, expected):
    assert parse_memory(text) == expected


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(NUMBER_RANGES)),
       value=st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True)))
def test_the_option_check_accepts_exactly_the_declared_range(name, value):
    least, exclusive = NUMBER_RANGES[name]
    valid = (value == value and abs(value) <= INT_LIMIT
             and (value > least if exclusive else value >= least))
    try:
        check_options({name: value})
    except typer.BadParameter as e:
        assert not valid and "--" + name.replace("_", "-") in str(e.param_hint)
        return
    assert valid

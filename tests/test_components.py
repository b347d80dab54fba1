"""Component labels L.U, L.U@P and L@P: formatting and parsing are inverse, bad labels named."""

import pytest

from attrscope.components import HEADS, Label, format_label, parse_label


@pytest.mark.parametrize("layer, unit, position, text", [
    (3, 1, None, "3.1"), (3, 1, "S2", "3.1@S2"), (5, None, "END", "5@END"),
    (0, 12, 7, "0.12@7"), (2, None, None, "2"), (1, 0, "S1+1", "1.0@S1+1"),
])
def test_labels_format_and_parse_back(layer, unit, position, text):
    assert format_label(layer, unit, position) == text
    assert parse_label(text) == Label(layer, unit, position)
    if unit is not None:
        assert HEADS.label(layer, unit, position) == text


@pytest.mark.parametrize("text", ["", "3.", "3.1@", "a.1", "3.1@S 2", "3.1@2x", "@END", "3.1.2"])
def test_bad_labels_are_named(text):
    with pytest.raises(ValueError, match=f"{text!r} is not a component label"):
        parse_label(text)

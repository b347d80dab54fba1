"""The method registry: one order, each method's own settings check, unknown settings refused."""

import pytest

from attrscope.methods import METHODS, ORDER
from attrscope.registry import check_method_settings


def test_methods_are_listed_in_the_declared_order_whatever_the_import_order():
    assert list(METHODS)[: len(ORDER)] == list(ORDER)
    assert set(ORDER) <= set(METHODS)


def test_a_method_checks_its_own_settings_through_the_registry():
    resolved = check_method_settings("atpstar", {"graddrop": False})
    assert resolved["graddrop"] is False and resolved["qk_fix"] is True
    with pytest.raises(ValueError, match="head_score='paths'.*qk_fix=True"):
        check_method_settings("atpstar", {"head_score": "paths", "qk_fix": False})


def test_a_setting_the_method_does_not_take_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"Method 'ap' has no setting\(s\) \['n_steps'\]"):
        check_method_settings("ap", {"n_steps": 3})

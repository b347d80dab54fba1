"""The method registry: one order, each method's own settings check, unknown settings refused."""

import pytest

from attrscope.methods import METHODS, ORDER
from attrscope.registry import check_method_settings
from attrscope.cli.options import result_path


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


def test_integration_steps_have_one_name_and_the_old_one_still_works(random_model, random_task):
    """ig and the edge methods all call their integration steps n_steps; the edge methods' old
    name 'steps' is taken with a FutureWarning, and gives the same scores."""
    import torch

    from attrscope import attribute_edges

    for name in ("ig", "eap-ig", "eap-ig-act"):
        assert "n_steps" in METHODS[name].defaults and "steps" not in METHODS[name].defaults
    new = attribute_edges(random_model, random_task, "eap-ig", n_steps=2, show_progress=False)
    with pytest.warns(FutureWarning, match="'steps' is now called 'n_steps'"):
        old = attribute_edges(random_model, random_task, "eap-ig", steps=2, show_progress=False)
    assert torch.equal(new["edges"], old["edges"]) and old.meta["settings"]["n_steps"] == 2
    with pytest.raises(ValueError, match="give only 'n_steps'"):
        check_method_settings("eap-ig", {"steps": 2, "n_steps": 3})


def test_the_old_option_name_still_works_on_the_command_line(random_model_dir, tmp_path):
    from typer.testing import CliRunner

    from attrscope.cli import app
    from attrscope.scores import Scores

    result = CliRunner().invoke(app, ["edges", "--model", str(random_model_dir), "--n", "2",
                                      "--method", "eap-ig", "--steps", "2", "--top", "3",
                                      "--no-faithfulness", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "'steps' is now called 'n_steps'" in result.output
    assert Scores.load(result_path(tmp_path, "eap-ig", "denoising")).meta["settings"]["n_steps"] == 2

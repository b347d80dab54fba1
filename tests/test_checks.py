"""Checks made before the work: a memory budget that cannot hold one row of a pass."""

import pytest

import attrscope
from attrscope.checks import smallest_budget


@pytest.mark.parametrize("method", ["ap", "atp", "eap"])
def test_a_budget_below_one_row_is_refused_naming_the_budget_that_works(random_model,
                                                                        random_task, method):
    seq = int(random_task.clean_tokens.shape[1])
    least = smallest_budget(random_model, seq, edge=method == "eap")
    with pytest.raises(ValueError, match=r"max_memory 1 KB is less than one row of this run's "
                                         rf"largest pass.*give max_memory '{-(-least // 10**6)}MB'"):
        attrscope.attribute(random_model, random_task, method, "noising", max_memory="1KB",
                            show_progress=False)
    # the budget named runs, and max_batch_rows=1 runs whatever the budget
    attrscope.attribute(random_model, random_task, method, "noising", show_progress=False,
                        max_memory=f"{-(-least // 10**6)}MB", components="heads")
    attrscope.attribute(random_model, random_task, method, "noising", show_progress=False,
                        max_memory="1KB", max_batch_rows=1, components="heads")


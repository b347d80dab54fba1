"""The comparison on the random model, shared by the compare and report tests."""

import pytest

from attrscope.analysis.compare import compare
from tests.analysis.chromium import browser  # noqa: F401 (a fixture: one Chromium per module)

METHODS = ("ap", "atp", "ig")


@pytest.fixture(scope="session")
def comparison_and_log(random_model, random_task, tmp_path_factory):
    cache = tmp_path_factory.mktemp("compare_cache")
    log: list[str] = []
    c = compare(random_model, random_task, METHODS, k=3, n_boot=100, n_random=3,
                method_settings={"n_steps": 8}, cache_dir=cache, show_progress=False,
                log=log.append)
    return c, log, cache

"""attrscope: which heads and neurons are responsible for a behaviour, by several attribution
methods on one footing (exact activation patching, attribution patching, integrated gradients).

Sign conventions: *denoising* runs the corrupted prompt and patches in clean activations;
*noising* runs the clean prompt and patches in corrupted activations. Every score is a change of
the task metric (by default logit(answer) - logit(distractor) of the clean prompt's answer; see
:mod:`attrscope.tasks.metrics` for the set metrics).
"""

from ._version import __version__  # noqa: E402

from .api import attribute, attribute_edges  # noqa: E402
from .analysis.counterfactual import find_counterfactual  # noqa: E402
from .analysis.edit_eval import compare_edits, edit  # noqa: E402
from .analysis.pipelines import edge_circuit, path_study  # noqa: E402
from .comparison import Comparison, compare  # noqa: E402
from .components import HEADS, KINDS, NEURONS  # noqa: E402
from .engine import DIRECTIONS  # noqa: E402
from .methods import METHODS  # noqa: E402
from .models import as_bridge, load_model  # noqa: E402
from .scores import Scores  # noqa: E402
from .tasks import load_task  # noqa: E402

__all__ = ["attribute", "attribute_edges", "edge_circuit", "path_study", "find_counterfactual", "edit",
           "compare_edits",
           "compare", "Comparison", "as_bridge", "load_model", "load_task", "Scores",
           "METHODS", "DIRECTIONS", "KINDS", "HEADS", "NEURONS", "__version__"]

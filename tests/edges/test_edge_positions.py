"""Positional edges (issue 23 item 4): ``eap``, ``eap-ig``, ``eap-ig-act`` and ``exact`` with
``positions="each"`` or named positions score every edge at every position (a source's output
at p into a destination's input at p), ``[n, n_edges, n_pos]``; summed over positions the
linear methods give today's scores; ``exact`` at one position equals a one-edge-per-forward
loop patching only that position."""

from __future__ import annotations

import pytest
import torch

from attrscope.api import attribute_edges
from attrscope.edges.circuit import Circuit
from attrscope.edges.methods import EdgeRun
from oracles import one_edge_loop, one_length_task

TOL = 1e-4


@pytest.fixture(scope="module")
def one_length(random_model):
    return one_length_task(random_model, n=3, seed=5)


@pytest.mark.parametrize("method,settings", [("eap", {}), ("eap-ig", {"n_steps": 3}),
                                             ("eap-ig-act", {"n_steps": 2}),
                                             ("eap-ig-act", {"n_steps": 2, "definition": "eap-ig"})])
def test_each_sums_to_all(random_model, one_length, method, settings):
    every = attribute_edges(random_model, one_length, method, "denoising", positions="each",
                            show_progress=False, **settings)
    whole = attribute_edges(random_model, one_length, method, "denoising", show_progress=False,
                            **settings)
    seq = one_length.clean_tokens.shape[1]
    assert every["edges"].shape == whole["edges"].shape + (seq,)
    torch.testing.assert_close(every["edges"].sum(-1), whole["edges"], atol=TOL, rtol=1e-4)
    assert whole["edges"].abs().max() > 1e-2


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_exact_at_named_positions_equals_loop(random_model, random_task, direction):
    scores = attribute_edges(random_model, random_task, "exact", direction, positions="S2,END",
                             show_progress=False, max_batch_rows=7)
    er = EdgeRun.prepare(random_model, random_task, direction)
    edges = list(range(0, er.graph.n_edges, 7)) + [er.graph.n_edges - 1]
    biggest = 0.0
    for j, name in enumerate(["S2", "END"]):
        loop = one_edge_loop(er, edges, random_task.positions[name])
        torch.testing.assert_close(scores["edges"][:, edges, j], loop, atol=TOL, rtol=1e-4)
        biggest = max(biggest, float(loop.abs().max()))
    assert biggest > 1e-2
    assert scores.labels("edges")[:2] == [f"{scores.graph.labels[0]} @S2",
                                          f"{scores.graph.labels[0]} @END"]


def test_circuits_of_whole_edges_refuse_positional_scores(random_model, random_task):
    scores = attribute_edges(random_model, random_task, "eap", positions="S2,END",
                             show_progress=False)
    with pytest.raises(ValueError, match="selecting a circuit needs edge scores over all "
                                         "positions.*PositionCircuit"):
        Circuit.from_scores(scores, top=5)

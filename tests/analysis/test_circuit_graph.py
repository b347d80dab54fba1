"""The interactive circuit graph: one directed, styled arrow per kept edge, hover text per edge."""

import html
import math

import pytest
import torch

from attrscope.analysis.circuit_graph import INPUT_STYLES, NODE_RADIUS_PX, circuit_plot, edge_curve
from attrscope.edges.circuit import Circuit, node_positions
from attrscope.edges.graph import Graph, colon_label


def _arrows(fig):
    return [t for t in fig.data if t.marker.symbol == "arrow"]


def test_edge_curve_starts_at_the_source_and_stops_at_the_rim():
    scale = (40.0, 30.0)
    xs, ys, middle = edge_curve((0.0, 0.0), (3.0, 4.0), 0.2, scale)
    assert (xs[0], ys[0]) == (0.0, 0.0)
    gap = math.hypot((3.0 - xs[-1]) * scale[0], (4.0 - ys[-1]) * scale[1])
    assert gap == pytest.approx(NODE_RADIUS_PX, rel=0.15)  # the arrowhead ends at the node
    straight = edge_curve((0.0, 0.0), (3.0, 4.0), 0.0, scale)[2]
    assert middle != pytest.approx(straight)  # bent sideways
    q_mid = edge_curve((0.0, 0.0), (3.0, 4.0), INPUT_STYLES["q"][3], scale)[2]
    v_mid = edge_curve((0.0, 0.0), (3.0, 4.0), INPUT_STYLES["v"][3], scale)[2]
    assert q_mid != pytest.approx(v_mid)  # q, k and v edges between the same nodes stay apart


def test_every_kept_edge_is_an_arrow_styled_by_its_input_and_scaled_by_its_score():
    graph = Graph(3, 4)
    mean = torch.linspace(-1, 1, graph.n_edges)[torch.randperm(graph.n_edges,
                                                               generator=torch.Generator().manual_seed(0))]
    circuit = Circuit.top(graph, mean, 40)
    per_sample = mean + 0.1 * torch.randn(5, graph.n_edges, generator=torch.Generator().manual_seed(1))
    fig = circuit_plot(circuit, per_sample)
    arrows = _arrows(fig)
    assert len(arrows) == len(circuit.edges) > 0
    shown = sorted(circuit.edges, key=lambda e: -abs(float(mean[e])))
    pos = node_positions(graph)
    for trace, e in zip(arrows, shown):
        dest, which = graph.dest_names[int(graph.dest_index[e])]
        source = graph.source_names[int(graph.source_index[e])]
        colour, dash, legend, _ = INPUT_STYLES[which]
        assert (trace.line.color, trace.line.dash, trace.legendgroup) == (colour, dash, legend)
        assert (trace.x[0], trace.y[0]) == pos[source]  # directed: from the source ...
        assert math.dist((trace.x[-1], trace.y[-1]), pos[dest]) < 0.6  # ... to the destination
        assert trace.marker.size[-1] > 0 and max(trace.marker.size[:-1]) == 0  # head at the end
    widths = [t.line.width for t in arrows]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    (middles,) = [t for t in fig.data if t.name == "edge score (hover)"]
    assert list(middles.marker.color) == pytest.approx([float(mean[e]) for e in shown])
    assert html.escape(colon_label(graph.labels[shown[0]])) in middles.text[0]
    assert "rank 1 of" in middles.text[0]
    assert "[" in middles.text[0]  # the interval over prompts
    (inside,) = [t for t in fig.data if t.name == "nodes of the circuit"]
    (outside,) = [t for t in fig.data if t.name == "nodes outside the circuit"]
    assert set(inside.x) and not set(zip(inside.x, inside.y)) & set(zip(outside.x, outside.y))
    assert len(inside.x) + len(outside.x) == len(pos)  # every node once, none hidden under another
    assert all(hover.startswith(f"<b>{name}</b>") and "edge(s)" in hover
               for name, hover in zip(circuit.nodes(), inside.hovertext))
    legend = {t.name for t in arrows if t.showlegend}
    assert legend == {INPUT_STYLES[graph.dest_names[int(graph.dest_index[e])][1]][2]
                      for e in circuit.edges}


def test_grouped_query_inputs_are_shared_nodes():
    graph = Graph(2, 4, n_kv_heads=2)
    mean = torch.zeros(graph.n_edges)
    into_key = graph.edge("input", "1.kv0", "k")
    mean[[into_key, graph.edge("1.0", "logits", None), graph.edge("1.1", "logits", None)]] = 1.0
    circuit = Circuit.top(graph, mean, 3)
    fig = circuit_plot(circuit, max_edges=2)
    assert len(_arrows(fig)) == 2  # max_edges caps the drawing
    (shared,) = [t for t in fig.data if t.name == "shared key/value inputs"]
    assert list(shared.text) == ["1.kv0"]

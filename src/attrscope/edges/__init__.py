"""Edge-level attribution over the graph of input, heads (q/k/v inputs), MLPs and logits.

Import :func:`attrscope.edges.methods.attribute_edges` for scores; :class:`Graph` is importable
without the methods (the result type uses it for labels).
"""

from .graph import Graph, edge_label

__all__ = ["Graph", "edge_label"]

"""Gauss-Legendre quadrature on [0, 1]: the integration grid of every integrated-gradients
method, node and edge alike."""

from __future__ import annotations

import numpy as np
import torch


def gauss_legendre(n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alphas`` in (0, 1) and weights summing to 1, each ``[n_steps]`` (float64)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}.")
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return torch.from_numpy(0.5 * (nodes + 1.0)), torch.from_numpy(0.5 * weights)

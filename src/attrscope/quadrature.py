"""Gauss-Legendre quadrature on [0, 1]: the integration grid of every integrated-gradients
method, node and edge alike; and the gradient summed along a straight path on it."""

from __future__ import annotations

import numpy as np
import torch


def gauss_legendre(n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alphas`` in (0, 1) and weights summing to 1, each ``[n_steps]`` (float64)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}.")
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return torch.from_numpy(0.5 * (nodes + 1.0)), torch.from_numpy(0.5 * weights)


def path_gradient_sum(base: torch.Tensor, delta: torch.Tensor, alphas: torch.Tensor,
                      weights: torch.Tensor, steps: int, metric, tick=lambda: None
                      ) -> torch.Tensor:
    """The weighted sum of ``d metric / d path`` over the points ``base + alpha delta`` of a
    straight path (``base``, ``delta`` ``[n, ...]``), ``steps`` points per call of ``metric``:
    ``metric(path [k * n, ...]) -> [k * n]``, point-major; ``tick()`` after each call."""
    grad_sum = torch.zeros_like(base)
    n = base.shape[0]
    for first in range(0, len(alphas), steps):
        a = alphas[first:first + steps].to(base.device, base.dtype)
        w = weights[first:first + steps].to(base.device, base.dtype)
        shape = (len(a),) + (1,) * base.dim()
        path = (base.unsqueeze(0) + a.view(shape) * delta.unsqueeze(0))
        path = path.reshape(len(a) * n, *base.shape[1:]).requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(metric(path).sum(), path)
        grad_sum += (grad.view(len(a), *base.shape) * w.view(shape)).sum(0)
        tick()
    return grad_sum

"""The seed study's two-input AND/OR toy experiment, runnable in about a second.

Two tiny networks ``x in {0,1}^2 -> hidden ReLU layer -> sigmoid`` are trained to compute AND
and OR. The clean input is (1, 1) (output 1 for both gates), the corrupted input (0, 0) (output
0). The components are the two inputs; the metric is the output probability. Theory
(:mod:`attrscope.analysis.latent`):

- AND: denoising one input restores nothing (the other is still 0), noising one input destroys
  the output: asymmetry |denoising| - |noising| < 0 (AND-like);
- OR: denoising one input restores the output, noising one input changes nothing: asymmetry > 0
  (OR-like);
- integrated gradients along the straight path is antisymmetric between directions
  (noising IG = -denoising IG exactly), so its asymmetry is 0 for both gates.

Run ``python examples/and_or_toy.py`` to print the table.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .latent import asymmetry_values

GATES = {"and": (0.0, 0.0, 0.0, 1.0), "or": (0.0, 1.0, 1.0, 1.0)}
INPUTS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))
CLEAN = (1.0, 1.0)
CORRUPTED = (0.0, 0.0)


def train_gate(gate: str, seed: int = 0, hidden: int = 4, steps: int = 400) -> nn.Module:
    """A ``2 -> hidden -> 1`` ReLU network with sigmoid output trained on the truth table of
    ``gate`` ("and" or "or"); deterministic given ``seed``. Maps ``[batch, 2] -> [batch]``."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {sorted(GATES)}, got {gate!r}.")
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Flatten(0))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    x = torch.tensor(INPUTS)
    y = torch.tensor(GATES[gate])
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        optimiser.step()
    return nn.Sequential(net, nn.Sigmoid())


def _run_and_source(direction: str) -> tuple[torch.Tensor, torch.Tensor]:
    clean, corrupted = torch.tensor([CLEAN]), torch.tensor([CORRUPTED])
    if direction == "denoising":
        return corrupted, clean
    if direction == "noising":
        return clean, corrupted
    raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}.")


def patching(net: nn.Module, direction: str) -> torch.Tensor:
    """Exact patching of each input on its own: ``[1, 2]``, score = f(run with input j set to
    the source's) - f(run)."""
    run, source = _run_and_source(direction)
    with torch.no_grad():
        base = net(run)
        scores = []
        for j in range(run.shape[1]):
            patched = run.clone()
            patched[:, j] = source[:, j]
            scores.append(net(patched) - base)
    return torch.stack(scores, dim=1)


def integrated_gradients(net: nn.Module, direction: str, n_steps: int = 64) -> torch.Tensor:
    """IG of each input along the straight path from the run input to the source input
    (Gauss-Legendre, ``n_steps`` nodes): ``[1, 2]``; the two sum to f(source) - f(run)."""
    run, source = _run_and_source(direction)
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    alphas = torch.tensor((nodes + 1) / 2, dtype=torch.float32)
    weights = torch.tensor(weights / 2, dtype=torch.float32)
    path = (run + alphas[:, None] * (source - run)).requires_grad_(True)  # [steps, 2]
    (grads,) = torch.autograd.grad(net(path).sum(), path)
    return ((weights[:, None] * grads).sum(0, keepdim=True)) * (source - run)


def toy_experiment(seed: int = 0) -> dict[str, dict[str, object]]:
    """For each gate: scores of ``ap`` and ``ig`` in both directions (``[1, 2]`` each) and
    their asymmetry per input (``[2]``; negative = AND-like, positive = OR-like)."""
    results: dict[str, dict[str, object]] = {}
    for gate in GATES:
        net = train_gate(gate, seed)
        scores = {(m, d): fn(net, d) for m, fn in (("ap", patching), ("ig", integrated_gradients))
                  for d in ("denoising", "noising")}
        with torch.no_grad():
            outputs = {tuple(x): float(net(torch.tensor([x]))) for x in INPUTS}
        results[gate] = {
            "outputs": outputs,
            "scores": scores,
            "asymmetry": {m: asymmetry_values(scores[(m, "denoising")], scores[(m, "noising")])
                          for m in ("ap", "ig")},
        }
    return results


def format_table(results: dict[str, dict[str, object]]) -> str:
    """The toy experiment as a plain-text table."""
    lines = ["gate  method  input  denoising  noising  asymmetry  reading",
             "----  ------  -----  ---------  -------  ---------  -------"]
    for gate, result in results.items():
        for m in ("ap", "ig"):
            d, n = result["scores"][(m, "denoising")][0], result["scores"][(m, "noising")][0]
            a = result["asymmetry"][m]
            for j in range(2):
                reading = ("AND-like" if a[j] < -0.1 else "OR-like" if a[j] > 0.1 else "symmetric")
                lines.append(f"{gate:<4}  {m:<6}  x{j + 1:<4}  {float(d[j]):+9.3f}  "
                             f"{float(n[j]):+7.3f}  {float(a[j]):+9.3f}  {reading}")
    return "\n".join(lines)

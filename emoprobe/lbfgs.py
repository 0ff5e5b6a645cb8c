"""A batched L-BFGS: many independent problems minimised at once, each on its own curvature pairs, step length and
stopping test, each leaving the batch when it is done.

The problems live in one object (:class:`Problem`) whose tensors have the active problems on their first axis:
one evaluation computes every active problem's objective and gradient (the probes of :mod:`emoprobe.logistic`
share one product with the features), and a problem that converges, runs out of iterations or stalls is handed to
``finish`` and dropped from every later step (``keep``), so that each pays for its own iterations only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

ARMIJO = 1e-4  # sufficient decrease of the backtracking line search
MAX_BACKTRACKS = 30
HISTORY = 10  # curvature pairs per problem


class Problem(Protocol):
    """What :func:`minimise` needs of the problems it solves; tensors have the active problems first."""

    dtype: torch.dtype

    def evaluate(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objective ``[B]``, gradient ``[B, N]`` and a state ``[B, ...]`` for :meth:`precondition` at ``theta``."""

    def precondition(self, state: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``r`` ``[B, N]`` times the initial inverse Hessian (before L-BFGS's scalar), at the point of ``state``."""

    def keep(self, mask: torch.Tensor) -> None:
        """Drop the active problems outside ``mask`` from every per-problem tensor."""

    def finish(self, theta: torch.Tensor, which: torch.Tensor, n_iter: list[int], converged: list[bool]) -> None:
        """Record the final ``theta`` of the active problems selected by ``which`` (their iterations and whether
        they met ``tol``)."""


def minimise(problem: Problem, theta: torch.Tensor, *, max_iter: int, tol: float,
             used: Sequence[int] | None = None, stall: tuple[int, float] | None = None) -> None:
    """L-BFGS with a backtracking (Armijo) line search from ``theta`` ``[B, N]``, until every problem's gradient has
    no entry above ``tol``, or it has had ``max_iter`` iterations (less ``used``, those it had before), or its line
    search finds no decrease (in float32 near an optimum: the caller may finish it in float64). With ``stall =
    (k, drop)`` a problem whose objective fell by less than ``drop`` over its last ``k`` iterations has converged
    too (for objectives whose gradient creeps along flat valleys; cf. scikit-learn's ``n_iter_no_change`` of its
    stochastic MLP solvers). Each finished problem goes to ``problem.finish``."""
    B = len(theta)
    device = theta.device
    loss, grad, state = problem.evaluate(theta)
    history = [loss]  # the objective at the last stall[0] + 1 iterates, when stall is given
    budget = torch.as_tensor([max_iter - u for u in (used or [0] * B)], device=device)
    n_iter = torch.zeros(B, dtype=torch.long, device=device)
    converged = grad.abs().amax(dim=1) <= tol
    h_diag = torch.ones(B, dtype=problem.dtype, device=device)
    steps, changes, rho = [], [], []
    while True:
        finished = converged | (n_iter >= budget)
        if bool(finished.any()):
            problem.finish(theta[finished], finished, n_iter[finished].tolist(), converged[finished].tolist())
            keep = ~finished
            if not bool(keep.any()):
                return
            theta, loss, grad, state, n_iter, converged, budget, h_diag = (
                t[keep] for t in (theta, loss, grad, state, n_iter, converged, budget, h_diag))
            history = [t[keep] for t in history]
            steps, changes, rho = ([t[keep] for t in ts] for ts in (steps, changes, rho))
            problem.keep(keep)
        direction = _direction(problem, grad, steps, changes, rho, h_diag, state)
        slope = (grad * direction).sum(dim=1)
        descent = slope < 0
        first = n_iter == 0
        t = torch.where(first, torch.clamp(1.0 / grad.abs().sum(dim=1), max=1.0), torch.ones_like(slope))
        pending = descent.clone()
        new_theta, new_loss, new_grad, new_state = theta.clone(), loss.clone(), grad.clone(), state.clone()
        for _ in range(MAX_BACKTRACKS):
            trial = theta + (t * pending)[:, None] * direction
            trial_loss, trial_grad, trial_state = problem.evaluate(trial)
            accept = pending & (trial_loss <= loss + ARMIJO * t * slope)
            new_theta[accept], new_loss[accept], new_grad[accept], new_state[accept] = (
                trial[accept], trial_loss[accept], trial_grad[accept], trial_state[accept])
            pending &= ~accept
            if not bool(pending.any()):
                break
            t = torch.where(pending, t * 0.5, t)
        # no descent direction, or no decrease found: float32 rounding; stop here (finished in float64)
        stalled = ~descent | pending
        step, change = new_theta - theta, new_grad - grad
        curvature = (step * change).sum(dim=1)
        # a pair whose curvature is lost in rounding would spoil the inverse Hessian estimate: skip it (relative,
        # so that the small steps near an optimum, where a float64 finish starts, still count)
        kept = ~stalled & (curvature > torch.finfo(problem.dtype).eps * step.norm(dim=1) * change.norm(dim=1))
        if bool(kept.any()):
            if len(steps) == HISTORY:
                steps.pop(0), changes.pop(0), rho.pop(0)
            steps.append(torch.where(kept[:, None], step, 0.0))
            changes.append(torch.where(kept[:, None], change, 0.0))
            rho.append(torch.where(kept, 1.0 / torch.where(kept, curvature, 1.0), 0.0))
            scaled = (change * problem.precondition(new_state, change)).sum(dim=1)
            h_diag = torch.where(kept, curvature / scaled.clamp(min=1e-300), h_diag)
        theta, loss, grad, state = new_theta, new_loss, new_grad, new_state
        n_iter += (~stalled).long()
        converged = ~stalled & (grad.abs().amax(dim=1) <= tol)
        if stall is not None:
            history = [*history[-stall[0]:], loss]
            if len(history) > stall[0]:
                converged |= ~stalled & (history[0] - loss < stall[1])
        budget = torch.where(stalled, n_iter, budget)  # a stalled problem is finished, not converged


def _direction(problem: Problem, grad, steps, changes, rho, h_diag, state) -> torch.Tensor:
    """The L-BFGS direction of each problem: the two-loop recursion over its own curvature pairs (rho 0: no pair)
    from the initial inverse Hessian ``h_diag x problem.precondition``; the gradient itself before there is a pair."""
    r = -grad
    if not steps:
        return r
    alphas = []
    for s, y, p in zip(reversed(steps), reversed(changes), reversed(rho)):
        alpha = p * (s * r).sum(dim=1)
        r = r - alpha[:, None] * y
        alphas.append(alpha)
    r = problem.precondition(state, r) * h_diag[:, None]
    for (s, y, p), alpha in zip(zip(steps, changes, rho), reversed(alphas)):
        beta = p * (y * r).sum(dim=1)
        r = r + (alpha - beta)[:, None] * s
    return r

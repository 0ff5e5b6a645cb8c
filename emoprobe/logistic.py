"""The probe trainer: many L2 multinomial logistic regressions on the rows of one feature matrix, in one L-BFGS.

Each probe minimises scikit-learn's objective for ``LogisticRegression(C)`` (multinomial, L2 on the weights,
intercept free) on its own training rows, standardised with those rows' mean and standard deviation, divided by
``C n``::

    1/n sum_i -log softmax(W z_i + b)[y_i]  +  1/(2 C n) ||W||^2,      z_i = (x_i - mean) / std

and stops when no entry of its gradient (in the preconditioned coordinates below) exceeds ``tol``.

How it is fast:

- **Every probe of a solve is a block of rows of one product.** The probes of a problem (its folds, their
  shuffled-label controls, the fit on all texts) share the features; each L-BFGS step multiplies the weights
  of all active probes by the feature matrix at once, so the matrix is streamed once per step, not once per
  probe, and the product runs near the machine's matmul rate.
- **Only training rows.** The rows are ordered by which probes train on them (for k folds: by test fold) and
  cut into contiguous blocks; each block is multiplied by the weights of the probes that train on it only, so
  no probe pays for its test rows (a fifth of the rows under 5 folds).
- **Converged probes leave the product.** A probe that meets ``tol`` (or its budget) is dropped from every later
  step (:func:`emoprobe.lbfgs.minimise`), so each probe costs its own iterations, not those of the slowest probe
  of its solve.
- **Element-wise work on labels, not one-hot matrices**: the softmax, the loss and the residual
  ``softmax - onehot`` are formed in place on the logits of one block (a few passes over ``[probes, classes,
  rows]`` that stay in cache), with the true class gathered and scattered by index.
- **Standardisation folded into the weights**: ``W z + b = (W / std) x + (b - (W / std) mean)``, so the raw
  features are never copied per fold; per-block sums give every probe's mean and standard deviation.
- **Whitening**: the parameters are ``M`` with ``W = M Q``, ``Q = L^-1``, ``L L^T`` the correlation of the
  features plus ``0.2 I`` (of the solve's rows, or given, e.g. of all texts): the optimum is unchanged, but the
  residual stream's strongly correlated features no longer make L-BFGS crawl.
- **The classes' curvature in the initial inverse Hessian**: L-BFGS starts each step from ``(mean(diag p - p p^T)
  + 0.01 I)^-1`` over the classes (the softmax's factor of the Hessian, K-FAC), not from a scalar, so that probes
  whose labels are mostly one class do not spend their steps learning the rare classes' curvature.

Near the optimum a loss rounded to float32 can leave the line search no decrease to find; a probe that stalls
so, short of ``tol``, is finished in float64 from where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from emoprobe.lbfgs import minimise

# Ridge added to the feature correlation in the whitening Q: it changes how fast L-BFGS converges, not where to;
# 0.2 was fastest on the bundled models' layers among 0.06-2, and 0.0002-0.2 gave the same iterations.
PRECONDITIONER_SHRINKAGE = 0.2
# Added to the class curvature before it is inverted (curvatures are probabilities' p(1 - p), at most 1/4): it keeps
# the step of a class the probe barely predicts finite; 1e-2 took the fewest iterations among 1e-5..3e-2.
CLASS_DAMPING = 1e-2


class Probe(NamedTuple):
    """One probe to fit: its training rows (indices into the features), their labels ``0..n_classes-1``, where to
    start (raw-space weights ``[n_classes, d]`` and intercepts ``[n_classes]``; None: from zero), its own ``C``
    (None: the solve's), and which of the solve's ``offsets`` its logits add (None: none)."""

    train: np.ndarray
    labels: np.ndarray
    n_classes: int
    start: tuple[np.ndarray, np.ndarray] | None = None
    C: float | None = None
    offset: int | None = None


class Fit(NamedTuple):
    """A fitted probe in the raw feature space: it predicts ``argmax(x @ weights.T + intercepts)``."""

    weights: np.ndarray  # float32 [n_classes, d]
    intercepts: np.ndarray  # float32 [n_classes]
    n_iter: int
    converged: bool


def logits(x: np.ndarray, fits: Sequence[Fit]) -> np.ndarray:
    """The logits each of several probes of as many classes gives the rows of ``x`` ``[n, d]``: float64 ``[len(fits),
    n, k]``, computed in float64 (whose rounding, unlike float32's, moves no argmax with the BLAS's thread count),
    all probes in one product."""
    fits = list(fits)
    k = len(fits[0].intercepts)
    weights = np.concatenate([fit.weights for fit in fits]).astype(np.float64)  # [len(fits) * k, d]
    intercepts = np.concatenate([fit.intercepts for fit in fits]).astype(np.float64)
    product = np.asarray(x, dtype=np.float64) @ weights.T + intercepts  # [n, len(fits) * k]
    return product.reshape(len(x), len(fits), k).transpose(1, 0, 2)


def predict(x: np.ndarray, fits: Fit | Sequence[Fit]) -> np.ndarray:
    """Labels ``0..k-1`` a probe (int64 ``[n]``), or each of several probes of as many classes (int64 ``[len(fits),
    n]``), gives the rows of ``x`` ``[n, d]``: the argmax of their :func:`logits`."""
    one = isinstance(fits, Fit)
    labels = logits(x, [fits] if one else fits).argmax(axis=2)
    return labels[0] if one else labels


def whitening(x: np.ndarray | torch.Tensor, shrinkage: float = PRECONDITIONER_SHRINKAGE) -> torch.Tensor:
    """``Q = L^-1`` ``[d, d]`` in ``x``'s dtype, with ``L L^T`` the correlation matrix of ``x`` ``[n, d]`` plus
    ``shrinkage I`` (the covariance of the features standardised over all rows).

    Any such ``Q`` gives the logistic probes their optimum (a convex objective's; the non-linear probes' is not
    convex, :mod:`emoprobe.mlp`); one computed from the rows they are fitted on (or from a superset, shared by
    several solves) makes L-BFGS converge in tens of steps instead of thousands."""
    x = torch.as_tensor(x)
    centred = x - x.mean(dim=0)
    cov = (centred.T @ centred).double() / len(x)
    scale = cov.diagonal().sqrt().clamp(min=torch.finfo(torch.float64).tiny)
    scale[cov.diagonal() == 0] = 1.0
    cov = cov / scale[:, None] / scale[None, :]
    cov.diagonal().add_(shrinkage)
    factor = torch.linalg.cholesky(cov)
    identity = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
    return torch.linalg.solve_triangular(factor, identity, upper=False).to(x.dtype)


class _Layout(NamedTuple):
    """The rows of a solve ordered by which probes train on them, cut into blocks of rows shared by the same
    probes."""

    order: np.ndarray  # int64 [n_used]: indices into the features, block after block
    bounds: list[tuple[int, int]]  # each block's rows [start, stop) of the ordered rows
    members: list[np.ndarray]  # the probes (indices) that train on each block
    labels: np.ndarray  # int64 [n_probes, n_used]: each probe's label of each ordered row (0 where not trained)


def _layout(probes: Sequence[Probe], n_rows: int) -> _Layout:
    membership = np.zeros((len(probes), n_rows), dtype=bool)
    labels = np.zeros((len(probes), n_rows), dtype=np.int64)
    for b, probe in enumerate(probes):
        membership[b, probe.train] = True
        labels[b, probe.train] = probe.labels
    used = np.flatnonzero(membership.any(axis=0))
    signatures, block_of = np.unique(membership[:, used], axis=1, return_inverse=True)
    order = used[np.argsort(block_of, kind="stable")]
    sizes = np.bincount(block_of, minlength=signatures.shape[1])
    stops = np.cumsum(sizes)
    bounds = list(zip((stops - sizes).tolist(), stops.tolist()))
    members = [np.flatnonzero(signatures[:, j]) for j in range(signatures.shape[1])]
    return _Layout(order, bounds, members, labels[:, order])


def fit_logistic(x: np.ndarray | torch.Tensor, probes: Sequence[Probe], *, C: float, max_iter: int, tol: float,
                 q: torch.Tensor | None = None, device: str | torch.device = "cpu",
                 offsets: np.ndarray | None = None) -> list[Fit]:
    """Fit every probe of ``probes`` on the rows of ``x`` ``[n, d]`` (float32, raw: each probe is standardised
    with its own training rows) in one batched L-BFGS; see the module docstring. ``q``: the :func:`whitening` to use
    (e.g. one of all texts, shared by the solves of a position); default: that of the rows the probes train on.
    ``C``: the penalty of every probe that gives none of its own. ``offsets``: float ``[G, n, K]`` (``K`` the most
    classes of any probe), fixed logits that a probe with ``offset`` ``g`` adds to its own on every row,
    ``softmax(offsets[g, i] + W z_i + b)``: a probe of what the features add to another model's log-probabilities
    (:mod:`emoprobe.conditional`); its :class:`Fit` holds its own weights only.

    Returns one :class:`Fit` per probe, in order: raw-space weights and intercepts, the probe's iterations and
    whether its gradient met ``tol``.
    """
    features = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).to(device)
    layout = _layout(probes, len(features))
    ordered = features[torch.as_tensor(layout.order, device=features.device)]
    # Centred on each feature's median over the solve's rows first (each probe is still standardised with its own
    # training rows): a residual stream whose features sit far from zero would otherwise lose the gradient's digits
    # to cancellation. A median (of every k-th row: any centre will do, it only has to be near the rows), not the
    # mean: an outlier must not move the centre of the other rows.
    shift = ordered[::max(len(ordered) // 256, 1)].median(dim=0).values
    ordered = ordered - shift
    shift = shift.double()
    q = whitening(ordered) if q is None else q.to(device=features.device, dtype=features.dtype)
    fixed = None if offsets is None else torch.as_tensor(
        np.ascontiguousarray(np.asarray(offsets)[:, layout.order].transpose(0, 2, 1)), device=features.device)
    fits = _Solve(ordered, q, layout, [_shifted(p, shift) for p in probes], C=C, shift=shift,
                  offsets=None if fixed is None else fixed.to(ordered.dtype)).run(max_iter=max_iter, tol=tol)
    stalled = [i for i, fit in enumerate(fits) if not fit.converged and fit.n_iter < max_iter]
    if stalled and ordered.dtype != torch.float64:
        again = [probes[i]._replace(start=(fits[i].weights, fits[i].intercepts)) for i in stalled]
        again = [_shifted(p, shift) for p in again]
        more_layout = _layout(again, len(features))
        rows = torch.as_tensor(more_layout.order, device=features.device)
        more_fixed = None if offsets is None else torch.as_tensor(np.ascontiguousarray(
            np.asarray(offsets, dtype=np.float64)[:, more_layout.order].transpose(0, 2, 1)), device=features.device)
        more = _Solve(features[rows].double() - shift, q.double(), more_layout, again, C=C, shift=shift,
                      offsets=more_fixed).run(max_iter=max_iter, tol=tol, used=[fits[i].n_iter for i in stalled])
        for i, fit in zip(stalled, more):
            fits[i] = fit
    return fits


def _shifted(probe: Probe, shift: torch.Tensor) -> Probe:
    """``probe`` with its start (raw-space weights and intercepts) for the features ``x - shift``."""
    if probe.start is None:
        return probe
    weights, intercepts = (np.asarray(a, dtype=np.float64) for a in probe.start)
    return probe._replace(start=(weights, intercepts + weights @ shift.cpu().numpy()))


class _Solve:
    """The probes of :func:`fit_logistic` over ordered, shifted features ``[n_used, d]``, in their dtype, as the
    :class:`emoprobe.lbfgs.Problem` that :func:`emoprobe.lbfgs.minimise` solves.

    Per-probe state lives in tensors whose first axis is the active probes; a probe that finishes is removed
    from all of them (and from the blocks' member lists) before the next step.
    """

    def __init__(self, features: torch.Tensor, q: torch.Tensor, layout: _Layout, probes: Sequence[Probe], *,
                 C: float, shift: torch.Tensor, offsets: torch.Tensor | None = None):
        self.features, self.q = features, q
        self.shift = shift  # the features are x - shift of the raw x
        self.dtype, self.device = features.dtype, features.device
        self.layout, self.probes = layout, probes
        self.d = features.shape[1]
        self.K = max(p.n_classes for p in probes)
        B, K = len(probes), self.K
        n_train = torch.as_tensor([len(p.train) for p in probes], dtype=self.dtype, device=self.device)
        # every probe's mean and standard deviation from float64 sums over the blocks it trains on
        sums = torch.stack([features[a:b].sum(dim=0, dtype=torch.float64) for a, b in layout.bounds])
        squares = torch.stack([features[a:b].square().sum(dim=0, dtype=torch.float64) for a, b in layout.bounds])
        on = torch.zeros(B, len(layout.bounds), dtype=torch.float64, device=self.device)
        for j, members in enumerate(layout.members):
            on[torch.as_tensor(members, device=self.device), j] = 1.0
        mean = (on @ sums) / n_train.double()[:, None]
        var = ((on @ squares) / n_train.double()[:, None] - mean * mean).clamp(min=0)
        std = var.sqrt()
        std[std == 0] = 1.0
        self.mean, self.std = mean.to(self.dtype), std.to(self.dtype)
        # absent classes (a probe of k < K classes) get an intercept of -inf: probability 0, gradient 0
        self.absent = torch.zeros(B, K, dtype=self.dtype, device=self.device)
        for b, probe in enumerate(probes):
            self.absent[b, probe.n_classes:] = float("-inf")
        self.n_train = n_train
        strength = torch.as_tensor([C if p.C is None else p.C for p in probes], dtype=self.dtype, device=self.device)
        self.penalty = 1.0 / (strength * n_train)
        # each probe's fixed logits [K, n_used] (offsets[g], in the layout's row order), or none
        self.offsets = offsets
        if offsets is None and any(p.offset is not None for p in probes):
            raise ValueError("a probe asks for offsets, but the solve has none")
        self.group = torch.as_tensor([-1 if p.offset is None else p.offset for p in probes], device=self.device)
        self.labels = torch.as_tensor(layout.labels, device=self.device)
        self.ids = torch.arange(B, device=self.device)  # which probe each active row is
        self._blocks()

    def _blocks(self) -> None:
        """Per block: the positions (in the active probes) of its members and their labels of its rows."""
        position = {int(b): i for i, b in enumerate(self.ids.tolist())}
        self.blocks = []
        for (a, b), members in zip(self.layout.bounds, self.layout.members):
            kept = [position[m] for m in members if m in position]
            if kept:
                at = torch.as_tensor(kept, device=self.device)
                self.blocks.append((a, b, at, self.labels[self.ids[at], a:b].unsqueeze(1)))

    def weights(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised-space weights ``W = M Q`` ``[B, K, d]`` and intercepts ``[B, K]`` of parameters ``[B, N]``."""
        B = len(theta)
        m = theta[:, :self.K * self.d].reshape(B * self.K, self.d)
        return (m @ self.q).view(B, self.K, self.d), theta[:, self.K * self.d:]

    def raw(self, theta: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw-space weights ``[b, K, d]`` and intercepts ``[b, K]`` (``W / std`` and ``b - (W / std) mean``) of
        the parameters ``theta`` ``[b, N]`` of the active probes selected by the mask ``which``."""
        w, b = self.weights(theta)
        raw = w / self.std[which][:, None, :]
        return raw, b - (raw * self.mean[which][:, None, :]).sum(dim=2)

    def evaluate(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each active probe's objective ``[B]``, gradient ``[B, N]`` (written out by hand) and the inverse of its
        damped class curvature ``[B, K, K]``: the mean over its rows of ``diag(p) - p p^T``, the softmax's factor of
        the Hessian (:meth:`precondition`)."""
        B, K, d = len(theta), self.K, self.d
        w, b = self.weights(theta)
        raw = w / self.std[:, None, :]
        intercept = b - (raw * self.mean[:, None, :]).sum(dim=2) + self.absent
        raw_rows = raw.reshape(B, K * d)
        loss = torch.zeros(B, dtype=self.dtype, device=self.device)
        grad_raw = torch.zeros(B, K * d, dtype=self.dtype, device=self.device)
        grad_b = torch.zeros(B, K, dtype=self.dtype, device=self.device)
        curvature = torch.zeros(B, K, K, dtype=self.dtype, device=self.device)
        for start, stop, at, labels in self.blocks:
            rows = self.features[start:stop]
            m = len(at)
            logits = (raw_rows[at].view(m * K, d) @ rows.T).view(m, K, stop - start)
            logits += intercept[at][:, :, None]
            if self.offsets is not None:
                group = self.group[at]
                with_offset = group >= 0
                if with_offset.any():
                    logits[with_offset] += self.offsets[group[with_offset], :, start:stop]
            top = logits.amax(dim=1)
            true = logits.gather(1, labels)[:, 0]
            p = logits.sub_(top[:, None]).exp_()
            total = p.sum(dim=1)
            p /= total[:, None]
            curvature.index_add_(0, at, torch.diag_embed(p.sum(dim=2)) - torch.bmm(p, p.transpose(1, 2)))
            loss.index_add_(0, at, (top + total.log_() - true).sum(dim=1))
            p.scatter_add_(1, labels, torch.full_like(labels, -1, dtype=self.dtype).expand_as(labels))
            grad_b.index_add_(0, at, p.sum(dim=2))
            grad_raw.index_add_(0, at, (p.view(m * K, stop - start) @ rows).view(m, K * d))
        loss = loss / self.n_train + 0.5 * self.penalty * (w * w).sum(dim=(1, 2))
        grad_raw = grad_raw.view(B, K, d) / self.n_train[:, None, None]
        grad_b = grad_b / self.n_train[:, None]
        grad_w = (grad_raw - grad_b[:, :, None] * self.mean[:, None, :]) / self.std[:, None, :]
        grad_w += self.penalty[:, None, None] * w
        grad_m = (grad_w.reshape(B * K, d) @ self.q.T).view(B, K * d)
        damped = curvature / self.n_train[:, None, None] + CLASS_DAMPING * torch.eye(K, dtype=self.dtype,
                                                                                    device=self.device)
        return loss, torch.cat([grad_m, grad_b], dim=1), torch.linalg.inv(damped)

    def start(self) -> torch.Tensor:
        """Parameters ``[B, N]``: zero, or a probe's ``start`` mapped into its coordinates (``M = W L``)."""
        B, K, d = len(self.probes), self.K, self.d
        theta = torch.zeros(B, K * d + K, dtype=self.dtype, device=self.device)
        factor = None
        for b, probe in enumerate(self.probes):
            if probe.start is None:
                continue
            if factor is None:
                factor = torch.linalg.inv(self.q.double()).to(self.dtype)
            weights, intercepts = (torch.as_tensor(a, device=self.device).to(self.dtype) for a in probe.start)
            k = probe.n_classes
            theta[b, :K * d].view(K, d)[:k] = (weights * self.std[b]) @ factor
            theta[b, K * d:K * d + k] = intercepts + weights @ self.mean[b]
        return theta

    def run(self, *, max_iter: int, tol: float, used: Sequence[int] | None = None) -> list[Fit]:
        """The fits of :func:`emoprobe.lbfgs.minimise` from :meth:`start`, in the order of the probes."""
        self.used, self.fits = used, {}
        minimise(self, self.start(), max_iter=max_iter, tol=tol, used=used)
        return [self.fits[i] for i in range(len(self.probes))]

    def finish(self, theta: torch.Tensor, which: torch.Tensor, n_iter: list[int], converged: list[bool]) -> None:
        """Map the finished probes' parameters to raw-space weights and intercepts (in float64, then float32)."""
        raw, intercept = self.raw(theta, which)
        raw = raw.double()
        intercept = intercept.double() - raw @ self.shift
        for j, i in enumerate(torch.nonzero(which).flatten().tolist()):
            probe = int(self.ids[i])
            k = self.probes[probe].n_classes
            self.fits[probe] = Fit(raw[j, :k].float().cpu().numpy(), intercept[j, :k].float().cpu().numpy(),
                                   n_iter[j] + (self.used[probe] if self.used else 0), converged[j])

    def keep(self, keep: torch.Tensor) -> None:
        """Drop the probes not in ``keep`` (a mask over the active ones) from the per-probe tensors."""
        self.ids = self.ids[keep]
        self.mean, self.std, self.absent, self.n_train, self.penalty, self.group = (
            t[keep] for t in (self.mean, self.std, self.absent, self.n_train, self.penalty, self.group))
        self._blocks()

    def precondition(self, inverse: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``r`` ``[B, N]`` (weights, then intercepts, classes first) multiplied by each probe's ``inverse`` ``[B, K,
        K]`` over the classes: the inverse of the Hessian's Kronecker approximation ``curvature x I`` (K-FAC), in the
        whitened coordinates where the features' factor is the identity. A scalar initial Hessian leaves L-BFGS to
        learn from its pairs the curvature of classes the probe rarely predicts (an answer probe's labels are mostly
        one); the class factor gives it at once (half the iterations of such probes)."""
        B, K, d = len(r), self.K, self.d
        weights = torch.bmm(inverse, r[:, :K * d].reshape(B, K, d)).reshape(B, K * d)
        return torch.cat([weights, torch.bmm(inverse, r[:, K * d:, None])[:, :, 0]], dim=1)

"""Non-linear probes: one hidden layer of ReLU units (the paper's ``MLPClassifier(hidden_layer_sizes=(32,))``), many at
once in one batched L-BFGS (:func:`emoprobe.lbfgs.minimise`).

Each probe minimises, on its own training rows standardised with their mean and standard deviation,

    1/n sum_i -log softmax(W2 relu(W1 z_i + b1) + b2)[y_i]  +  alpha / (2 n) (||W1||^2 + ||W2||^2)

scikit-learn's ``MLPClassifier`` objective (its ``alpha`` is the L2 strength on the weights, not the biases). The
workflow's default ``alpha`` (``probe.nonlinear.alpha``) is 100, not the 1 that equals the linear probes' penalty at
``C = 1``: at 1 (and 10) a converged fit memorises the training texts (docs/statistics.md).

It is not convex, and its gradient creeps along flat valleys for thousands of iterations after the accuracy has
settled (scikit-learn's own L-BFGS solver for it, which stops on the gradient, did not stop in 2,000 on the bundled
models' states): a probe has converged when its objective fell by less than ``tol`` over its last
:data:`N_ITER_NO_CHANGE` iterations, a stricter form of the rule of scikit-learn's stochastic MLP solvers (which
stop after that many iterations that each gain less than ``tol`` on the best). Each probe starts from Glorot-uniform weights seeded by ``(seed, its
index)``, so that a run is reproducible to the last bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from emoprobe.lbfgs import minimise
from emoprobe.logistic import Probe, whitening

N_ITER_NO_CHANGE = 10  # as scikit-learn's MLPClassifier's n_iter_no_change


class MLPFit(NamedTuple):
    """A fitted one-hidden-layer probe in the raw feature space: it predicts ``argmax(relu(x @ first.T + first_bias)
    @ second.T + second_bias)``."""

    first: np.ndarray  # float32 [hidden, d]
    first_bias: np.ndarray  # float32 [hidden]
    second: np.ndarray  # float32 [n_classes, hidden]
    second_bias: np.ndarray  # float32 [n_classes]
    n_iter: int
    converged: bool


def mlp_logits(x: np.ndarray, fits: Sequence[MLPFit]) -> np.ndarray:
    """The logits each probe gives the rows of ``x`` ``[n, d]``, float64 ``[len(fits), n, k]``, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.stack([np.maximum(x @ fit.first.T.astype(np.float64) + fit.first_bias, 0) @ fit.second.T.astype(
        np.float64) + fit.second_bias for fit in fits])


def predict_mlp(x: np.ndarray, fits: Sequence[MLPFit]) -> np.ndarray:
    """Labels ``0..k-1`` each probe gives the rows of ``x`` ``[n, d]``, int64 ``[len(fits), n]``: the argmax of
    their :func:`mlp_logits`."""
    return mlp_logits(x, fits).argmax(axis=2)


def fit_mlp(x: np.ndarray, probes: Sequence[Probe], *, hidden: int, alpha: float, max_iter: int, tol: float, seed: int,
            device: str | torch.device = "cpu") -> list[MLPFit]:
    """Fit every probe of ``probes`` on the rows of ``x`` ``[n, d]`` (float32, raw) in one batched L-BFGS, in float64
    (a non-convex objective's last steps need its precision), until its objective falls by less than ``tol`` over
    :data:`N_ITER_NO_CHANGE` iterations or it has had ``max_iter``. Each probe's fit depends on its training rows,
    ``seed`` and its index alone (its standardisation and whitening are its own rows'), not on the rows it is
    tested on."""
    features = torch.as_tensor(np.ascontiguousarray(x)).to(device=device, dtype=torch.float64)
    problem = _MLP(features, probes, hidden=hidden, alpha=alpha)
    minimise(problem, problem.start(seed), max_iter=max_iter, tol=0.0, stall=(N_ITER_NO_CHANGE, tol))
    return [problem.fits[i] for i in range(len(probes))]


class _MLP:
    """The probes of :func:`fit_mlp` as the :class:`emoprobe.lbfgs.Problem` that :func:`emoprobe.lbfgs.minimise`
    solves: parameters ``[B, N]`` of ``M1`` (``W1 = M1 Q``, ``[hidden, d]``), ``b1``, ``W2`` ``[K, hidden]``, ``b2``.

    ``Q`` ``[B, d, d]`` is each probe's whitening (:func:`emoprobe.logistic.whitening`) of its own training rows:
    the objective is not convex, so the parametrisation (and the start, drawn in it) decides which optimum is
    reached, and a whitening of all rows would let the rows a probe is tested on steer its fit."""

    def __init__(self, features: torch.Tensor, probes: Sequence[Probe], *, hidden: int, alpha: float):
        self.features, self.probes, self.hidden = features, probes, hidden
        self.dtype, self.device = features.dtype, features.device
        n, self.d = features.shape
        self.K = max(p.n_classes for p in probes)
        B = len(probes)
        self.mask = torch.zeros(B, n, dtype=self.dtype, device=self.device)
        self.labels = torch.zeros(B, n, dtype=torch.long, device=self.device)
        self.absent = torch.zeros(B, self.K, dtype=self.dtype, device=self.device)
        means, stds, whitenings = [], [], []
        for b, probe in enumerate(probes):
            rows = torch.as_tensor(probe.train, device=self.device)
            self.mask[b, rows] = 1.0
            self.labels[b, rows] = torch.as_tensor(probe.labels, device=self.device)
            self.absent[b, probe.n_classes:] = float("-inf")
            part = features[rows]
            std = part.std(dim=0, correction=0)
            std[std == 0] = 1.0
            means.append(part.mean(dim=0))
            stds.append(std)
            whitenings.append(whitening(part))
        self.mean, self.std, self.q = torch.stack(means), torch.stack(stds), torch.stack(whitenings)
        self.n_train = self.mask.sum(dim=1)
        self.penalty = alpha / self.n_train
        self.ids = torch.arange(B, device=self.device)
        self.fits: dict[int, MLPFit] = {}

    def start(self, seed: int) -> torch.Tensor:
        """Glorot-uniform weights and zero biases, each probe's drawn from ``(seed, its index)``."""
        H, K, d = self.hidden, self.K, self.d
        rows = []
        inverse = torch.linalg.inv(self.q)  # M1 = W1 Q^-1, [B, d, d]
        for b in range(len(self.probes)):
            rng = np.random.default_rng([seed, b])
            first = rng.uniform(-1, 1, (H, d)) * np.sqrt(6 / (d + H))
            second = rng.uniform(-1, 1, (K, H)) * np.sqrt(6 / (H + K))
            m1 = torch.as_tensor(first, dtype=self.dtype, device=self.device) @ inverse[b]
            rows.append(torch.cat([m1.reshape(-1), torch.zeros(H, dtype=self.dtype, device=self.device),
                                   torch.as_tensor(second, dtype=self.dtype, device=self.device).reshape(-1),
                                   torch.zeros(K, dtype=self.dtype, device=self.device)]))
        return torch.stack(rows)

    def _unpack(self, theta: torch.Tensor, q: torch.Tensor):
        """``W1`` ``[B, H, d]`` (standardised space), ``b1`` ``[B, H]``, ``W2`` ``[B, K, H]``, ``b2`` ``[B, K]``, from
        ``theta`` ``[B, N]`` and those probes' whitenings ``q`` ``[B, d, d]``."""
        B, H, K, d = len(theta), self.hidden, self.K, self.d
        sizes = [H * d, H, K * H, K]
        m1, b1, w2, b2 = torch.split(theta, sizes, dim=1)
        w1 = torch.bmm(m1.reshape(B, H, d), q)
        return w1, b1, w2.view(B, K, H), b2

    def evaluate(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each active probe's objective ``[B]`` and gradient ``[B, N]`` (autograd), and an empty state."""
        B, H = len(theta), self.hidden
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            w1, b1, w2, b2 = self._unpack(theta, self.q)
            raw = w1 / self.std[:, None, :]  # [B, H, d]
            bias = b1 - (raw * self.mean[:, None, :]).sum(dim=2)
            pre = (self.features @ raw.reshape(B * H, self.d).T).view(-1, B, H).transpose(0, 1) + bias[:, None, :]
            logits = torch.bmm(torch.relu(pre), w2.transpose(1, 2)) + (b2 + self.absent)[:, None, :]  # [B, n, K]
            log_p = torch.log_softmax(logits, dim=2).gather(2, self.labels[:, :, None])[:, :, 0]
            loss = -(log_p * self.mask).sum(dim=1) / self.n_train + 0.5 * self.penalty * (
                (w1 * w1).sum(dim=(1, 2)) + (w2 * w2).sum(dim=(1, 2)))
            grad, = torch.autograd.grad(loss.sum(), theta)
        return loss.detach(), grad, torch.zeros(B, 1, dtype=self.dtype, device=self.device)

    def precondition(self, state: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The whitening is the first layer's preconditioner; L-BFGS's scalar does the rest."""
        return r

    def keep(self, keep: torch.Tensor) -> None:
        """Drop the probes not in ``keep`` from the per-probe tensors."""
        self.ids = self.ids[keep]
        self.mask, self.labels, self.absent, self.mean, self.std, self.q, self.n_train, self.penalty = (
            t[keep] for t in (self.mask, self.labels, self.absent, self.mean, self.std, self.q, self.n_train,
                              self.penalty))

    def finish(self, theta: torch.Tensor, which: torch.Tensor, n_iter: list[int], converged: list[bool]) -> None:
        """The finished probes in the raw feature space."""
        mean, std, q = (t[which] for t in (self.mean, self.std, self.q))
        w1, b1, w2, b2 = self._unpack(theta, q)
        first = w1 / std[:, None, :]
        first_bias = b1 - (first * mean[:, None, :]).sum(dim=2)
        for j, i in enumerate(torch.nonzero(which).flatten().tolist()):
            probe = int(self.ids[i])
            k = self.probes[probe].n_classes
            self.fits[probe] = MLPFit(first[j].float().cpu().numpy(), first_bias[j].float().cpu().numpy(),
                                      w2[j, :k].float().cpu().numpy(), b2[j, :k].float().cpu().numpy(), n_iter[j],
                                      converged[j])

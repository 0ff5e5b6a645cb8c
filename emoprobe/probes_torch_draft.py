import numpy as np
import torch


def fit_multinomial_lbfgs(x_train, y_train, *, C, max_iter, tol, n_classes, precondition=0.0):
    """x_train: [P, n, d] float tensor (standardised); y_train: [n] int64. Returns W [P,K,d], b [P,K], n_iter."""
    P, n, d = x_train.shape
    if precondition:
        cov = x_train.transpose(1, 2) @ x_train / n  # [P, d, d]
        evals, evecs = torch.linalg.eigh(cov.double())
        scale = (precondition * C * n * evals.clamp(min=0) + 1.0).rsqrt()
        Q = ((evecs * scale.unsqueeze(1)) @ evecs.transpose(1, 2)).to(x_train.dtype)  # symmetric [P,d,d]
    else:
        Q = torch.eye(d, dtype=x_train.dtype).expand(P, d, d)
    xq = x_train @ Q
    M = torch.zeros(P, n_classes, d, dtype=x_train.dtype, requires_grad=True)
    b = torch.zeros(P, n_classes, dtype=x_train.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([M, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=0,
                            history_size=10, line_search_fn="strong_wolfe")
    y = y_train.expand(P, n)
    def closure():
        opt.zero_grad()
        logits = torch.baddbmm(b.unsqueeze(1), xq, M.transpose(1, 2))  # [P, n, K]
        loss = torch.nn.functional.cross_entropy(logits.reshape(P * n, -1), y.reshape(-1), reduction="sum") / n
        W = M @ Q
        loss = loss + 0.5 / (C * n) * (W * W).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return (M @ Q).detach(), b.detach(), opt.state[opt._params[0]]["n_iter"]

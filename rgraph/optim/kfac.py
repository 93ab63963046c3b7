"""KFAC: a Kronecker-factored approximation of the Fisher matrix, block-diagonal over layers.

For a layer ``output = input @ W`` (a dense layer, or a convolution's GEMM over im2col patches) with
per-sample pre-activation cotangents g (from labels sampled from the model's own predictive
distribution), the Fisher block is approximated as F ~ A (x) G with

    A = E[a a^T]   a = [input, 1] (the 1 when the layer has a bias), averaged over samples and positions
    G = (1/N) sum_n sum_p g g^T    (for convolutions the sum over positions P carries the factor P of
                                     Grosse and Martens' KFC: F ~ P E[a a^T] (x) E[g g^T])

kept as exponential moving averages. With the damping gamma + l2 split by the pi heuristic,
pi = sqrt((tr A / dim A) / (tr G / dim G)), A_d = A + pi sqrt(gamma + l2) I and G_d = G + sqrt(gamma + l2)/pi I,
the natural gradient of a layer whose gradient, arranged as (in[+1], out), is V, is U = A_d^{-1} V G_d^{-1}
(row-major vec: (A (x) G) vec(V) = vec(A V G)). Inverses are refreshed every ``T`` updates. Parameters
in no GEMM layer (batch-norm scales, say) get the plain gradient divided by the damping.

The layer inputs and cotangents come from the program (``State.taps(u)``): no backpropagation here.
"""
from __future__ import annotations

import numpy as np

from rgraph.ops import weights_from_matrix, weights_to_matrix
from .base import Optimizer, finite, register


def sample_cotangent(z, rng, loss="softmax_cross_entropy"):
    """Per-sample dloss/dz at labels drawn from the model's predictive distribution.

    softmax cross-entropy: u = softmax(z) - onehot(y), y ~ Cat(softmax(z)).
    mse (sum of squares, a Gaussian with variance 1/2): u = 2 (z - t), t ~ N(z, I/2), i.e. u ~ N(0, 2 I).
    """
    z = np.asarray(z, dtype=np.float64)
    if loss == "mse":
        return np.sqrt(2.0) * rng.standard_normal(z.shape)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)
    y = np.minimum((cdf < rng.random((len(z), 1))).sum(axis=1), z.shape[1] - 1)
    u = p.copy()
    u[np.arange(len(z)), y] -= 1.0
    return u


def predictive_loss(prog, asked):
    """The loss whose predictive distribution KFAC samples: the model's own (``Graph.loss_kind``, which
    rgraph.nn's builders set), which a ``loss`` setting must agree with; softmax cross-entropy where
    neither says."""
    known = getattr(getattr(prog, "graph", None), "loss_kind", None)
    if asked is not None and known is not None and asked != known:
        raise ValueError(f"loss={asked!r}, but the model's loss is {known!r}: KFAC would sample the wrong "
                         f"predictive distribution (leave loss unset to use the model's)")
    loss = asked or known or "softmax_cross_entropy"
    if loss not in ("softmax_cross_entropy", "mse"):
        raise ValueError(f"KFAC samples the predictive distribution of softmax_cross_entropy or mse, not of {loss!r}")
    return loss


def _rows(a):
    """(N, in) or (N, P, in) -> (rows, in) with the rows of all positions."""
    return a.reshape(-1, a.shape[-1])


class KFACPreconditioner:
    """Factor statistics and the natural-gradient direction for the GEMM layers of a program."""

    def __init__(self, prog, *, damping=1e-2, decay=0.95, T=5, loss="softmax_cross_entropy"):
        self.prog, self.damping, self.decay, self.T, self.loss = prog, float(damping), float(decay), int(T), loss
        self.layers = [(layer.weight, layer.bias) for layer in prog.layers]
        self.A, self.G, self.inv = {}, {}, {}
        self.updates = 0
        covered = {name for w, b in self.layers for name in (w, b) if name}
        self.others = [name for name in prog.layout if name not in covered]

    def factors(self, taps):
        """(A, G) per layer from one batch of taps, before averaging."""
        out, host = {}, self.prog.backend.to_host
        for weight, bias in self.layers:
            a, g = taps[weight]
            n = a.shape[0]
            a, g = _rows(np.asarray(host(a), np.float64)), _rows(np.asarray(host(g), np.float64))
            if bias:
                a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
            out[weight] = (a.T @ a / len(a), g.T @ g / n)
        return out

    def update(self, st, rng):
        """Fold one batch into the moving averages; refresh the inverses every T updates."""
        taps = st.taps(self.prog.backend.asarray(sample_cotangent(self.prog.backend.to_host(st.output), rng, self.loss),
                                                 self.prog.dtype))
        for weight, (A, G) in self.factors(taps).items():
            if weight in self.A:
                A = self.decay * self.A[weight] + (1 - self.decay) * A
                G = self.decay * self.G[weight] + (1 - self.decay) * G
            self.A[weight], self.G[weight] = A, G
        if self.updates % self.T == 0:
            self.refresh()
        self.updates += 1

    def refresh(self):
        gamma = self.damping + self.prog.l2
        for weight, _ in self.layers:
            A, G = self.A[weight], self.G[weight]
            pi = np.sqrt((np.trace(A) / len(A)) / max(np.trace(G) / len(G), 1e-300))
            pi = pi if np.isfinite(pi) and pi > 0 else 1.0
            self.inv[weight] = (np.linalg.inv(A + pi * np.sqrt(gamma) * np.eye(len(A))),
                                np.linalg.inv(G + np.sqrt(gamma) / pi * np.eye(len(G))))

    def direction(self, grad):
        """F^{-1} grad, flat, in the program's dtype (the natural gradient; the descent direction is its
        negative). The factors and their inverses are float64, so each layer's product is too."""
        host = np.asarray(self.prog.backend.to_host(grad))
        views = self.prog.view(host)
        out = np.empty_like(host)
        out_views = self.prog.view(out)
        for weight, bias in self.layers:
            V = _as_matrix(views[weight], views[bias] if bias else None).astype(np.float64)
            Ainv, Ginv = self.inv[weight]
            _from_matrix(Ainv @ V @ Ginv, out_views[weight], out_views[bias] if bias else None)
        for name in self.others:
            out_views[name][...] = views[name] / (self.damping + self.prog.l2)
        return self.prog.backend.asarray(out)

    def state_dict(self):
        # The inverses travel too: those in use were refreshed up to T - 1 updates ago, from older A and G.
        return {"A": dict(self.A), "G": dict(self.G), "inv": dict(self.inv), "updates": self.updates}

    def load_state_dict(self, d):
        self.A, self.G, self.updates = dict(d["A"]), dict(d["G"]), int(d["updates"])
        self.inv = dict(d.get("inv", {}))
        if self.A and not self.inv:        # a checkpoint written before the inverses were saved
            self.refresh()


def _as_matrix(W, b):
    """Dense (in, out) or conv (O, C, kh, kw) weights -> (in, out), with the bias as a last row."""
    M = W if W.ndim == 2 else weights_to_matrix(W).T
    return M if b is None else np.vstack([M, b[None, :]])


def _from_matrix(U, W_out, b_out):
    M = U[:-1] if b_out is not None else U
    W_out[...] = M if W_out.ndim == 2 else weights_from_matrix(M.T, W_out.shape)
    if b_out is not None:
        b_out[...] = U[-1]


@register
class KFAC(Optimizer):
    """Plain KFAC steps: theta <- theta - lr F^{-1} grad."""
    name = "kfac"
    defaults = {"lr": 0.1, "damping": 1e-2, "decay": 0.95, "T": 5, "loss": None, "seed": 0}   # loss: the model's

    def __init__(self, prog, **settings):
        super().__init__(prog, **settings)
        s = self.settings
        s["loss"] = predictive_loss(prog, s["loss"])
        self.precond = KFACPreconditioner(prog, damping=s["damping"], decay=s["decay"], T=s["T"], loss=s["loss"])

    def step(self, theta, batch):
        st = self.prog.bind(theta, batch)
        stats = {"loss": st.loss}
        self.precond.update(st, np.random.default_rng([self.settings["seed"], self.steps]))
        self.steps += 1
        theta_new = theta - self.settings["lr"] * self.precond.direction(st.grad)
        if not finite(theta_new):
            return self._reject(theta, stats)
        return self._accept(theta_new, stats)

    def _state(self):
        return {"kfac": self.precond.state_dict()}

    def _load_state(self, d):
        self.precond.load_state_dict(d["kfac"])

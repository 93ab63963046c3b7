"""Subsampled Gauss-Newton Newton-CG: the method of Wang, Tan and Lin ("Newton methods for
convolutional neural networks", the simpleNN package).

One step on a batch: the gradient on the whole batch, Gauss-Newton products on a random subsample of
it, CG on (G + lam I) d = -grad, a backtracking line search with the Armijo condition, and the
Levenberg-Marquardt update of lam from rho = actual / predicted reduction. Defaults are simpleNN's:
subsample 5%, CG stop at |r| <= 0.1 |grad|, at most 250 CG iterations, lam = 1 multiplied by 3/2 when
rho < 0.25 and by 2/3 when rho >= 0.75, alpha = 1 halved until f(theta + alpha d) <= f + eta alpha g^T d
with eta = 1e-4.

``curvature="hessian"`` uses the exact Hessian (Hv) with Steihaug-CG inside a trust region of
radius ``radius`` (updated like FITRE's: doubled on rho >= 0.75, halved and the step rejected on
rho < 0.25), since H may be indefinite.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Optimizer, finite, register
from .cg import cg, steihaug


def subsample(batch, fraction, minimum, rng):
    """A random subset (at least ``minimum`` rows) of a batch dict, or the batch itself at fraction 1."""
    n = len(next(iter(batch.values())))
    size = min(n, max(int(minimum), math.ceil(fraction * n)))
    if size >= n:
        return batch
    idx = np.sort(rng.choice(n, size, replace=False))
    return {k: v[idx] for k, v in batch.items()}


@register
class NewtonCG(Optimizer):
    name = "newton-cg"
    defaults = {"lam": 1.0, "cg_rtol": 0.1, "cg_maxiter": 250, "gn_fraction": 0.05, "gn_min": 1,
                "lam_up": 1.5, "lam_down": 2 / 3, "rho_low": 0.25, "rho_high": 0.75, "eta": 1e-4,
                "max_backtracks": 20, "curvature": "gn", "radius": 1.0, "max_radius": 100.0, "seed": 0}

    def __init__(self, prog, **settings):
        super().__init__(prog, **settings)
        self.lam, self.radius = float(self.settings["lam"]), float(self.settings["radius"])

    def step(self, theta, batch):
        s = self.settings
        st = self.prog.bind(theta, batch)
        f0, g = st.loss, st.grad
        rng = np.random.default_rng([s["seed"], self.steps])
        self.steps += 1
        stats = {"loss": f0, "lam": self.lam}
        if s["curvature"] == "hessian":
            return self._trust_region_step(theta, batch, st, f0, g, stats)
        sub = subsample(batch, s["gn_fraction"], s["gn_min"], rng)
        sub_st = st if sub is batch else self.prog.bind(theta, sub)
        res = cg(lambda v: sub_st.gv(v) + self.lam * v, -g, rtol=s["cg_rtol"], maxiter=s["cg_maxiter"])
        d = res.x
        gd = float(g @ d)
        dAd = -gd  # CG from zero: its iterate satisfies d^T (G + lam I) d = -g^T d (Galerkin condition)
        stats.update(cg_iters=res.iterations, cg_reason=res.reason)
        if not gd < 0:
            self.lam *= s["lam_up"]
            return self._reject(theta, {**stats, "rho": float("nan"), "alpha": 0.0})
        alpha = 1.0
        for _ in range(s["max_backtracks"]):
            theta_new = theta + alpha * d
            f_new = self.prog.bind(theta_new, batch).loss if finite(theta_new) else float("inf")
            if np.isfinite(f_new) and f_new <= f0 + s["eta"] * alpha * gd:
                break
            alpha /= 2
        else:
            self.lam *= s["lam_up"]
            return self._reject(theta, {**stats, "rho": float("nan"), "alpha": 0.0})
        predicted = -(alpha * gd + 0.5 * alpha * alpha * dAd)
        rho = (f0 - f_new) / predicted
        self.lam *= s["lam_up"] if rho < s["rho_low"] else s["lam_down"] if rho >= s["rho_high"] else 1.0
        return self._accept(theta_new, {**stats, "rho": rho, "alpha": alpha, "loss_after": f_new})

    def _trust_region_step(self, theta, batch, st, f0, g, stats):
        s = self.settings
        res = steihaug(st.hv, g, self.radius, rtol=s["cg_rtol"], maxiter=s["cg_maxiter"])
        stats.update(cg_iters=res.iterations, cg_reason=res.reason, radius=self.radius)
        theta_new = theta + res.x
        f_new = self.prog.bind(theta_new, batch).loss if finite(theta_new) else float("inf")
        rho = (f0 - f_new) / res.model_decrease if res.model_decrease > 0 else float("nan")
        if not (np.isfinite(f_new) and rho >= s["rho_low"]):
            self.radius /= 2
            return self._reject(theta, {**stats, "rho": rho})
        if rho >= s["rho_high"]:
            self.radius = min(2 * self.radius, s["max_radius"])
        return self._accept(theta_new, {**stats, "rho": rho, "loss_after": f_new})

    def _state(self):
        return {"lam": self.lam, "radius": self.radius}

    def _load_state(self, d):
        self.lam, self.radius = float(d["lam"]), float(d["radius"])

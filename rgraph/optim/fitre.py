"""FITRE (Kylasa et al., Algorithm 1): a KFAC natural-gradient direction, its step length from the
quadratic model with the exact Hessian (or Gauss-Newton) product, inside a trust region.

    r = -F^{-1} g (KFAC);  eta = argmin_{|eta r| <= Delta} eta g^T r + eta^2/2 r^T H r
    rho = (f(theta) - f(theta + eta r)) / -m(eta r)   (same mini-batch)
    rho >= 0.75: accept, Delta = min(2 Delta, Delta_max);  rho >= 0.25: accept;  else reject, Delta /= 2

``use_gradient`` ("KFAC + gradient") also minimises the model along -g and takes the step of lower
model value. Defaults: damping 1e-2 and a maximum radius of 10 lie in the paper's grids
(gamma in 1e-3..1e2, Delta_max in 1e-2..1e2, "typical radius between 1e-1 and 10"); KFAC inverses
refreshed every 5 mini-batches and a moving average of 0.95 as in its experiments.
"""
from __future__ import annotations

import numpy as np

from .base import Optimizer, finite, register
from .kfac import KFACPreconditioner, predictive_loss


def model_step(g, p, Hp_dot, radius):
    """(eta, model value) minimising m(eta p) = eta g^T p + eta^2/2 p^T H p over |eta p| <= radius, eta >= 0.

    ``Hp_dot`` is p^T H p. With non-positive curvature, or a minimiser outside, the step ends on the boundary.
    """
    gp = float(g @ p)
    pnorm = float(np.sqrt(float(p @ p)))
    if pnorm == 0 or gp >= 0:
        return 0.0, 0.0
    eta_max = radius / pnorm
    eta = min(-gp / Hp_dot, eta_max) if Hp_dot > 0 else eta_max
    return eta, eta * gp + 0.5 * eta * eta * Hp_dot


@register
class FITRE(Optimizer):
    name = "fitre"
    defaults = {"radius": 1.0, "max_radius": 10.0, "damping": 1e-2, "decay": 0.95, "T": 5,
                "curvature": "hessian", "use_gradient": False, "rho_low": 0.25, "rho_high": 0.75,
                "loss": None, "seed": 0}   # loss: the model's (KFAC's predictive distribution)

    def __init__(self, prog, **settings):
        super().__init__(prog, **settings)
        self.settings["loss"] = predictive_loss(prog, self.settings["loss"])
        self.radius = float(self.settings["radius"])
        self._precond = None

    @property
    def precond(self):
        """The KFAC preconditioner (built on first use; tests may put their own in its place)."""
        if self._precond is None:
            s = self.settings
            self._precond = KFACPreconditioner(self.prog, damping=s["damping"], decay=s["decay"], T=s["T"],
                                               loss=s["loss"])
        return self._precond

    @precond.setter
    def precond(self, value):
        self._precond = value

    def step(self, theta, batch):
        s = self.settings
        st = self.prog.bind(theta, batch)
        f0, g = st.loss, st.grad
        stats = {"loss": f0, "radius": self.radius}
        self.precond.update(st, np.random.default_rng([s["seed"], self.steps]))
        self.steps += 1
        product = st.hv if s["curvature"] == "hessian" else st.gv
        candidates = [("kfac", -self.precond.direction(g))]
        if s["use_gradient"]:
            candidates.append(("gradient", -g))
        best = None
        for name, p in candidates:
            eta, m = model_step(g, p, float(p @ product(p)), self.radius)
            if best is None or m < best[2]:
                best = (name, eta * p, m)
        name, step, m = best
        stats["direction"] = name
        theta_new = theta + step
        f_new = self.prog.bind(theta_new, batch).loss if finite(theta_new) and m < 0 else float("inf")
        rho = (f0 - f_new) / -m if m < 0 else float("nan")
        stats["rho"] = rho
        if not (np.isfinite(f_new) and rho >= s["rho_low"]):
            self.radius /= 2
            return self._reject(theta, stats)
        if rho >= s["rho_high"]:
            self.radius = min(2 * self.radius, s["max_radius"])
        return self._accept(theta_new, {**stats, "loss_after": f_new})

    def _state(self):
        return {"radius": self.radius, "kfac": self.precond.state_dict()}

    def _load_state(self, d):
        self.radius = float(d["radius"])
        self.precond.load_state_dict(d["kfac"])

"""First-order baselines on the same interface: SGD with Nesterov momentum, and Adam."""
from __future__ import annotations

import numpy as np

from .base import Optimizer, finite, register


@register
class SGD(Optimizer):
    """v <- mu v - lr g(theta);  theta <- theta + mu v - lr g  (Nesterov, in the form PyTorch uses)."""
    name = "sgd"
    defaults = {"lr": 0.1, "momentum": 0.9, "nesterov": True}

    def __init__(self, prog, **settings):
        super().__init__(prog, **settings)
        self.velocity = None

    def step(self, theta, batch):
        st = self.prog.bind(theta, batch)
        stats = {"loss": st.loss}
        lr, mu = self.settings["lr"], self.settings["momentum"]
        g = st.grad
        velocity = (mu * self.velocity if self.velocity is not None else 0 * g) - lr * g
        update = mu * velocity - lr * g if self.settings["nesterov"] else velocity
        theta_new = theta + update
        self.steps += 1
        if not (finite(theta_new) and np.isfinite(st.loss)):
            return self._reject(theta, stats)
        self.velocity = velocity
        return self._accept(theta_new, stats)

    def _state(self):
        return {"velocity": None if self.velocity is None else np.asarray(self.velocity)}

    def _load_state(self, d):
        self.velocity = d.get("velocity")


@register
class Adam(Optimizer):
    """m <- b1 m + (1-b1) g; s <- b2 s + (1-b2) g^2; theta <- theta - lr m^ / (sqrt(s^) + eps), with bias
    corrections m^ = m / (1 - b1^t), s^ = s / (1 - b2^t)."""
    name = "adam"
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

    def __init__(self, prog, **settings):
        super().__init__(prog, **settings)
        self.m = self.s = None
        self.t = 0

    def step(self, theta, batch):
        st = self.prog.bind(theta, batch)
        stats = {"loss": st.loss}
        s = self.settings
        g = st.grad
        t = self.t + 1
        m = s["beta1"] * (self.m if self.m is not None else 0 * g) + (1 - s["beta1"]) * g
        v = s["beta2"] * (self.s if self.s is not None else 0 * g) + (1 - s["beta2"]) * g * g
        theta_new = theta - s["lr"] * (m / (1 - s["beta1"] ** t)) / ((v / (1 - s["beta2"] ** t)) ** 0.5 + s["eps"])
        self.steps += 1
        if not (finite(theta_new) and np.isfinite(st.loss)):
            return self._reject(theta, stats)
        self.m, self.s, self.t = m, v, t
        return self._accept(theta_new, stats)

    def _state(self):
        return {"m": self.m, "s": self.s, "t": self.t}

    def _load_state(self, d):
        self.m, self.s, self.t = d.get("m"), d.get("s"), int(d.get("t", 0))

"""The optimiser interface: every optimiser works on flat parameter vectors.

    opt = OPTIMIZERS[name](prog, **settings)
    theta, stats = opt.step(theta, batch)     # stats: loss (before the step), accepted, rejected, ...
    opt.state_dict() / opt.load_state_dict(d) # enough to resume bit for bit

A step that would make the parameters or the loss non-finite is rejected: ``step`` returns the very
same ``theta`` it was given and counts the rejection.
"""
from __future__ import annotations

import numpy as np

OPTIMIZERS: dict[str, type] = {}


def register(cls):
    OPTIMIZERS[cls.name] = cls
    return cls


def finite(x) -> bool:
    """True when every entry of an array (NumPy or CuPy, through __array_ufunc__) or scalar is finite."""
    return bool(np.isfinite(x).all())


class Optimizer:
    name = None
    defaults: dict = {}

    def __init__(self, prog, **settings):
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise TypeError(f"optimizer {self.name!r} has no setting(s) {sorted(unknown)}; "
                            f"settings: {sorted(self.defaults)}")
        self.prog = prog
        self.settings = {**self.defaults, **settings}
        self.steps, self.rejected = 0, 0

    def step(self, theta, batch):
        raise NotImplementedError

    def _reject(self, theta, stats):
        """Keep theta untouched and count the rejection."""
        self.rejected += 1
        stats.update(accepted=False, rejected=self.rejected)
        return theta, stats

    def _accept(self, theta_new, stats):
        stats.update(accepted=True, rejected=self.rejected)
        return theta_new, stats

    # --- checkpoints: scalars in a dict, arrays as numpy ---
    def _state(self) -> dict:
        return {}

    def _load_state(self, state):
        pass

    def state_dict(self) -> dict:
        return {"name": self.name, "settings": dict(self.settings), "steps": self.steps, "rejected": self.rejected,
                **self._state()}

    def load_state_dict(self, d) -> None:
        if d.get("name") != self.name:
            raise ValueError(f"state of optimizer {d.get('name')!r} cannot be loaded into {self.name!r}")
        self.settings = dict(d["settings"])
        self.steps, self.rejected = int(d["steps"]), int(d["rejected"])
        self._load_state(d)

    def __repr__(self):
        return f"<{type(self).__name__} {self.settings}>"

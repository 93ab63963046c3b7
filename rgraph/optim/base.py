"""The optimiser interface: every optimiser works on flat parameter vectors.

    opt = OPTIMIZERS[name](prog, **settings)
    theta, stats = opt.step(theta, batch)     # stats: loss (before the step), accepted, rejected, ...
    opt.state_dict() / opt.load_state_dict(d) # enough to resume bit for bit

A step that would make the parameters non-finite is rejected: ``step`` returns the very same ``theta``
it was given and counts the rejection. Newton-CG and FITRE, which evaluate the loss at the new point
anyway, also reject a non-finite loss there; SGD, Adam and KFAC do not evaluate it (no extra forward pass).

Settings are checked once, when the optimiser is built, against one table (``SETTING_RANGES``).
"""
from __future__ import annotations

import numbers

import numpy as np

OPTIMIZERS: dict[str, type] = {}


def register(cls):
    OPTIMIZERS[cls.name] = cls
    return cls


def finite(x) -> bool:
    """True when every entry of an array (NumPy or CuPy, through __array_ufunc__) or scalar is finite."""
    return bool(np.isfinite(x).all())


# The accepted values of every setting whose range is clear, whichever optimiser has it, in the words
# the error message uses: "a number in" or "an integer in" an interval, or a tuple of choices.
# Settings not named here (seed, use_gradient, rho_low, ...) are not checked.
SETTING_RANGES = {
    "lr": "a number in (0, inf)", "radius": "a number in (0, inf)", "max_radius": "a number in (0, inf)",
    "lam": "a number in [0, inf)", "damping": "a number in [0, inf)", "eps": "a number in [0, inf)",
    "decay": "a number in [0, 1)", "momentum": "a number in [0, 1)", "beta1": "a number in [0, 1)",
    "beta2": "a number in [0, 1)", "cg_rtol": "a number in [0, 1)", "eta": "a number in (0, 1)",
    "gn_fraction": "a number in (0, 1]", "lam_down": "a number in (0, 1]", "lam_up": "a number in [1, inf)",
    "T": "an integer in [1, inf)", "cg_maxiter": "an integer in [1, inf)", "gn_min": "an integer in [1, inf)",
    "max_backtracks": "an integer in [1, inf)",
    "curvature": ("gn", "hessian"), "loss": ("softmax_cross_entropy", "mse", None),
}


def _in_range(value, words) -> bool:
    """True when ``value`` is what ``words`` says: "a number in (0, 1]", "an integer in [1, inf)"."""
    kind, interval = words.split(" in ")
    if not isinstance(value, numbers.Integral if kind == "an integer" else numbers.Real) or isinstance(value, bool):
        return False
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low      # nan compares false: refused
    below = value < high if interval[-1] == ")" else value <= high
    return above and below


def check_settings(optimizer, settings) -> None:
    """ValueError at the first setting outside its ``SETTING_RANGES`` entry, naming the optimiser, the
    setting, the value given and the accepted range."""
    for key, value in settings.items():
        accepted = SETTING_RANGES.get(key)
        if accepted is None:
            continue
        if isinstance(accepted, tuple):
            ok, words = value in accepted, "one of " + ", ".join(map(repr, accepted))
        else:
            ok, words = _in_range(value, accepted), accepted
        if not ok:
            raise ValueError(f"optimizer {optimizer!r}: {key}={value!r} is out of range; {key} must be {words}")


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
        check_settings(self.name, self.settings)
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

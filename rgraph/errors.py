"""The error hierarchy. Every message names the op, the node and the shapes involved."""


class RgraphError(Exception):
    """Base class of every error rgraph raises on purpose."""


class ShapeError(RgraphError, ValueError):
    """Shapes or dtypes that do not fit together, found while building a graph."""


class RuleError(RgraphError, NotImplementedError):
    """An op lacks a rule (vjp, rop) that a derived pass needs, or a rule returned something malformed."""


class BindError(RgraphError, ValueError):
    """A batch or parameter vector that does not match the compiled program."""


class CheckError(RgraphError, AssertionError):
    """A numerical check of an op rule or of a derived pass failed."""


def fmt_shape(shape):
    """(None, 3) -> '(N, 3)': the batch dimension reads as N in messages."""
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"

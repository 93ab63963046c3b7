"""Conjugate gradient on flat vectors, plain and Steihaug-Toint (trust region).

Both take the matrix as a callable ``matvec(v) -> A v`` and work on NumPy or CuPy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CGResult:
    x: object
    iterations: int
    residual_norm: float
    reason: str                  # converged | maxiter | negative_curvature | boundary
    model_decrease: float = float("nan")   # -(g^T d + d^T A d / 2), Steihaug only


def _norm(v):
    return float(np.sqrt(float(v @ v)))


def cg(matvec, b, *, x0=None, rtol=0.1, atol=0.0, maxiter=250, precond=None) -> CGResult:
    """Solve A x = b for symmetric positive definite A; stop when |r| <= max(rtol |b|, atol).

    On a direction of non-positive curvature (p^T A p <= 0) it stops and returns the iterate so far
    (zero at the first iteration) with reason "negative_curvature". ``precond(r)`` applies M^{-1}.
    """
    x = b * 0 if x0 is None else x0.copy()
    r = b - matvec(x) if x0 is not None else b.copy()
    z = precond(r) if precond else r
    p = z.copy()
    rz = float(r @ z)
    tol = max(rtol * _norm(b), atol)
    for k in range(maxiter):
        rnorm = _norm(r)
        if rnorm <= tol:
            return CGResult(x, k, rnorm, "converged")
        Ap = matvec(p)
        pAp = float(p @ Ap)
        if pAp <= 0:
            return CGResult(x, k, rnorm, "negative_curvature")
        alpha = rz / pAp
        x += alpha * p
        r -= alpha * Ap
        z = precond(r) if precond else r
        rz, rz_old = float(r @ z), rz
        p = z + (rz / rz_old) * p
    rnorm = _norm(r)
    return CGResult(x, maxiter, rnorm, "converged" if rnorm <= tol else "maxiter")


def _to_boundary(d, p, radius):
    """tau >= 0 with |d + tau p| = radius."""
    dd, dp, pp = float(d @ d), float(d @ p), float(p @ p)
    return (-dp + np.sqrt(dp * dp + pp * (radius * radius - dd))) / pp


def steihaug(matvec, g, radius, *, rtol=0.1, maxiter=250) -> CGResult:
    """Approximately minimise m(d) = g^T d + d^T A d / 2 subject to |d| <= radius (A may be indefinite).

    Stops at the boundary ("boundary"), on negative curvature (moving to the boundary along the
    current direction, "negative_curvature"), when |A d + g| <= rtol |g| ("converged") or at maxiter.
    ``model_decrease`` = -m(d), from A d accumulated along the way (no extra product).
    """
    d, Ad = g * 0, g * 0
    r = -g.copy()
    p = r.copy()
    rr = float(r @ r)
    tol = rtol * _norm(g)

    def result(k, reason):
        return CGResult(d, k, np.sqrt(rr), reason, -(float(g @ d) + 0.5 * float(d @ Ad)))
    for k in range(maxiter):
        if np.sqrt(rr) <= tol:
            return result(k, "converged")
        Ap = matvec(p)
        pAp = float(p @ Ap)
        if pAp <= 0:
            tau = _to_boundary(d, p, radius)
            d += tau * p
            Ad += tau * Ap
            return result(k + 1, "negative_curvature")
        alpha = rr / pAp
        if _norm(d + alpha * p) >= radius:
            tau = _to_boundary(d, p, radius)
            d += tau * p
            Ad += tau * Ap
            return result(k + 1, "boundary")
        d += alpha * p
        Ad += alpha * Ap
        r -= alpha * Ap
        rr, rr_old = float(r @ r), rr
        p = r + (rr / rr_old) * p
    return result(maxiter, "converged" if np.sqrt(rr) <= tol else "maxiter")

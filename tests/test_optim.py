"""Optimisers: CG against a direct solve, Steihaug's stopping rules, the Newton-CG and FITRE bookkeeping
step by step on constructed problems, KFAC against direct computations, and a convex sanity check."""
import numpy as np
import pytest

import rgraph as rg
from rgraph import data, nn
from rgraph.optim import FITRE, KFAC, SGD, Adam, NewtonCG, cg, make_optimizer, sample_cotangent, steihaug
from rgraph.optim.kfac import KFACPreconditioner

rng = np.random.default_rng(0)


# --- CG ----------------------------------------------------------------------------------------

def _spd(n, cond=10.0):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return Q @ np.diag(np.geomspace(1, cond, n)) @ Q.T


@pytest.mark.parametrize("n", [1, 5, 30])
def test_cg_matches_a_direct_solve(n):
    A, b = _spd(n), rng.standard_normal(n)
    res = cg(lambda v: A @ v, b, rtol=1e-12, maxiter=10 * n)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-9)
    assert res.reason == "converged" and res.iterations <= n + 2


def test_cg_relative_residual_stop_and_cap():
    A, b = _spd(40, 1e4), rng.standard_normal(40)
    res = cg(lambda v: A @ v, b, rtol=0.1)
    assert np.linalg.norm(b - A @ res.x) <= 0.1 * np.linalg.norm(b) and res.reason == "converged"
    capped = cg(lambda v: A @ v, b, rtol=1e-14, maxiter=3)
    assert capped.iterations == 3 and capped.reason == "maxiter"


def test_preconditioning_cuts_iterations():
    d = np.geomspace(1, 1e5, 60)
    A = np.diag(d) + 1e-3 * _spd(60)
    b = rng.standard_normal(60)
    plain = cg(lambda v: A @ v, b, rtol=1e-8, maxiter=1000)
    pre = cg(lambda v: A @ v, b, rtol=1e-8, maxiter=1000, precond=lambda r: r / np.diag(A))
    np.testing.assert_allclose(pre.x, np.linalg.solve(A, b), rtol=1e-6)
    assert pre.iterations < plain.iterations / 2


def test_cg_reports_negative_curvature():
    res = cg(lambda v: np.array([-1.0, 1.0]) * v, np.array([1.0, 1.0]))
    assert res.reason == "negative_curvature" and np.all(res.x == 0)


def test_steihaug_inside_on_the_boundary_and_on_negative_curvature():
    A, g = _spd(6), rng.standard_normal(6)
    inside = steihaug(lambda v: A @ v, g, radius=1e6, rtol=1e-12)
    np.testing.assert_allclose(inside.x, np.linalg.solve(A, -g), rtol=1e-8)
    assert inside.reason == "converged"
    assert inside.model_decrease == pytest.approx(-(g @ inside.x + 0.5 * inside.x @ A @ inside.x), rel=1e-12)
    edge = steihaug(lambda v: A @ v, g, radius=1e-3 * np.linalg.norm(np.linalg.solve(A, g)))
    assert edge.reason == "boundary" and np.linalg.norm(edge.x) == pytest.approx(edge.x @ edge.x / np.linalg.norm(edge.x))
    assert np.linalg.norm(edge.x) == pytest.approx(1e-3 * np.linalg.norm(np.linalg.solve(A, g)), rel=1e-12)
    D = np.diag([-2.0, 1.0, 3.0])
    neg = steihaug(lambda v: D @ v, np.array([1.0, 0.1, 0.1]), radius=2.0)  # -g^T D -g < 0 at once
    assert neg.reason == "negative_curvature" and np.linalg.norm(neg.x) == pytest.approx(2.0, rel=1e-12)
    assert neg.model_decrease > 0


# --- fake programs with exactly known answers ------------------------------------------------

class Quadratic:
    """f(x) = 1/2 x^T A x - b^T x + shift(x): gv = hv = A v; loss values can be overridden per call."""
    def __init__(self, A, b, losses=None):
        self.A, self.b, self.size, self.l2, self.losses = A, b, len(b), 0.0, list(losses or [])
        self.layout = {"x": (0, (len(b),))}
        self.calls = 0

    def bind(self, theta, batch):
        q = self

        class State:
            loss = q.losses.pop(0) if q.losses else 0.5 * theta @ q.A @ theta - q.b @ theta
            grad = q.A @ theta - q.b

            def gv(self, v):
                return q.A @ v
            hv = gv
        q.calls += 1
        return State()


BATCH = {"x": np.zeros((4, 1))}


def test_newton_cg_accept_and_lambda_down_on_a_quadratic():
    A, b = _spd(5), rng.standard_normal(5)
    opt = NewtonCG(Quadratic(A, b), lam=1e-3, gn_fraction=1.0, cg_rtol=1e-10)
    theta, stats = opt.step(np.zeros(5), BATCH)
    assert stats["accepted"] and stats["alpha"] == 1.0 and stats["rho"] >= 0.75
    assert opt.lam == pytest.approx(1e-3 * 2 / 3)
    np.testing.assert_allclose(theta, np.linalg.solve(A + 1e-3 * np.eye(5), b), rtol=1e-8)


def test_newton_cg_armijo_backtracking_and_lambda_up():
    A, b = np.eye(3), np.ones(3)
    # f0 = 0; alpha = 1 fails Armijo (loss 5), alpha = 1/2 passes with a poor decrease -> rho < 0.25
    prob = Quadratic(A, b, losses=[0.0, 5.0, -0.01])
    opt = NewtonCG(prob, lam=0.0, gn_fraction=1.0, cg_rtol=1e-12)
    theta, stats = opt.step(np.zeros(3), BATCH)
    assert stats["accepted"] and stats["alpha"] == 0.5
    predicted = -(0.5 * -3.0 + 0.125 * 3.0)
    assert stats["rho"] == pytest.approx(0.01 / predicted)
    assert opt.lam == 0.0 * 1.5
    np.testing.assert_allclose(theta, 0.5 * np.ones(3))


def test_newton_cg_rejects_a_step_it_cannot_make_finite_and_keeps_theta():
    prob = Quadratic(np.eye(3), np.ones(3), losses=[0.0] + [np.nan] * 50)
    opt = NewtonCG(prob, lam=1.0, gn_fraction=1.0, max_backtracks=5)
    theta0 = np.array([0.1, 0.2, 0.3])
    theta, stats = opt.step(theta0, BATCH)
    assert theta is theta0 and not stats["accepted"] and stats["rejected"] == 1 and opt.lam == 1.5


class FakePreconditioner:
    def __init__(self, M):
        self.M = M

    def update(self, st, rng):
        pass

    def direction(self, g):
        return self.M @ g


def _fitre(losses, radius=1.0, **kw):
    A, b = np.diag([1.0, 4.0]), np.array([1.0, 1.0])
    opt = FITRE(Quadratic(A, b, losses=losses), radius=radius, max_radius=3.0, **kw)
    opt.precond = FakePreconditioner(np.linalg.inv(A))
    return opt


def test_fitre_accept_doubles_the_radius_up_to_the_cap():
    opt = _fitre([0.0, -0.625], radius=2.0)      # exact Newton step: m = -0.625, rho = 1
    theta, stats = opt.step(np.zeros(2), BATCH)
    np.testing.assert_allclose(theta, [1.0, 0.25])
    assert stats["accepted"] and stats["rho"] == pytest.approx(1.0) and opt.radius == 3.0


def test_fitre_keeps_the_radius_on_middling_rho_and_clips_to_the_region():
    opt = _fitre([0.0, -0.3], radius=0.5)
    theta, stats = opt.step(np.zeros(2), BATCH)
    assert np.linalg.norm(theta) == pytest.approx(0.5) and stats["accepted"] and opt.radius == 0.5
    eta = 0.5 / np.linalg.norm([1.0, 0.25])
    m = eta * -1.25 + 0.5 * eta ** 2 * 1.25
    assert stats["rho"] == pytest.approx(0.3 / -m)


def test_fitre_rejects_and_halves_leaving_theta_bit_for_bit():
    opt = _fitre([0.0, 0.1], radius=2.0)
    theta0 = np.zeros(2)
    theta, stats = opt.step(theta0, BATCH)
    assert theta is theta0 and not stats["accepted"] and opt.radius == 1.0 and stats["rejected"] == 1


def test_fitre_kfac_plus_gradient_picks_the_lower_model_value():
    opt = _fitre([0.0, -1.0], radius=10.0, use_gradient=True)
    opt.precond = FakePreconditioner(np.array([[0.0, 0.0], [0.0, 1.0]]))  # a poor KFAC: sees coordinate 2 only
    theta, stats = opt.step(np.zeros(2), BATCH)
    assert stats["direction"] == "gradient"


# --- KFAC --------------------------------------------------------------------------------------

def test_kfac_factors_equal_a_direct_computation_for_dense_and_conv_layers():
    g = nn.Sequential([nn.Conv2d(2, 3, padding=1), nn.Activation("tanh"), nn.Flatten(), nn.Dense(3)], (2, 4, 4), 3)
    prog = rg.compile(g)
    x, y = rng.standard_normal((5, 2, 4, 4)), rng.integers(0, 3, 5)
    theta = prog.init_params(0)
    st = prog.bind(theta, {"x": x, "y": y})
    u = rng.standard_normal((5, 3))
    taps = st.taps(u)
    pre = KFACPreconditioner(prog)
    factors = pre.factors(taps)
    # conv: patches by explicit loops over positions, columns (kh, kw, C)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.array([[xp[n, :, i:i + 3, j:j + 3].transpose(1, 2, 0).ravel() for i in range(4) for j in range(4)]
                        for n in range(5)])
    a = np.concatenate([patches, np.ones((5, 16, 1))], axis=2)
    A_direct = sum(np.outer(a[n, p], a[n, p]) for n in range(5) for p in range(16)) / 80
    gc = taps["conv1.W"][1]
    G_direct = sum(np.outer(gc[n, p], gc[n, p]) for n in range(5) for p in range(16)) / 5
    np.testing.assert_allclose(taps["conv1.W"][0], patches, rtol=1e-12)
    np.testing.assert_allclose(factors["conv1.W"][0], A_direct, rtol=1e-12)
    np.testing.assert_allclose(factors["conv1.W"][1], G_direct, rtol=1e-12)
    # conv weight gradient from the taps: sum over samples and positions of g a^T, back to OIHW
    dW = np.einsum("npo,npk->ok", gc, patches).reshape(2, 3, 3, 2).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(dW, prog.view(st.jtu(u))["conv1.W"], rtol=1e-10)
    # dense
    ad, gd = taps["fc1.W"]
    a1 = np.concatenate([ad, np.ones((5, 1))], 1)
    np.testing.assert_allclose(factors["fc1.W"][0], a1.T @ a1 / 5, rtol=1e-12)
    np.testing.assert_allclose(factors["fc1.W"][1], gd.T @ gd / 5, rtol=1e-12)
    np.testing.assert_allclose(gd, u, rtol=1e-12)


def test_kfac_direction_of_a_conv_layer_is_the_kronecker_inverse_in_patch_column_order():
    """A_inv V G_inv with V's rows in the patch columns' order (kh, kw, C), mapped back to OIHW."""
    g = nn.Sequential([nn.Conv2d(2, 3, padding=1), nn.Activation("tanh"), nn.Flatten(), nn.Dense(3)], (2, 4, 4), 3)
    prog = rg.compile(g)
    st = prog.bind(prog.init_params(0), {"x": rng.standard_normal((5, 2, 4, 4)), "y": rng.integers(0, 3, 5)})
    pre = KFACPreconditioner(prog, damping=0.1)
    pre.update(st, np.random.default_rng(0))
    grad = prog.view(st.grad)
    direction = prog.view(pre.direction(st.grad))
    Ainv, Ginv = pre.inv["conv1.W"]
    W, b = grad["conv1.W"], grad["conv1.b"]                                # (2, 2, 3, 3), (2,)
    V = np.vstack([W.transpose(2, 3, 1, 0).reshape(18, 2), b[None]])      # rows (kh, kw, C) then the bias
    U = Ainv @ V @ Ginv
    np.testing.assert_allclose(direction["conv1.W"], U[:-1].reshape(3, 3, 2, 2).transpose(3, 2, 0, 1), rtol=1e-10)
    np.testing.assert_allclose(direction["conv1.b"], U[-1], rtol=1e-10)


def test_kfac_direction_equals_the_explicit_kronecker_inverse():
    g = nn.mlp([3, 4, 2], l2=1e-2)
    prog = rg.compile(g)
    st = prog.bind(prog.init_params(0), {"x": rng.standard_normal((6, 3)), "y": rng.integers(0, 2, 6)})
    pre = KFACPreconditioner(prog, damping=0.1)
    pre.update(st, np.random.default_rng(0))
    grad = st.grad
    direction = prog.view(pre.direction(grad))
    views = prog.view(grad)
    gamma = 0.1 + 1e-2
    for layer in ("fc0", "fc1"):
        A, G = pre.A[f"{layer}.W"], pre.G[f"{layer}.W"]
        pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(G) / len(G)))
        F = np.kron(A + pi * np.sqrt(gamma) * np.eye(len(A)), G + np.sqrt(gamma) / pi * np.eye(len(G)))
        V = np.vstack([views[f"{layer}.W"], views[f"{layer}.b"][None]])   # (in + 1, out), row-major vec
        U = np.linalg.solve(F, V.ravel()).reshape(V.shape)
        np.testing.assert_allclose(direction[f"{layer}.W"], U[:-1], rtol=1e-10)
        np.testing.assert_allclose(direction[f"{layer}.b"], U[-1], rtol=1e-10)


def test_sampled_cotangents_have_mean_zero():
    z = rng.standard_normal((4, 3))
    us = np.stack([sample_cotangent(z, np.random.default_rng(k)) for k in range(4000)])
    assert np.abs(us.mean(0)).max() < 0.03
    assert np.allclose(us.sum(axis=2), 0)


def _loss_hessian(loss, z, h=1e-4):
    """d2 loss / dz2 of one sample by central differences (independent of the sampler's formulas)."""
    k = len(z)
    H = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            ea, eb = h * np.eye(k)[a], h * np.eye(k)[b]
            H[a, b] = (loss(z + ea + eb) - loss(z + ea - eb) - loss(z - ea + eb) + loss(z - ea - eb)) / (4 * h * h)
    return H


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_sampled_cotangents_have_the_loss_hessian_as_covariance(loss):
    """E[u u^T] = B, the per-sample loss Hessian: what makes KFAC's G factor the Gauss-Newton's."""
    z = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    gen = np.random.default_rng(3)
    us = np.stack([sample_cotangent(z, gen, loss) for _ in range(20000)])           # (S, N, k)
    per_sample = {"softmax_cross_entropy": lambda v: np.log(np.exp(v).sum()) - v[0],  # B does not depend on y
                  "mse": lambda v: np.sum((v - 0.3) ** 2)}[loss]
    for i in range(len(z)):
        np.testing.assert_allclose(us[:, i].T @ us[:, i] / len(us), _loss_hessian(per_sample, z[i]), atol=0.04)


# --- first order ---------------------------------------------------------------------------------

def test_sgd_nesterov_and_adam_follow_their_equations():
    A, b = _spd(4), rng.standard_normal(4)
    sgd, adam = SGD(Quadratic(A, b), lr=0.1, momentum=0.9), Adam(Quadratic(A, b), lr=0.01)
    x_s = x_a = np.zeros(4)
    v, m, s = np.zeros(4), np.zeros(4), np.zeros(4)
    ref_s = ref_a = np.zeros(4)
    for t in range(1, 4):
        g = A @ ref_s - b
        v = 0.9 * v - 0.1 * g
        ref_s = ref_s + 0.9 * v - 0.1 * g
        x_s, _ = sgd.step(x_s, BATCH)
        g = A @ ref_a - b
        m, s = 0.9 * m + 0.1 * g, 0.999 * s + 0.001 * g * g
        ref_a = ref_a - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(s / (1 - 0.999 ** t)) + 1e-8)
        x_a, _ = adam.step(x_a, BATCH)
        np.testing.assert_allclose(x_s, ref_s, rtol=1e-14)
        np.testing.assert_allclose(x_a, ref_a, rtol=1e-14)


@pytest.mark.filterwarnings("ignore:overflow")
def test_sgd_and_adam_reject_a_step_to_non_finite_parameters():
    """f = -sum(x) (A = 0, b = 1, the loss pinned finite): a step of about lr = 1e308 from x = 1e308 overflows."""
    theta0 = np.full(3, 1e308)
    for cls in (SGD, Adam):
        opt = cls(Quadratic(np.zeros((3, 3)), np.ones(3), losses=[0.0]), lr=1e308)
        theta, stats = opt.step(theta0, BATCH)
        assert theta is theta0 and not stats["accepted"] and stats["rejected"] == 1


def test_state_dict_round_trip_resumes_the_trajectory():
    A, b = _spd(4), rng.standard_normal(4)
    a, c = Adam(Quadratic(A, b), lr=0.05), None
    x = np.zeros(4)
    for _ in range(2):
        x, _ = a.step(x, BATCH)
    c = Adam(Quadratic(A, b))
    c.load_state_dict(a.state_dict())
    xa, xc = x, x.copy()
    for _ in range(3):
        xa, _ = a.step(xa, BATCH)
        xc, _ = c.step(xc, BATCH)
    np.testing.assert_array_equal(xa, xc)
    with pytest.raises(ValueError, match="cannot be loaded"):
        SGD(Quadratic(A, b)).load_state_dict(a.state_dict())
    with pytest.raises(TypeError, match="no setting"):
        make_optimizer("sgd", Quadratic(A, b), radius=1.0)


# --- convex sanity: multinomial logistic regression on digits ------------------------------------

def test_full_batch_newton_cg_solves_logistic_regression_like_lbfgs():
    from scipy.optimize import minimize
    ds = data.load("digits").flat()
    X, Y = ds.x_train[:600], ds.y_train[:600]
    g = nn.mlp([64, 10], l2=1e-2)
    prog = rg.compile(g)
    batch = {"x": X, "y": Y}
    opt = NewtonCG(prog, gn_fraction=1.0, cg_rtol=1e-3, lam=1e-3)
    theta = prog.init_params(0) * 0
    g0 = np.linalg.norm(prog.bind(theta, batch).grad)
    for it in range(30):
        theta, _ = opt.step(theta, batch)
        st = prog.bind(theta, batch)
        if np.linalg.norm(st.grad) <= 1e-8 * g0:
            break
    assert np.linalg.norm(st.grad) <= 1e-8 * g0, (it, np.linalg.norm(st.grad) / g0)
    fun = lambda t: (prog.bind(t, batch).loss, prog.bind(t, batch).grad)  # noqa: E731
    ref = minimize(fun, np.zeros(prog.size), jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
    assert st.loss == pytest.approx(ref.fun, rel=1e-6)


# --- real programs: float32, resuming mid-refresh, settings --------------------------------------

def _small_problem(dtype="float64"):
    prog = rg.compile(nn.mlp([6, 8, 3], l2=1e-3), dtype=dtype)
    gen = np.random.default_rng(1)
    batches = [{"x": gen.standard_normal((16, 6)).astype(dtype), "y": gen.integers(0, 3, 16)} for _ in range(8)]
    return prog, batches


@pytest.mark.parametrize("name", ["fitre", "kfac"])
def test_kfac_based_optimizers_train_in_float32_like_in_float64(name):
    trajectories = {}
    for dtype in ("float64", "float32"):
        prog, batches = _small_problem(dtype)
        opt, theta = make_optimizer(name, prog), prog.init_params(0)
        accepted = []
        for batch in batches[:4]:
            theta, stats = opt.step(theta, batch)
            accepted.append(stats["accepted"])
        assert theta.dtype == prog.dtype
        assert opt.precond.direction(prog.bind(theta, batches[4]).grad).dtype == prog.dtype
        trajectories[dtype] = theta, accepted
    (theta64, accepted64), (theta32, accepted32) = trajectories["float64"], trajectories["float32"]
    assert accepted32 == accepted64
    np.testing.assert_allclose(theta32, theta64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["fitre", "kfac", "newton-cg", "sgd", "adam"])
def test_state_dict_round_trip_in_the_middle_of_a_refresh_period_resumes_bit_for_bit(name):
    """3 steps, then a pickled state_dict into a fresh optimiser: KFAC's inverses of step 1 are still in use
    until the refresh at step 6, so they must travel with the state (recomputing them changes the steps)."""
    import pickle
    prog, batches = _small_problem()
    a, theta = make_optimizer(name, prog), prog.init_params(0)
    for batch in batches[:3]:
        theta, _ = a.step(theta, batch)
    c = make_optimizer(name, prog)
    c.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    theta_a, theta_c = theta, theta.copy()
    for batch in batches[3:]:                  # across the refresh at the 6th update
        theta_a, _ = a.step(theta_a, batch)
        theta_c, _ = c.step(theta_c, batch)
        np.testing.assert_array_equal(theta_a, theta_c)


BAD_SETTINGS = [("fitre", "radius", 0.0), ("fitre", "radius", -1.0), ("fitre", "max_radius", 0.0),
                ("fitre", "damping", -1e-3), ("fitre", "decay", 1.0), ("fitre", "decay", 2.0), ("fitre", "T", 0),
                ("fitre", "T", 2.5), ("fitre", "curvature", "foo"), ("fitre", "loss", "hinge"),
                ("kfac", "lr", -0.1), ("kfac", "lr", float("nan")), ("kfac", "decay", -0.5), ("kfac", "T", -1),
                ("newton-cg", "lam", -1.0), ("newton-cg", "gn_fraction", 0.0), ("newton-cg", "gn_fraction", 2.0),
                ("newton-cg", "gn_fraction", -0.5), ("newton-cg", "cg_maxiter", 0), ("newton-cg", "radius", 0.0),
                ("newton-cg", "curvature", "foo"), ("newton-cg", "cg_rtol", 1.5), ("newton-cg", "lam_up", 0.5),
                ("newton-cg", "max_backtracks", 0), ("sgd", "lr", 0.0), ("sgd", "lr", float("inf")),
                ("sgd", "lr", "0.1"), ("sgd", "momentum", 1.0), ("adam", "lr", float("nan")), ("adam", "beta2", 1.0),
                ("adam", "eps", -1.0)]


@pytest.mark.parametrize("name, setting, value", BAD_SETTINGS)
def test_out_of_range_settings_are_refused_with_a_message_naming_them(name, setting, value):
    with pytest.raises(ValueError, match=f"'{name}'.*{setting}={value!r}.*must be"):
        make_optimizer(name, Quadratic(np.eye(2), np.ones(2)), **{setting: value})


def test_every_optimizers_defaults_and_rgraph_trains_settings_pass_the_checks():
    from rgraph.optim import OPTIMIZERS
    from rgraph.train import OPTIMIZER_DEFAULTS
    prog, _ = _small_problem()
    for name in OPTIMIZERS:
        make_optimizer(name, prog)
        make_optimizer(name, prog, **OPTIMIZER_DEFAULTS.get(name, {}))


@pytest.mark.parametrize("name", ["fitre", "kfac"])
def test_kfac_samples_the_models_own_loss_and_refuses_another(name):
    """An mse model trained with KFAC's softmax sampling would get a silently wrong curvature."""
    for loss in ("softmax_cross_entropy", "mse"):
        prog = rg.compile(nn.mlp([6, 8, 3], loss=loss, l2=1e-3))
        opt = make_optimizer(name, prog)
        assert opt.settings["loss"] == opt.precond.loss == loss
    with pytest.raises(ValueError, match="loss='softmax_cross_entropy', but the model's loss is 'mse'"):
        make_optimizer(name, prog, loss="softmax_cross_entropy")
    g = nn.mlp([6, 8, 3])
    g.loss_kind = None   # a hand-built graph that does not say: softmax cross-entropy, or the setting
    assert make_optimizer(name, rg.compile(g), loss="mse").precond.loss == "mse"
    assert make_optimizer(name, rg.compile(g)).precond.loss == "softmax_cross_entropy"

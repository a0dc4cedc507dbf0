"""Blocked Gibbs sampler for the conjugate LG-SSM (one chain; the engine vmaps it).

The chain is (params, states).  One sweep: (1) draw missing emission entries from their conditional
given the states (data augmentation, so the emission block stays conjugate); (2) draw each parameter
block from its conjugate conditional: (m0, S0) ~ NIW, ([F, B, b], Q) ~ MNIW, ([H, D, d], R) ~ MNIW,
with dynamax's priors; (3) Metropolis moves along the directions the likelihood cannot see (a change
of latent coordinates, ``latent_space_moves``), which the Gibbs blocks alone explore by a slow random
walk; (4) draw the latent states of every sequence by forward filtering, backward sampling (FFBS
through ``sampler.core.kalman``), whose forward filter also gives the new parameters' likelihood.
The three blocks of (2) are independent given the states and are drawn together (``draw_blocks``).
A chain starts from parameters alone (``undrawn_states``): its first sweep skips (2), which would
condition on states it does not have, so its states come from (4).  Frozen leaves are held fixed
and the free part of a block is drawn from its conditional given them (``block_conditional``):
this is exact for any frozen subset, which dynamax's ``fit_blocked_gibbs`` does not support.

Hand-written rather than wrapping ``fit_blocked_gibbs`` because that runs a Python loop over draws,
cannot be vmapped over datasets x chains, and has no missing data or frozen leaves.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core import draws, priors
from sampler.core.kalman import (kalman_filter, observed_noise, row_moments, small_cholesky, small_matmul,
                                 small_solve_lower)
from sampler.core.kalman.linalg import UNROLL_MAX_DIM, CholeskyFactor, cholesky_factor
from sampler.core.model import Model


def _sym(A):
    return 0.5 * (A + jnp.swapaxes(A, -1, -2))


def _mvn(eps, mean, cov):
    """mean + chol(cov) eps: a draw of N(mean, cov) from standard normals ``eps``."""
    L = small_cholesky(_sym(cov) + 1e-12 * jnp.eye(cov.shape[-1], dtype=cov.dtype))
    # a dot, not ``small_matmul``: unrolled, XLA fuses the normals' generation into every entry of the
    # product and computes each normal S times (measured: docs/performance.md)
    return mean + jnp.einsum("...ij,...j->...i", L, eps)


def _inputs_or_zeros(params: ParamsLGSSM, T: int, inputs):
    """Inputs as (T, U) (zeros of width 0 when the model has none)."""
    return jnp.zeros((T, 0), params.initial.mean.dtype) if inputs is None else inputs


def data_moments(emissions, inputs=None):
    """Per-sequence ``row_moments`` of emissions (M, T, D) and inputs (M, T, U) or None: what the
    sweep reads of the data besides h_t, computed once per block of sweeps (``kernels.Target``)."""
    M, T, _ = emissions.shape
    u = jnp.zeros((M, T, 0), emissions.dtype) if inputs is None else inputs
    return jax.vmap(row_moments)(emissions, u)


def _gram_of_y(moments):
    """sum over sequences and rows of y_t y_t^T, from per-sequence ``RowMoments`` (leading axis M):
    each sequence's centred block plus n c c^T (n its complete rows, the Gram matrix's last entry)."""
    D = moments.centre.shape[-1]
    c, n = moments.centre, moments.gram[:, -1, -1]
    return jnp.sum(moments.gram[:, :D, :D] + n[:, None, None] * c[:, :, None] * c[:, None, :], axis=0)


def sample_states(key, model: Model, params: ParamsLGSSM, emissions, inputs=None, moments=None,
                  emission_factor: Optional[CholeskyFactor] = None):
    """One draw of x_{1:T} ~ p(x | y, params) for one sequence, and log p(y | params) (the forward
    filter's, so that a sweep's recorded lp costs no filter pass of its own).

    emissions (T, D) -> (states (T, S), log-likelihood ()); ``moments``: the sequence's
    ``row_moments``, if known; ``emission_factor``: R's ``CholeskyFactor``, if known.  The T x S
    standard normals come from one draw: a key split and a small draw per time step cost more than
    the backward pass's arithmetic at these sizes (docs/performance.md)."""
    T = emissions.shape[0]
    log_likelihood, means, covs = kalman_filter(params, emissions, inputs, form=model.moments_form,
                                                partial_missing=model.partial_missing, moments=moments,
                                                emission_factor=emission_factor)
    u = _inputs_or_zeros(params, T, inputs)
    F, Q = params.dynamics.weights, params.dynamics.cov
    B, b = params.dynamics.input_weights, params.dynamics.bias
    noise = draws.normal(key, means.shape, means.dtype)
    x_last = _mvn(noise[-1], means[-1], covs[-1])
    mm = small_matmul

    def backward_terms(m, P, u_next, eps):
        # x_t | x_{t+1} ~ N(m + G r, P - G P_pred G^T), G = P F^T P_pred^-1, r = x_{t+1} - F m - B u - b;
        # with P_pred = Lp Lp^T and W = Lp^-1 F P: G = W^T Lp^-1 and G P_pred G^T = W^T W.  None of it
        # depends on x_{t+1}, so it is computed for every t at once, outside the sequential scan:
        # x_t = offset_t + G_t x_{t+1}.
        eye = jnp.eye(m.shape[-1], dtype=m.dtype)
        FP = mm(F, P)
        Lp = small_cholesky(_sym(mm(FP, F.T) + Q))
        W = small_solve_lower(Lp, FP)
        G = mm(W.T, small_solve_lower(Lp, eye))
        return _mvn(eps, m - mm(G, mm(F, m) + B @ u_next + b), P - mm(W.T, W)), G

    offsets, gains = jax.vmap(backward_terms)(means[:-1], covs[:-1], u[1:], noise[:-1])

    def back(x_next, xs):
        offset, G = xs
        x = offset + mm(G, x_next)
        return x, x

    _, xs = jax.lax.scan(back, x_last, (offsets, gains), reverse=True)
    return jnp.concatenate([xs, x_last[None]], axis=0), log_likelihood


def impute_missing(key, params: ParamsLGSSM, emissions, states, inputs=None):
    """Fill NaN entries of ``emissions`` (T, D) with a draw from p(y_missing | y_observed, x, params).

    Matheron's rule: draw e ~ N(0, R) and correct it by the observed residual, so one D x D solve per
    time step handles any missingness pattern.
    """
    T, D = emissions.shape
    u = _inputs_or_zeros(params, T, inputs)
    H, d, Dw, R = (params.emissions.weights, params.emissions.bias,
                   params.emissions.input_weights, params.emissions.cov)
    observed = jnp.isfinite(emissions)
    mean = states @ H.T + u @ Dw.T + d
    noise = draws.normal(key, (T, D), emissions.dtype) @ jnp.linalg.cholesky(R).T
    resid = jnp.where(observed, emissions - mean - noise, 0.0)
    R_obs = observed_noise(R, observed)  # (T, D, D): R on observed block, I elsewhere
    w = jnp.linalg.solve(R_obs, resid[..., None])[..., 0]  # zero on missing entries
    return jnp.where(observed, emissions, mean + noise + w @ R.T)


class BlockConditional(NamedTuple):
    """One regression block's conditional p(W_a, Sigma | Y, Z, W_f) (``block_conditional``), drawn
    by ``draw_blocks``: Sigma ~ IW(df, scale) where Sigma is drawn, then the free columns
    W_a = mean + G N col_factor with G G^T = Sigma and N (k, |a|) standard normal."""
    W: jax.Array                      # (k, p) current value; its frozen columns stay
    Sigma: jax.Array                  # (k, k) current value, kept where not drawn
    df: Optional[jax.Array]           # inverse-Wishart degrees of freedom; None: Sigma is not drawn
    scale: Optional[jax.Array]        # (k, k) inverse-Wishart scale
    mean: Optional[jax.Array]         # (k, |a|) the free columns' conditional mean; None: none free
    col_factor: Optional[jax.Array]   # (|a|, |a|) L^-1 with Sxx^-1 = L^-T L^-1
    free: tuple[int, ...]             # static: the free columns a

    def num_normals(self) -> int:
        k = self.Sigma.shape[-1]
        return (k * (k - 1) // 2 if self.df is not None else 0) + k * len(self.free)


def block_conditional(Y, Z, W, Sigma, prior, free_cols: Sequence[bool], sigma_free: bool,
                      gram_y=None) -> BlockConditional:
    """The conditional of the free part of (W, Sigma) given Y = Z W^T + N(0, Sigma) and the frozen part.

    Args:
        Y: (N, k) responses.  Z: (N, p) regressors.  W: (k, p), Sigma: (k, k) current values.
        gram_y: Y^T Y (k, k) if known (the data's, computed once per block), else computed here.
        prior: dynamax MNIW-like (loc (k, p), col_precision (p, p), df, scale (k, k)):
            W | Sigma ~ MN(loc, Sigma, col_precision^-1), Sigma ~ IW(df, scale).
        free_cols: static, which columns of W are sampled (the others are frozen).
        sigma_free: static, whether Sigma is sampled.

    Given the frozen columns f, the free columns a have the conditional prior
    MN(M0_a - (W_f - M0_f) L_fa L_aa^-1, Sigma, L_aa^-1) (L = col_precision), and W_f contributes
    |f| degrees of freedom and (W_f - M0_f) [(L^-1)_ff]^-1 (W_f - M0_f)^T to Sigma's inverse Wishart.
    """
    M0, Lam, nu0, Psi0 = prior.loc, prior.col_precision, prior.df, prior.scale
    a = tuple(i for i, free in enumerate(free_cols) if free)
    f = [i for i, free in enumerate(free_cols) if not free]
    fixed = BlockConditional(W, Sigma, None, None, None, None, ())
    if not a and not sigma_free:
        return fixed
    nu, Psi = nu0, Psi0
    if f:
        gram_y = None  # Y loses the frozen columns' part here
        Wf, M0f = W[:, f], M0[:, f]
        Y = Y - Z[:, f] @ Wf.T
        E = Wf - M0f
        V_ff = jnp.linalg.inv(Lam)[np.ix_(f, f)]
        Psi = Psi + E @ jnp.linalg.solve(V_ff, E.T)
        nu = nu + len(f)
    df = jnp.asarray(nu + Y.shape[0], Sigma.dtype)
    Syy = Y.T @ Y if gram_y is None else gram_y
    if not a:  # every column frozen: Sigma | W ~ IW(nu + N, Psi + residual scatter)
        return fixed._replace(df=df, scale=_sym(Psi + Syy))
    Lam_aa = Lam[np.ix_(a, a)]
    M0a = M0[:, a]
    if f:
        M0a = M0a - E @ Lam[np.ix_(f, a)] @ jnp.linalg.inv(Lam_aa)
    Za = Z[:, a]
    Sxx = _sym(Lam_aa + Za.T @ Za)
    Sxy = Za.T @ Y + Lam_aa @ M0a.T
    Syy = Syy + M0a @ Lam_aa @ M0a.T
    L_inv = small_solve_lower(small_cholesky(Sxx), jnp.eye(len(a), dtype=Sxx.dtype))  # Sxx^-1 = L_inv^T L_inv
    Mn = (L_inv.T @ (L_inv @ Sxy)).T  # (k, |a|)
    posterior = fixed._replace(mean=Mn, col_factor=L_inv, free=a)
    if not sigma_free:
        return posterior
    if jnp.finfo(Sigma.dtype).bits < 64:
        # the residual scatter from the residuals: Syy - Mn Sxy cancels catastrophically in float32
        # once the data or the states are large (an explosive draw's x ~ 1e3 gave a scale with a
        # negative eigenvalue, then NaN: docs/performance.md); in float64 the Gram form is exact
        # enough and spares a (N, k) product per sweep
        E, D0 = Y - Za @ Mn.T, Mn - M0a
        return posterior._replace(df=df, scale=_sym(Psi + E.T @ E + D0 @ Lam_aa @ D0.T))
    return posterior._replace(df=df, scale=_sym(Psi + Syy - Mn @ Sxy))


class DrawnBlock(NamedTuple):
    """A block's draw: W (k, p), Sigma (k, k), and Sigma's lower Cholesky factor where Sigma was
    drawn (it comes with the draw: ``priors.inverse_wishart_factor``), else None."""
    W: jax.Array
    Sigma: jax.Array
    Sigma_chol: Optional[jax.Array]


def draw_blocks(key, blocks: Sequence[BlockConditional]) -> list[DrawnBlock]:
    """The draw of each of independent ``blocks``, drawn together: one gamma draw for every
    Bartlett diagonal and one normal draw for all the other variates, because each random-number
    call inlines its own hash (and the gamma its rejection loop) into the compiled sweep
    (docs/performance.md)."""
    dtype = blocks[0].Sigma.dtype
    k_chi, k_normal = jax.random.split(key)
    shapes = [priors.inverse_wishart_bartlett_shapes(b.df, b.Sigma.shape[-1], dtype) for b in blocks
              if b.df is not None]
    chi2 = 2.0 * priors.sample_gamma(k_chi, jnp.concatenate(shapes)) if shapes else None
    num_normals = sum(b.num_normals() for b in blocks)
    normals = draws.normal(k_normal, (num_normals,), dtype) if num_normals else jnp.zeros((0,), dtype)
    out, i_chi, i_normal = [], 0, 0
    for b in blocks:
        k = b.Sigma.shape[-1]
        W, Sigma, G = b.W, b.Sigma, None
        if b.df is not None:
            offdiag = k * (k - 1) // 2
            G = priors.inverse_wishart_factor(chi2[i_chi:i_chi + k], normals[i_normal:i_normal + offdiag], b.scale)
            Sigma, i_chi, i_normal = G @ G.T, i_chi + k, i_normal + offdiag
        if b.free:
            G = small_cholesky(Sigma) if G is None else G
            n = k * len(b.free)
            N = normals[i_normal:i_normal + n].reshape(k, len(b.free))
            # W_a = Mn + G N L_inv with G G^T = Sigma, so that rows have covariance L_inv^T L_inv = Sxx^-1
            W, i_normal = W.at[:, list(b.free)].set(b.mean + G @ N @ b.col_factor), i_normal + n
        out.append(DrawnBlock(W, Sigma, G if b.df is not None else None))
    return out


def regression_block(key, Y, Z, W, Sigma, prior, free_cols: Sequence[bool], sigma_free: bool, gram_y=None):
    """Draw the free part of (W, Sigma) from p(W, Sigma | Y, Z, frozen part), Y = Z W^T + N(0, Sigma)
    (arguments as ``block_conditional``'s)."""
    (drawn,) = draw_blocks(key, [block_conditional(Y, Z, W, Sigma, prior, free_cols, sigma_free, gram_y)])
    return drawn.W, drawn.Sigma


def draw_states(key, model: Model, params: ParamsLGSSM, emissions, inputs=None, moments=None,
                emission_factor: Optional[CholeskyFactor] = None):
    """x ~ p(x | y, params) for every sequence and log p(y | params).  emissions (M, T, D); inputs
    (M, T, U) or None; moments: ``data_moments(emissions, inputs)`` or None; emission_factor: R's
    ``CholeskyFactor`` or None.  Returns (states (M, T, S), log-likelihood ())."""
    M = emissions.shape[0]
    keys = jax.random.split(key, M)
    u = inputs if model.input_dim else None
    one = lambda k, y, u, z: sample_states(k, model, params, y, u, z, emission_factor)
    x, ll = jax.vmap(one, in_axes=(0, 0, None if u is None else 0, None if moments is None else 0))(
        keys, emissions, u, moments)
    return x, jnp.sum(ll)


def undrawn_states(model: Model, emissions):
    """(M, T, S) NaN: the states of a chain before its first sweep, for emissions (M, T, D).

    That sweep keeps the parameters the chain starts from (``draw_parameters``) and begins at the
    latent-coordinate moves; its FFBS draws the first states.  A chain thus starts without a filter
    pass of its own, and the program that initialises it compiles no FFBS."""
    M, T, _ = emissions.shape
    return jnp.full((M, T, model.state_dim), jnp.nan, emissions.dtype)


def gibbs_sweep(key, model: Model, params: ParamsLGSSM, states, emissions, inputs=None, moments=None,
                emission_chol=None):
    """One blocked-Gibbs sweep of the chain (params, states), in the order parameters | states, the
    latent-coordinate moves, then states | parameters (FFBS).

    Args:
        params: the chain's parameters.  states: (M, T, S) latent states drawn given them, or
            ``undrawn_states`` (all NaN) before the chain's first sweep.
        emissions: (M, T, D); inputs: (M, T, U) or None.
        moments: ``data_moments(emissions, inputs)`` (the same for every sweep) or None.
        emission_chol: the lower Cholesky factor of ``params.emissions.cov`` if the caller has it
            (a chain's position holds it), else None: factorised here.

    Returns:
        (params, states, log p(y | params), R's ``CholeskyFactor``) after the sweep: the
        log-likelihood of the new params comes from the FFBS's forward filter; R's factor, which
        the emission block draws, serves the moves, the filter and the caller's log prior and
        position, none of which factorises R again.  Ordering the sweep this way (the states carried in
        the chain's state instead of drawn first) is what saves the recorded lp its own filter pass;
        the moves act on the parameters' marginal (they leave the likelihood unchanged) and are
        followed by a fresh draw of the states, so the chain keeps p(params, states | y) invariant.
    """
    k_params, k_states = jax.random.split(key)
    params, R_factor = draw_parameters(k_params, model, params, states, emissions, inputs, moments, emission_chol)
    return (params,) + draw_states(k_states, model, params, emissions, inputs, moments, R_factor) + (R_factor,)


def draw_parameters(key, model: Model, params: ParamsLGSSM, x, emissions, inputs=None, moments=None,
                    emission_chol=None):
    """params ~ p(params | x, y) block by block (conjugate), then the latent-coordinate moves.
    x: (M, T, S) states, or ``undrawn_states`` (all NaN: the blocks then keep ``params``, and only
    the moves act); emissions (M, T, D) with NaN entries imputed here given x; moments as in
    ``gibbs_sweep`` (their y^T y is the emission block's, unless entries were imputed);
    emission_chol: as in ``gibbs_sweep``.  Returns (params, the emission covariance R's
    ``CholeskyFactor``)."""
    M, T, _ = emissions.shape
    undrawn = jnp.all(jnp.isnan(x))
    x = jnp.where(undrawn, jnp.zeros_like(x), x)  # finite stand-ins: a rejection sampler loops on NaN
    start = params
    S, U = model.state_dim, model.input_dim
    k_y, k_blocks, k_move = jax.random.split(key, 3)
    u = jnp.zeros((M, T, 0), emissions.dtype) if inputs is None else inputs
    y = emissions
    if model.has_missing:
        y = jax.vmap(lambda k, yy, xx, uu: impute_missing(k, params, yy, xx, uu if U else None))(
            jax.random.split(k_y, M), emissions, x, u)
    frozen = set(model.frozen)
    ones = jnp.ones((M, T, 1), emissions.dtype)
    prior_of = model.ssm

    # the three blocks are independent given the states: their conditionals, then one joint draw
    # initial state: NIW as a regression of x_1 on a constant
    initial = block_conditional(
        x[:, 0], jnp.ones((M, 1), emissions.dtype), params.initial.mean[:, None], params.initial.cov,
        NIWAsMNIW(prior_of.initial_prior), ["initial.mean" not in frozen], "initial.cov" not in frozen)

    # dynamics: x_{t+1} = [F B b] [x_t; u_{t+1}; 1] + N(0, Q)
    Zd = jnp.concatenate([x[:, :-1], u[:, 1:], ones[:, 1:]], axis=-1).reshape(M * (T - 1), -1)
    Wd = jnp.concatenate([params.dynamics.weights, params.dynamics.input_weights,
                          params.dynamics.bias[:, None]], axis=1)
    free_d = ([("dynamics.weights" not in frozen)] * S + [("dynamics.input_weights" not in frozen)] * U
              + [("dynamics.bias" not in frozen)])
    dynamics = block_conditional(x[:, 1:].reshape(M * (T - 1), S), Zd, Wd, params.dynamics.cov,
                                 prior_of.dynamics_prior, free_d, "dynamics.cov" not in frozen)

    # emissions: y_t = [H D d] [x_t; u_t; 1] + N(0, R), missing entries imputed above
    Ze = jnp.concatenate([x, u, ones], axis=-1).reshape(M * T, -1)
    Ye = y.reshape(M * T, -1)
    We = jnp.concatenate([params.emissions.weights, params.emissions.input_weights,
                          params.emissions.bias[:, None]], axis=1)
    free_e = ([("emissions.weights" not in frozen)] * S + [("emissions.input_weights" not in frozen)] * U
              + [("emissions.bias" not in frozen)])
    gram_y = None if moments is None or model.has_missing else _gram_of_y(moments)
    emission = block_conditional(Ye, Ze, We, params.emissions.cov, prior_of.emission_prior,
                                 free_e, "emissions.cov" not in frozen, gram_y)
    (W0, S0, _), (Wd, Q, _), (We, R, R_chol) = draw_blocks(k_blocks, [initial, dynamics, emission])

    params = ParamsLGSSM(
        initial=params.initial._replace(mean=W0[:, 0], cov=S0),
        dynamics=params.dynamics._replace(weights=Wd[:, :S], input_weights=Wd[:, S:S + U], bias=Wd[:, -1], cov=Q),
        emissions=params.emissions._replace(weights=We[:, :S], input_weights=We[:, S:S + U], bias=We[:, -1], cov=R))
    params = jax.tree.map(lambda kept, drawn: jnp.where(undrawn, kept, drawn), start, params)
    kept_chol = small_cholesky(start.emissions.cov) if emission_chol is None else emission_chol
    # R's factor: the drawn one; the kept one where R is frozen, or in a chain's first sweep
    R_factor = cholesky_factor(R, kept_chol if R_chol is None else jnp.where(undrawn, kept_chol, R_chol))
    if R_chol is not None:
        # R from its factor, the kept R included: nothing then reads the R the caller formed from
        # the chain's position (one batched D x D product fewer per sweep)
        params = params._replace(emissions=params.emissions._replace(cov=R_factor.chol @ R_factor.chol.T))
    if frozen & LATENT_LEAVES:
        return params, R_factor
    return latent_space_moves(k_move, model, params, R_factor), R_factor


#: leaves that a change of latent coordinates x -> A x + c alters.
LATENT_LEAVES = frozenset({"initial.mean", "initial.cov", "dynamics.weights", "dynamics.bias",
                           "dynamics.input_weights", "dynamics.cov", "emissions.weights", "emissions.bias"})
MOVE_ROUNDS, LINEAR_SCALE, SHIFT_SCALE = 4, 0.15, 0.3


def _emission_map(H, d, A_inv, c):
    """(H, d) in latent coordinates x' = A x + c: y = H x + d = (H A^-1) x' + (d - H A^-1 c)."""
    H = H @ A_inv
    return H, d - H @ c


def _transform(params: ParamsLGSSM, A, A_inv, c) -> ParamsLGSSM:
    """Parameters of the same observation model in latent coordinates x' = A x + c."""
    mm = small_matmul
    F = mm(mm(A, params.dynamics.weights), A_inv)
    H, d = _emission_map(params.emissions.weights, params.emissions.bias, A_inv, c)
    return ParamsLGSSM(
        initial=params.initial._replace(mean=mm(A, params.initial.mean) + c,
                                        cov=_sym(mm(mm(A, params.initial.cov), A.T))),
        dynamics=params.dynamics._replace(weights=F, input_weights=A @ params.dynamics.input_weights,
                                          bias=mm(A, params.dynamics.bias) + c - mm(F, c),
                                          cov=_sym(mm(mm(A, params.dynamics.cov), A.T))),
        emissions=params.emissions._replace(weights=H, bias=d))


def cayley(Z):
    """(A, A^-1, log|det A|) of the Cayley map A = (I - Z/2)^-1 (I + Z/2) of Z (S, S).

    A(-Z) = A(Z)^-1 exactly (the factors commute), so Z ~ N(0, s^2) gives a reversible proposal; the
    move's Jacobian uses log|det A| itself.  (Cheaper than ``expm``, whose Pade degree and squaring
    count are data-dependent branches that a vmapped batch evaluates all of.)"""
    eye = jnp.eye(Z.shape[-1], dtype=Z.dtype)
    plus, minus = eye + 0.5 * Z, eye - 0.5 * Z
    (A, logdet_minus), (A_inv, logdet_plus) = small_lu_solve(minus, plus), small_lu_solve(plus, minus)
    return A, A_inv, logdet_plus - logdet_minus


def small_lu_solve(M, rhs):
    """(M^-1 rhs, log|det M|) for a small square M by Gaussian elimination without pivoting, unrolled
    (for I +- Z/2 with small Z the pivots stay near 1; a zero pivot gives a non-finite result, which
    the Metropolis step rejects); LAPACK above ``UNROLL_MAX_DIM``."""
    n = M.shape[-1]
    if n > UNROLL_MAX_DIM:
        sign, logdet = jnp.linalg.slogdet(M)
        return jnp.linalg.solve(M, rhs), logdet
    rows = [M[i] for i in range(n)]
    out = [rhs[i] for i in range(n)]
    logdet = jnp.zeros((), M.dtype)
    for k in range(n):
        pivot = rows[k][k]
        logdet = logdet + jnp.log(jnp.abs(pivot))
        for i in range(k + 1, n):
            factor = rows[i][k] / pivot
            rows[i] = rows[i] - factor * rows[k]
            out[i] = out[i] - factor * out[k]
    x = [None] * n
    for i in reversed(range(n)):
        acc = out[i] - sum((rows[i][j] * x[j] for j in range(i + 1, n)), start=jnp.zeros_like(out[i]))
        x[i] = acc / rows[i][i]
    return jnp.stack(x, axis=0), logdet


def latent_space_moves(key, model: Model, params: ParamsLGSSM, R_factor: CholeskyFactor) -> ParamsLGSSM:
    """Metropolis moves along the likelihood's invariant directions (parameter expansion).

    The likelihood is unchanged by a change of latent coordinates x -> A x + c, so the posterior along
    those directions is the prior times a Jacobian, and states sampled by FFBS then move with them only
    slowly: the Gibbs chain random-walks along the ridge.  Each round proposes a linear map
    A = cayley(Z), Z ~ N(0, LINEAR_SCALE^2) (an involution with Z -> -Z) and then a shift
    c ~ N(0, SHIFT_SCALE^2), accepted with the prior ratio times the map's Jacobian
    |A|^(2S + 4 + U - D) (m0, S0, B, b, Q, H transform; F by similarity).  Only the rotation- and
    shift-dependent leaves change; R, D and the likelihood do not, so the prior's R-only terms and
    R's factor (``R_factor``, R's ``CholeskyFactor``) serve every round and the current value is
    carried.  The emission weights whitened by R's factor, L^-1 [H, D, d], change with the
    coordinates as (H, d) do (``_emission_map``) and are carried too, so that a round's prior
    (``priors.latent_log_prior``) multiplies by no D x D matrix.  Used when none of them is frozen.
    """
    S, D, U = model.state_dim, model.emission_dim, model.input_dim
    ssm = model.ssm
    logdet_power = 2 * S + 4 + U - D
    dtype = params.emissions.cov.dtype
    whitened_loc = R_factor.chol_inv @ ssm.emission_prior.loc
    log_target = lambda p, white: priors.latent_log_prior(ssm, p, jnp.column_stack(white), whitened_loc)

    def propose(current, A, A_inv, c):
        params, (P_H, P_D, P_d), _ = current
        P_H, P_d = _emission_map(P_H, P_d, A_inv, c)
        return _transform(params, A, A_inv, c), (P_H, P_D, P_d)

    def accept(log_u, current, proposal, log_jac):
        new_lp = log_target(*proposal)
        log_ratio = new_lp - current[2] + log_jac
        ok = (log_u < log_ratio) & jnp.isfinite(log_ratio)
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), proposal + (new_lp,), current)

    def one_round(current, noise):
        z, c, log_u = noise
        A, A_inv, logdet = cayley(LINEAR_SCALE * z)
        current = accept(log_u[0], current, propose(current, A, A_inv, jnp.zeros(S, dtype)),
                         logdet_power * logdet)
        eye = jnp.eye(S, dtype=dtype)
        return accept(log_u[1], current, propose(current, eye, eye, SHIFT_SCALE * c), 0.0), None

    # every round's randomness in two draws (per-call RNG cost adds up over 4 rounds x 1,000s of chains)
    k_normal, k_uniform = jax.random.split(key)
    normals = draws.normal(k_normal, (MOVE_ROUNDS, S * S + S), dtype)
    noise = (normals[:, :S * S].reshape(MOVE_ROUNDS, S, S), normals[:, S * S:],
             jnp.log(draws.uniform(k_uniform, (MOVE_ROUNDS, 2), dtype)))
    em = params.emissions
    P = R_factor.chol_inv @ jnp.column_stack((em.weights, em.input_weights, em.bias))
    white = (P[:, :S], P[:, S:S + U], P[:, -1])
    (params, _, _), _ = jax.lax.scan(one_round, (params, white, log_target(params, white)), noise)
    return params


class NIWAsMNIW:
    """dynamax's NIW(loc, mean_concentration, df, scale) seen as an MNIW with one column."""

    def __init__(self, niw):
        self.loc = niw.loc[:, None]
        self.col_precision = jnp.reshape(jnp.asarray(niw.mean_concentration, niw.loc.dtype), (1, 1))
        self.df, self.scale = niw.df, niw.scale


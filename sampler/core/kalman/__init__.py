"""Kalman filters of a linear Gaussian SSM, one file per form (as dynamax does): ``information``,
``covariance``, ``parallel`` and ``complete`` (rows observed in full or not at all, state-sized work
unrolled); ``filter`` picks one; ``linalg`` holds the unrolled small-matrix algebra the filters (and
the Gibbs sampler's backward pass) share."""
from sampler.core.kalman.common import observed_noise, predict
from sampler.core.kalman.complete import RowMoments, row_moments
from sampler.core.kalman.filter import FORMS, Form, kalman_filter, marginal_log_prob, resolve_form
from sampler.core.kalman.linalg import small_cholesky, small_matmul, small_solve_lower

__all__ = ["FORMS", "Form", "RowMoments", "kalman_filter", "marginal_log_prob", "observed_noise", "predict",
           "resolve_form", "row_moments", "small_cholesky", "small_matmul", "small_solve_lower"]

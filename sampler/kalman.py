"""The public Kalman API (SPEC: ``sampler.kalman.marginal_log_prob``), implemented in
``sampler.core.kalman``."""
from sampler.core.kalman import FORMS, Form, kalman_filter, marginal_log_prob

__all__ = ["FORMS", "Form", "kalman_filter", "marginal_log_prob"]

"""Structural components: each one a block of the state, its transition and its share of y_t.

A structural model of one emission is ``y_t = h' x_t + beta' u_t + N(0, obs_sd^2)``,
``x_t = F x_{t-1} + N(0, Q)``, ``x_1 ~ N(0, diag(initial_sd^2))``, where x stacks the components'
state blocks, F = blockdiag(F_c) and h = concat(h_c), and Q is diagonal: each disturbance standard
deviation ``sd`` drives a fixed set of its component's states (``Disturbance.states``) with
independent N(0, sd^2) noise.  State orders and transitions are statsmodels' ``UnobservedComponents``
ones (level, trend; ``seasonal``; ``freq_seasonal``; ``autoregressive``), so the two agree exactly.

Plain numpy and Python: the config validates against ``KINDS`` before JAX is loaded.

| kind | states | transition | parameters (per emission) |
|---|---|---|---|
| ``level`` | level | random walk | ``sd`` |
| ``local_linear_trend`` | level, slope | level += slope; both random walks | ``level_sd``, ``slope_sd`` |
| ``damped_trend`` | level, slope | level += slope; slope *= damping | ``level_sd``, ``slope_sd``, ``damping`` (0, 1) |
| ``seasonal`` (``harmonics = 0``) | period - 1 | dummy: s_t = -(s_{t-1} + ... + s_{t-period+1}) | ``sd`` |
| ``seasonal`` (``harmonics = k``) | 2k | k rotations by 2 pi j / period, one shared ``sd`` | ``sd`` |
| ``ar`` | order | AR(order), companion form | ``sd``, ``coefficients`` (order,), stationary |
| ``regression`` | none | static: ``coefficients' u_t`` in y_t | ``coefficients`` (input_dim,) |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

KINDS = ("level", "local_linear_trend", "damped_trend", "seasonal", "ar", "regression")
TREND_KINDS = ("level", "local_linear_trend", "damped_trend")

#: Default priors on standardised data (``[data] standardize = true``), by parameter.  Standard
#: deviations are half-normal with this scale: the density is largest at 0, so a deterministic level,
#: slope or seasonal pattern stays reachable (an inverse-gamma / inverse-Wishart vanishes there).
#: ``initial`` is the prior sd of every initial state of the component (mean 0).
DEFAULT_PRIORS: dict[str, dict[str, object]] = {
    "level": {"sd": 0.5, "initial": 2.0},
    "local_linear_trend": {"level_sd": 0.5, "slope_sd": 0.1, "initial": 2.0, "initial_slope": 0.5},
    "damped_trend": {"level_sd": 0.5, "slope_sd": 0.1, "initial": 2.0, "initial_slope": 0.5,
                     "damping": (0.9, 0.1)},
    "seasonal": {"sd": 0.1, "initial": 1.0},
    "ar": {"sd": 0.5, "initial": 1.0, "coefficients": 0.5},
    "regression": {"coefficients": 1.0},
}
#: half-normal scale of the observation noise sd (one per emission).
OBS_SD_SCALE = 0.5


class Disturbance(NamedTuple):
    """One disturbance standard deviation: its parameter name and the states (indices into the
    component's block) it drives, each with its own independent N(0, sd^2) noise."""
    parameter: str
    states: tuple[int, ...]


@dataclass(frozen=True)
class Component:
    """One structural component of every emission (hashable: it is part of the compiled model).

    kind: one of ``KINDS``.  name: prefix of its posterior variables.  period, harmonics: seasonal.
    order: ar.  input_dim: regression.  priors: parameter -> prior setting (``DEFAULT_PRIORS`` keys).
    """
    kind: str
    name: str
    period: int = 0
    harmonics: int = 0
    order: int = 0
    input_dim: int = 0
    priors: tuple[tuple[str, object], ...] = ()

    @classmethod
    def create(cls, kind: str, name: str = "", period: int = 0, harmonics: int = 0, order: int = 0,
               input_dim: int = 0, priors: Mapping[str, object] = ()) -> "Component":
        """A component with the kind's default priors overridden by ``priors`` (checked by
        ``check_component``)."""
        merged = dict(DEFAULT_PRIORS[kind])
        merged.update({k: tuple(v) if isinstance(v, (list, tuple)) else float(v) for k, v in dict(priors).items()})
        return cls(kind, name or kind, period, harmonics, order, input_dim, tuple(sorted(merged.items())))

    def prior(self, parameter: str):
        return dict(self.priors)[parameter]

    @property
    def state_dim(self) -> int:
        if self.kind == "level":
            return 1
        if self.kind in ("local_linear_trend", "damped_trend"):
            return 2
        if self.kind == "seasonal":
            return 2 * self.harmonics if self.harmonics else self.period - 1
        if self.kind == "ar":
            return self.order
        return 0

    @property
    def disturbances(self) -> tuple[Disturbance, ...]:
        if self.kind in ("local_linear_trend", "damped_trend"):
            return (Disturbance("level_sd", (0,)), Disturbance("slope_sd", (1,)))
        if self.kind == "regression":
            return ()
        return (Disturbance("sd", tuple(range(self.state_dim))) if self.kind == "seasonal" and self.harmonics
                else Disturbance("sd", (0,)),)

    @property
    def coefficients(self) -> int:
        """Length of the ``coefficients`` parameter (0: none)."""
        return self.order if self.kind == "ar" else self.input_dim if self.kind == "regression" else 0

    def parameters(self) -> list[tuple[str, str, int]]:
        """(parameter, kind, trailing size) of each of its parameters, in order: the disturbance sds
        (kind ``sd``), the ``damping``, the ``coefficients`` (kind ``ar`` / ``regression``)."""
        out = [(d.parameter, "sd", 0) for d in self.disturbances]
        if self.kind == "damped_trend":
            out.append(("damping", "damping", 0))
        if self.coefficients:
            out.append(("coefficients", self.kind, self.coefficients))
        return out

    def variable(self, parameter: str) -> str:
        """Posterior variable name: ``<name>_<parameter>``; a trend component with its default name
        calls its sds after their states (``level_sd``, ``slope_sd``), as statsmodels and tfp do."""
        if self.name == self.kind and self.kind in TREND_KINDS and parameter.endswith("sd"):
            return "level_sd" if parameter == "sd" else parameter
        return f"{self.name}_{parameter}"

    def initial_sds(self) -> np.ndarray:
        """Prior sd of each initial state of the block."""
        out = np.full(self.state_dim, float(self.prior("initial")) if self.state_dim else 0.0)
        if self.kind in ("local_linear_trend", "damped_trend"):
            out[1] = float(self.prior("initial_slope"))
        return out

    def observation(self) -> np.ndarray:
        """h_c (state_dim,): the block's loading in y_t."""
        h = np.zeros(self.state_dim)
        if self.kind == "seasonal" and self.harmonics:
            h[0::2] = 1.0
        elif self.state_dim:
            h[0] = 1.0
        return h


def check_component(kind: str, period: int, harmonics: int, order: int, input_dim: int,
                    priors: Mapping[str, object]) -> None:
    """Raise ``ValueError`` (one line) for an impossible component."""
    if kind == "seasonal":
        if period < 2:
            raise ValueError(f"seasonal: period = {period}; need period >= 2")
        if harmonics < 0 or harmonics > period // 2:
            raise ValueError(f"seasonal: harmonics = {harmonics}; need 0 (dummy form) .. period / 2 = {period // 2}")
    elif period or harmonics:
        raise ValueError(f"{kind}: period and harmonics apply to kind = \"seasonal\" only")
    if kind == "ar" and order < 1:
        raise ValueError(f"ar: order = {order}; need order >= 1")
    if kind != "ar" and order:
        raise ValueError(f"{kind}: order applies to kind = \"ar\" only")
    if kind == "regression" and input_dim < 1:
        raise ValueError("regression: needs inputs (model.input_dim >= 1 and an inputs array in the data)")
    known = DEFAULT_PRIORS[kind]
    for key, value in dict(priors).items():
        if key not in known:
            raise ValueError(f"{kind}: unknown prior {key!r}; known: {', '.join(known)}")
        if key == "damping":
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and 0 < value[0] < 1 and value[1] > 0):
                raise ValueError(f"{kind}: priors.damping = {value!r}; expected [mean in (0, 1), sd > 0]")
        elif not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{kind}: priors.{key} = {value!r}; expected a positive number")

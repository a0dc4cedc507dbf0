"""Which model a ``[model]`` section describes: the one place a config becomes a model.

Both kinds offer what the engine, kernels, store and predictive passes use: ``dim``,
``initial_params``, ``to_position`` / ``to_params``, ``log_det_jacobian``, ``logdensity_fn``,
``log_likelihood``, ``variables`` (store name -> (shape per dataset, dims)), ``variable_values``,
``lgssm`` (one draw's variables -> dynamax ``ParamsLGSSM``), ``identified`` and the filter forms.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from sampler.core.model import Model
from sampler.core.structural.model import StructuralModel

AnyModel = Union[Model, StructuralModel]


def from_config(model_cfg, emissions: Optional[np.ndarray] = None) -> AnyModel:
    """The model of ``model_cfg`` (``sampler.storage.config.ModelConfig``): structural when it has
    ``components``, else the general LG-SSM; missing-data flags from ``emissions`` (N, M, T, D)."""
    if model_cfg.components:
        return StructuralModel.from_config(model_cfg, emissions)
    return Model.from_config(model_cfg, emissions)

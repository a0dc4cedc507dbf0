"""Write the seed notebook's data (and a batch of datasets from the same true model) as .npz files.

The seed's recipe: state_dim 2, emission_dim 10, T 100, F = 0.99 rotation(pi/10), Q = 0.01 I,
``k1, k2, k3 = split(PRNGKey(0), 3)``, true params from ``initialize(k1, ...)``, emissions from
``sample(true_params, k3, 100)``.  ``seed.npz`` holds that one dataset with the true parameters
(``true_<leaf>``) and, for the frozen-emissions variant, ``init_emissions_weights`` /
``init_emissions_bias`` at their true values as in the seed's second part.

Usage: python make_data.py OUT_DIR [NUM_BATCH_DATASETS]
"""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

jax.config.update("jax_enable_x64", True)
from dynamax.linear_gaussian_ssm import LinearGaussianConjugateSSM  # noqa: E402
from dynamax.utils.utils import random_rotation  # noqa: E402

from sampler.core.leaves import LEAVES, get_leaf, store_name  # noqa: E402


def main(out: Path, num_batch: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
    true_A = 0.99 * random_rotation(seed=k1, n=2, theta=jnp.pi / 10)
    model = LinearGaussianConjugateSSM(2, 10)
    params, _ = model.initialize(key=k1, dynamics_weights=true_A, dynamics_covariance=0.01 * jnp.eye(2))
    _, emissions = model.sample(params, k3, 100)
    truth = {f"true_{store_name(leaf)}": np.asarray(get_leaf(params, leaf)) for leaf in LEAVES}
    np.savez(out / "seed.npz", emissions=np.asarray(emissions)[None], **truth,
             init_emissions_weights=truth["true_emissions_weights"],
             init_emissions_bias=truth["true_emissions_bias"])
    keys = jr.split(jr.PRNGKey(1), num_batch)
    batch = jax.vmap(lambda k: model.sample(params, k, 100)[1])(keys)
    np.savez(out / "batch.npz", emissions=np.asarray(batch), **truth)
    print(f"wrote {out / 'seed.npz'} (1 dataset) and {out / 'batch.npz'} ({num_batch} datasets)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 256)

"""The samplers recover known posteriors (within Monte Carlo error) and frozen leaves never move."""
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sampler
from sampler.core.leaves import LEAVES, set_leaf, store_name
from sampler.core.model import Model
from helpers import simulate, write_config


def quadrature_posterior_of_R(data: dict, model: Model):
    """Posterior mean and sd of the scalar emission variance R with every other leaf fixed at the truth,
    by quadrature of log prior + log likelihood on a fine grid (1-D, so exact up to the grid)."""
    truth = model.initial_params(jax.random.PRNGKey(0), {})
    for leaf in LEAVES:
        truth = set_leaf(truth, leaf, jnp.asarray(data[f"true_{store_name(leaf)}"]))
    y = jnp.asarray(data["emissions"][0])[None]
    grid = jnp.linspace(0.02, 1.5, 6000)

    def logpost(r):
        p = set_leaf(truth, "emissions.cov", jnp.reshape(r, (1, 1)))
        return model.log_joint(p, y)

    lp = jax.vmap(logpost)(grid)
    w = np.exp(np.asarray(lp - lp.max()))
    w /= w.sum()
    mean = float((w * grid).sum())
    return mean, float(np.sqrt((w * (np.asarray(grid) - mean) ** 2).sum()))


# NUTS and ChEES (gradient-based, slower to compile and run) are in the slow set; Gibbs is the default
@pytest.mark.parametrize("algorithm", ["gibbs", pytest.param("nuts", marks=pytest.mark.slow),
                                       pytest.param("chees", marks=pytest.mark.slow)])
def test_recovers_known_posterior_of_R_with_frozen_leaves(tmp_path, algorithm):
    data = simulate(1, state_dim=1, emission_dim=1, T=60, seed=3)
    frozen = [leaf for leaf in LEAVES if leaf != "emissions.cov"]
    np.savez(tmp_path / "d.npz", **data, **{f"init_{store_name(l)}": data[f"true_{store_name(l)}"] for l in frozen})
    cfg = write_config(tmp_path / "c.toml", "d.npz", state_dim=1, emission_dim=1,
                       model={"frozen": frozen},
                       sampler={"algorithm": algorithm, "num_chains": 4, "num_warmup": 200, "num_draws": 800})
    run_dir = sampler.run(cfg, progress=False)
    tree = sampler.open_run(run_dir)
    post = tree["posterior"]
    draws = post["emissions_cov"].values[:, :, 0, 0, 0]  # (chain, draw)
    # frozen leaves never move
    for leaf in frozen:
        values = post[store_name(leaf)].values
        assert np.all(values == data[f"true_{store_name(leaf)}"]), leaf
    mean_q, sd_q = quadrature_posterior_of_R(data, Model(1, 1, frozen=tuple(frozen)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess = float(az.ess(draws))
        rhat = float(az.rhat(draws))
    assert rhat < 1.02
    assert ess > 300
    mc_se = sd_q / np.sqrt(ess)
    assert abs(draws.mean() - mean_q) < 4.5 * mc_se, (draws.mean(), mean_q, mc_se)
    assert draws.std() == pytest.approx(sd_q, rel=0.15)

"""``sampler bench``: the performance benchmark, measured in this process on this machine.

Parts (each a function returning plain dicts, printed as a table or JSON):

* ``grad``  -- gradient evaluations/s of the LG-SSM marginal log-likelihood, ``sampler.kalman``
  against dynamax's ``lgssm_filter``, vmapped over B sequences (T=100, D=10, S=2, as the seed).
* ``parallel`` -- gradient evaluations/s of the sequential information filter against the
  parallel-in-time one (``kalman = "parallel"``, an associative scan) over series length T and
  batch B, with each one's compile time: where the parallel filter wins on this machine.
* ``e2e``   -- dataset-ESS per second: the seed's own procedure (window adaptation with 10 steps,
  HMC with 5 integration steps, 1,000 draws, a Python loop over a jitted step) on one dataset
  against ``sampler run`` on many datasets x 4 chains, both timed from a cold compilation cache.
  Dataset-ESS = sum over datasets of the minimum bulk-ESS over diag(R) (R is identified; F, H are not).
* ``io``    -- the cost of streaming to Zarr + orbax checkpoints: the same run with its draws
  discarded (null sink) against a real run dir, both with warm (already compiled) programs.
* ``rss``   -- peak resident memory of ``sampler run`` (a subprocess) at 1,000 and 10,000 draws.
* ``warmup`` -- on the seed dataset with several chains: NUTS with per-chain window adaptation
  (``algorithm = "nuts"``) against the cross-chain schemes, ChEES (``algorithm = "chees"``, blackjax's
  ``chees_adaptation``) and MEADS (``meads_adaptation`` + ``ghmc``), and the blocked Gibbs kernel:
  ESS of diag(R) per 1,000 gradient evaluations (counting what a vmapped run pays: per draw, the
  longest trajectory among the chains) and per second, beside R-hat and the fraction of draws
  that moved (an ESS from chains that never move is meaningless).
* ``ess``   -- the headline: wall time until every dataset has bulk-ESS >= 400 on diag(R), for each
  kernel, the seed's procedure and dynamax's ``fit_blocked_gibbs`` (``sampler.bench_ess``).

Nothing here is a test: the numbers are measurements, printed with the device they ran on.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

import numpy as np

PARTS = ("grad", "parallel", "e2e", "io", "rss", "warmup", "ess")
#: (T, B) points of the ``parallel`` part: long series with few chains, where the sequential
#: scan's per-step cost is not amortised over a batch, and the seed's shape at large B.
PARALLEL_GRID = ((100, 1), (1000, 1), (10000, 1), (1000, 4), (1000, 64), (100, 1024))
SEED_T, SEED_D, SEED_S = 100, 10, 2


# --- problem -----------------------------------------------------------------------------------------
def seed_params(state_dim: int = SEED_S, emission_dim: int = SEED_D):
    """The seed notebook's true parameters (F = 0.99 rotation(pi/10), Q = 0.01 I) and its model."""
    import jax.numpy as jnp
    import jax.random as jr
    from dynamax.linear_gaussian_ssm import LinearGaussianConjugateSSM
    from dynamax.utils.utils import random_rotation
    k1 = jr.split(jr.PRNGKey(0), 3)[0]
    model = LinearGaussianConjugateSSM(state_dim, emission_dim)
    params, _ = model.initialize(key=k1, dynamics_weights=0.99 * random_rotation(seed=k1, n=state_dim,
                                                                                   theta=jnp.pi / 10),
                                 dynamics_covariance=0.01 * jnp.eye(state_dim))
    return model, params


def seed_emissions(num_datasets: int, num_timesteps: int = SEED_T, seed: int = 1) -> np.ndarray:
    """(num_datasets, T, D) emissions from the seed's true model, one key per dataset."""
    import jax
    import jax.random as jr
    model, params = seed_params()
    keys = jr.split(jr.PRNGKey(seed), num_datasets)
    return np.asarray(jax.jit(jax.vmap(lambda k: model.sample(params, k, num_timesteps)[1]))(keys))


def device_description() -> dict:
    """What the numbers were measured on."""
    import jax
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device": dev.device_kind, "devices": jax.device_count(),
            "cpu_cores": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}


def _time_calls(fn: Callable, *args, min_seconds: float = 1.0, min_calls: int = 3) -> tuple[float, float]:
    """(first call incl. compilation, mean seconds per later call) of a jitted function."""
    import jax
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < min_seconds:
        jax.block_until_ready(fn(*args))
        calls += 1
    return first, (time.perf_counter() - t0) / calls


# --- a. gradient throughput --------------------------------------------------------------------------
def grad_throughput(batches=(1, 64, 1024, 8192), num_timesteps: int = SEED_T,
                    dtype: str = "float64") -> list[dict]:
    """Gradient evaluations/s of the marginal log-likelihood w.r.t. all parameters, ours vs dynamax.

    Each of the B sequences has its own copy of the parameters (as B chains would), so the gradient
    is a full (B, ...) parameter pytree.  "ours" is the path the engine takes for these (complete)
    data: the information form with one factorisation of R per sequence.  "ours_partial_missing" is
    the path it takes when some rows are partly observed: R restricted to each row's observed
    entries, factored at every time step.
    """
    import jax
    import jax.numpy as jnp
    from functools import partial
    from dynamax.linear_gaussian_ssm import lgssm_filter
    from sampler.kalman import marginal_log_prob
    _, params = seed_params()
    rows = []
    for B in batches:
        y = jnp.asarray(seed_emissions(B, num_timesteps), dtype)
        p = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x, dtype), (B,) + jnp.shape(x)), params)
        row = {"batch": B}
        for name, ll in (("ours", partial(marginal_log_prob, partial_missing=False)),
                         ("ours_partial_missing", partial(marginal_log_prob, partial_missing=True)),
                         ("dynamax", lambda q, e: lgssm_filter(q, e).marginal_loglik)):
            fn = jax.jit(jax.vmap(jax.grad(ll)))
            first, per_call = _time_calls(fn, p, y)
            row[f"{name}_grads_per_s"] = B / per_call
            row[f"{name}_compile_s"] = first - per_call
        row["ratio"] = row["ours_grads_per_s"] / row["dynamax_grads_per_s"]
        rows.append(row)
    return rows


def parallel_in_time(grid=PARALLEL_GRID, dtype: str = "float64") -> list[dict]:
    """Gradient evaluations/s, sequential information filter vs the parallel-in-time one, at each
    (T, B) of ``grid`` (seed model, complete data, each sequence with its own parameters)."""
    import jax
    import jax.numpy as jnp
    from functools import partial
    from sampler.kalman import marginal_log_prob
    _, params = seed_params()
    rows = []
    for T, B in grid:
        y = jnp.asarray(seed_emissions(B, T), dtype)
        p = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x, dtype), (B,) + jnp.shape(x)), params)
        row = {"T": T, "batch": B}
        for form in ("information", "parallel"):
            fn = jax.jit(jax.vmap(jax.grad(partial(marginal_log_prob, form=form, partial_missing=False))))
            first, per_call = _time_calls(fn, p, y, min_seconds=0.5)
            row[f"{form}_grads_per_s"] = B / per_call
            row[f"{form}_compile_s"] = first - per_call
        row["parallel_speedup"] = row["parallel_grads_per_s"] / row["information_grads_per_s"]
        rows.append(row)
    return rows


# --- b. end to end -----------------------------------------------------------------------------------
def _min_bulk_ess(r_diag: np.ndarray) -> np.ndarray:
    """r_diag: (chain, draw, dataset, D) -> (dataset,) minimum over D of the bulk ESS
    (``sampler.diagnostics.rank_diagnostics``, arviz's algorithm vectorised)."""
    from sampler.diagnostics import rank_diagnostics
    C, N, K, D = r_diag.shape
    x = np.moveaxis(r_diag, (2, 3), (0, 1)).reshape(K * D, C, N)
    return np.nanmin(rank_diagnostics(x)[1].reshape(K, D), axis=1)


def _max_rhat(r_diag: np.ndarray) -> float:
    """r_diag: (chain, draw, D) -> max over D of the rank-normalised split R-hat."""
    import arviz as az
    return float(np.nanmax([az.rhat(r_diag[:, :, i], method="rank") for i in range(r_diag.shape[-1])]))


def seed_dataset():
    """The seed notebook's one dataset: (T, D) emissions sampled with key k3."""
    import jax.random as jr
    model, true_params = seed_params()
    return model.sample(true_params, jr.split(jr.PRNGKey(0), 3)[2], SEED_T)[1]


def seed_hmc_chain():
    """The seed notebook's ``fit_hmc`` up to its sampling loop, on its one dataset: dynamax's
    ``marginal_log_prob``, window adaptation with 10 steps, HMC with 5 integration steps.

    Returns (step, state, key): ``step(state, key) -> (state, diag(R) of the state it left)`` jitted,
    to be called in a Python loop with ``key`` split once per draw, as the seed does.
    """
    import blackjax
    import jax
    import jax.random as jr
    from dynamax.parameters import from_unconstrained, log_det_jac_constrain, to_unconstrained
    emissions = seed_dataset()
    model, _ = seed_params()
    init_key, key = jr.split(jr.PRNGKey(42))
    params, props = model.initialize(init_key)

    def logprob(unc):
        p = from_unconstrained(unc, props)
        return model.log_prior(p) + model.marginal_log_prob(p, emissions) + log_det_jac_constrain(p, props)

    warmup = blackjax.window_adaptation(blackjax.hmc, logprob, num_integration_steps=5)
    init_key, key = jr.split(key)
    (state, hmc_params), _ = warmup.run(init_key, to_unconstrained(params, props), num_steps=10)
    kernel = blackjax.hmc(logprob, **hmc_params).step

    @jax.jit
    def step(state, step_key):
        new_state, _ = kernel(step_key, state)
        return new_state, jax.numpy.diag(from_unconstrained(state.position, props).emissions.cov)
    return step, state, key


def seed_procedure(num_draws: int = 1000) -> dict:
    """The seed notebook's ``fit_hmc`` on its one dataset, timed from scratch (incl. compilation)."""
    import jax
    import jax.random as jr
    t0 = time.perf_counter()
    step, state, key = seed_hmc_chain()
    r_diag = []
    for _ in range(num_draws):
        step_key, key = jr.split(key)
        state, r = step(state, step_key)
        r_diag.append(r)
    r_diag = np.asarray(jax.block_until_ready(jax.numpy.stack(r_diag)))
    wall = time.perf_counter() - t0
    ess = float(_min_bulk_ess(r_diag[None, :, None, :])[0])
    return {"procedure": "seed fit_hmc (1 dataset, 1 chain)", "datasets": 1, "chains": 1,
            "draws": num_draws, "wall_s": wall, "dataset_ess": ess, "dataset_ess_per_s": ess / wall}


def _config(root: Path, data: Path, num_datasets: int, *, num_chains: int, num_warmup: int,
            num_draws: int, shard_size: int, checkpoint_every: int, algorithm: str, dtype: str):
    from sampler import config
    return config.from_dict({
        "model": {"state_dim": SEED_S, "emission_dim": SEED_D},
        "data": {"path": str(data)},
        "sampler": {"algorithm": algorithm, "num_chains": num_chains, "num_warmup": num_warmup,
                    "num_draws": num_draws, "seed": 0, "dtype": dtype},
        "run": {"dir": str(root / "run"), "checkpoint_every": checkpoint_every, "workers": 0,
                "shard_size": shard_size},
    })


def _write_data(root: Path, num_datasets: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "data.npz"
    if not path.exists():
        np.savez(path, emissions=seed_emissions(num_datasets))
    return path


def sampler_run(root: Path, num_datasets: int, **settings) -> dict:
    """``sampler run`` (in-process, no Ray) on ``num_datasets`` seed-model datasets, timed end to end."""
    from sampler import driver
    from sampler.runner import STORE
    import zarr
    cfg = _config(root, _write_data(root, num_datasets), num_datasets, **settings)
    t0 = time.perf_counter()
    driver.execute(cfg, workers=0, progress=False)
    wall = time.perf_counter() - t0
    R = zarr.open_group(str(root / "run" / STORE), mode="r")["posterior"]["emissions_cov"][...]
    ess = _min_bulk_ess(np.diagonal(R, axis1=-2, axis2=-1))
    return {"procedure": f"sampler run ({cfg.resolved_algorithm()}, {num_datasets} datasets x "
                         f"{cfg.sampler.num_chains} chains)", "datasets": num_datasets,
            "chains": cfg.sampler.num_chains, "draws": cfg.sampler.num_draws, "wall_s": wall,
            "dataset_ess": float(ess.sum()), "dataset_ess_per_s": float(ess.sum()) / wall,
            "datasets_min_ess_over_400": int((ess > 400).sum())}


def streaming_overhead(root: Path, num_datasets: int, repeats: int = 3, **settings) -> dict:
    """Median wall of ``repeats`` real runs against as many null-sink runs, interleaved (real, null,
    real, null, ...) after one run that compiles the programs, so that a shared machine's drift hits
    both alike."""
    sampler_run(root / "warm", num_datasets, **settings)
    real, null = [], []
    for i in range(repeats):
        real.append(sampler_run(root / f"real-{i}", num_datasets, **settings)["wall_s"])
        null.append(null_sink_run(root / f"real-{i}", num_datasets, **settings)["wall_s"])
    real_s, null_s = float(np.median(real)), float(np.median(null))
    return {"datasets": num_datasets, "repeats": repeats, "real_run_dir_s": real_s, "null_sink_s": null_s,
            "overhead": real_s / null_s - 1.0, "real_runs_s": real, "null_runs_s": null}


def null_sink_run(root: Path, num_datasets: int, **settings) -> dict:
    """The same sampling as ``sampler_run`` with every block of draws fetched to the host and dropped:
    no Zarr, no checkpoints."""
    import jax
    from sampler import engine, runner
    cfg = _config(root, _write_data(root, num_datasets), num_datasets, **settings)
    t0 = time.perf_counter()
    ctx = runner.RunContext(cfg, root / "null")  # timed, as it is in sampler_run's driver.execute
    s = cfg.sampler
    for shard in ctx.shards:
        batch, _ = runner._shard_batch(ctx, shard)
        keys = engine.chain_keys(s.seed, batch.dataset, batch.chain)
        chains = engine.init_program(ctx.model, ctx.kernel, s.num_warmup, s.initial_step_size, s.num_chains)(
            keys, batch.emissions, batch.inputs, batch.init_values)
        done = 0
        while done < s.num_draws:
            k = min(cfg.run.checkpoint_every, s.num_draws - done)
            chains, draws = engine.sample_program(ctx.model, ctx.kernel, k)(
                keys, chains, batch.emissions, batch.inputs, np.int32(done))
            jax.tree.map(np.asarray, draws)
            done += k
    return {"sink": "null", "wall_s": time.perf_counter() - t0}


# --- warmup schemes for many chains ------------------------------------------------------------------
def warmup_comparison(num_chains: int = 8, num_warmup: int = 200, num_draws: int = 200,
                      ghmc_factor: int = 10) -> list[dict]:
    """ESS of diag(R) per gradient evaluation and per second for each warmup/kernel scheme on the
    seed dataset.  MEADS's generalized HMC takes one leapfrog step per draw, so it runs
    ``ghmc_factor`` times as many warmup steps and draws.  Wall times include compilation."""
    import blackjax
    import jax
    import jax.numpy as jnp
    from sampler import kernels
    from sampler.model import Model
    model = Model(SEED_S, SEED_D, 0, (), "auto")
    emissions = jnp.asarray(seed_dataset())[None]            # (M=1, T, D)
    keys = jax.random.split(jax.random.PRNGKey(0), num_chains)
    anchors = jax.vmap(lambda k: model.initial_params(k, {}))(keys)
    positions = jax.vmap(model.to_position)(anchors)         # (chains, dim)
    anchor = jax.tree.map(lambda x: x[0], anchors)           # nothing frozen: the anchor is unused
    target = kernels.Target(model, anchor, emissions, None)
    logdensity = target.logdensity_fn()
    r_diag = jax.jit(jax.vmap(jax.vmap(lambda q: jnp.diag(model.to_params(q, anchor).emissions.cov))))

    def per_chain(name):
        kernel = kernels.build(name)

        def chain(key, position):
            kw, ks = jax.random.split(key)
            state, tuning = kernel.warmup(kw, position, target, num_warmup)

            def one(state, xs):
                k, i = xs
                state, stats = kernel.step(k, state, target, tuning, i)
                return state, (state.position, stats.n_steps)
            return jax.lax.scan(one, state, (jax.random.split(ks, num_draws), jnp.arange(num_draws)))[1]
        pos, n = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.PRNGKey(1), num_chains), positions)
        return pos, n                                          # (chains, draws, dim), (chains, draws)

    def grouped(name):
        kernel = kernels.build(name)                           # a cross-chain kernel of the engine
        kw, ks = jax.random.split(jax.random.PRNGKey(1))

        def run(positions):
            states, tuning = kernel.warmup(kw, positions, target, num_warmup)

            def one(states, xs):
                k, i = xs
                states, stats = jax.vmap(lambda kk, st: kernel.step(kk, st, target, tuning, i))(
                    jax.random.split(k, num_chains), states)
                return states, (states.position, stats.n_steps)
            return jax.lax.scan(one, states, (jax.random.split(ks, num_draws), jnp.arange(num_draws)))[1]
        pos, n = jax.jit(run)(positions)
        return jnp.swapaxes(pos, 0, 1), jnp.swapaxes(n, 0, 1)

    def cross_chain(adapt, make_kernel, draws):
        kw, ks = jax.random.split(jax.random.PRNGKey(1))
        (states, params), _ = adapt(kw)
        step = make_kernel(params).step

        def one(states, k):
            states, info = jax.vmap(step)(jax.random.split(k, num_chains), states)
            return states, (states.position, getattr(info, "num_integration_steps", jnp.ones(num_chains, jnp.int32)))
        pos, n = jax.jit(lambda s: jax.lax.scan(one, s, jax.random.split(ks, draws))[1])(states)
        return jnp.swapaxes(pos, 0, 1), jnp.swapaxes(n, 0, 1)

    schemes = {
        "nuts + per-chain window adaptation": lambda: per_chain("nuts"),
        "chees (algorithm = chees, cross-chain)": lambda: grouped("chees"),
        "meads + ghmc (cross-chain)": lambda: cross_chain(
            lambda k: blackjax.meads_adaptation(logdensity, num_chains).run(k, positions, num_warmup * ghmc_factor),
            lambda p: blackjax.ghmc(logdensity, **p), num_draws * ghmc_factor),
        "gibbs (no gradients)": lambda: per_chain("gibbs"),
    }
    rows = []
    for name, fn in schemes.items():
        t0 = time.perf_counter()
        pos, n = jax.block_until_ready(fn())
        wall = time.perf_counter() - t0
        r = np.asarray(r_diag(pos))                           # (chains, draws, D)
        ess = float(_min_bulk_ess(r[:, :, None, :])[0])
        moved = float(np.mean(np.any(np.diff(np.asarray(pos), axis=1) != 0, axis=-1)))
        n = np.asarray(n)
        gibbs = name.startswith("gibbs")
        lockstep = float(n.max(axis=0).sum()) * num_chains    # what a vmapped batch pays
        rows.append({"scheme": name, "draws": int(n.shape[1]), "chains": num_chains, "wall_s": wall,
                     "grads_per_draw": float("nan") if gibbs else float(n.mean()),
                     "lockstep_grads_per_draw": float("nan") if gibbs else lockstep / n.size,
                     "moved": moved, "max_rhat": _max_rhat(r), "min_ess": ess, "ess_per_1k_grads": float("nan") if gibbs else 1000 * ess / lockstep,
                     "ess_per_s": ess / wall})
    return rows


# --- d. memory ---------------------------------------------------------------------------------------
_RSS_CHILD = """
import json, resource, sys
import sampler
sampler.run(sys.argv[1], progress=False)
print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss(root: Path, draws=(1000, 10000), num_datasets: int = 1, num_chains: int = 4) -> list[dict]:
    """Peak RSS of a whole ``sampler run`` in a fresh process, at each number of draws."""
    from sampler import config
    rows = []
    data = _write_data(root, num_datasets)
    for n in draws:
        cfg = _config(root / f"rss-{n}", data, num_datasets, num_chains=num_chains, num_warmup=100,
                      num_draws=n, shard_size=0, checkpoint_every=250, algorithm="auto", dtype="float64")
        (root / f"rss-{n}").mkdir(parents=True, exist_ok=True)
        path = root / f"rss-{n}" / "config.toml"
        path.write_text(config.to_toml(cfg))
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path)], capture_output=True, text=True,
                             check=True)
        rows.append({"draws": n, "datasets": num_datasets, "chains": num_chains,
                     "wall_s": time.perf_counter() - t0, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


# --- driver ------------------------------------------------------------------------------------------
def run(*, quick: bool = False, batches: Optional[str] = None, datasets: Optional[int] = None,
        include: Optional[str] = None, dtype: str = "float64", out: Optional[TextIO] = sys.stdout) -> dict:
    """Run the selected parts (``include``: comma-separated of ``PARTS``; default all) and
    return {"device": ..., part: rows}.  With ``out``, a table is printed as each part finishes.

    The compilation cache is pointed at a fresh directory so that "including compilation" is true.
    """
    parts = tuple(p.strip() for p in include.split(",")) if include else PARTS
    unknown = set(parts) - set(PARTS)
    if unknown:
        from sampler.errors import UserError
        raise UserError(f"--only: unknown part(s) {', '.join(sorted(unknown))} (choose from {', '.join(PARTS)})")
    with tempfile.TemporaryDirectory(prefix="sampler-bench-") as tmp:
        root = Path(tmp)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(root / "xla-cache")
        import jax
        jax.config.update("jax_enable_x64", dtype == "float64")
        results = {"device": device_description(), "dtype": dtype}
        _print(out, f"device: {results['device']}  dtype: {dtype}")
        if "grad" in parts:
            bs = tuple(int(b) for b in batches.split(",")) if batches else ((1, 64) if quick else (1, 64, 1024, 8192))
            results["grad"] = grad_throughput(bs, dtype=dtype)
            _print(out, _table(results["grad"], ("batch", "ours_grads_per_s", "ours_partial_missing_grads_per_s",
                                                 "dynamax_grads_per_s", "ratio")))
        if "parallel" in parts:
            results["parallel"] = parallel_in_time(PARALLEL_GRID[:2] if quick else PARALLEL_GRID, dtype=dtype)
            _print(out, _table(results["parallel"], ("T", "batch", "information_grads_per_s", "parallel_grads_per_s",
                                                     "parallel_speedup", "information_compile_s",
                                                     "parallel_compile_s")))
        n = datasets or (8 if quick else 256)
        draws = 100 if quick else 1000
        settings = dict(num_chains=4, num_warmup=50 if quick else 300, num_draws=draws,
                        shard_size=min(n, 256) if jax.default_backend() == "cpu" else n,
                        checkpoint_every=max(draws // 4, 1), algorithm="auto", dtype=dtype)
        if "e2e" in parts:
            seed = seed_procedure(num_draws=draws)
            ours = sampler_run(root / "e2e", n, **settings)
            results["e2e"] = [seed, ours, {"ratio_dataset_ess_per_s": ours["dataset_ess_per_s"] / seed["dataset_ess_per_s"]}]
            _print(out, _table(results["e2e"][:2], ("procedure", "wall_s", "dataset_ess", "dataset_ess_per_s")))
            _print(out, f"ratio (dataset-ESS/s): {results['e2e'][2]['ratio_dataset_ess_per_s']:.1f}x")
        if "io" in parts:
            m = max(n // 4, 1)
            io_settings = dict(settings, shard_size=min(settings["shard_size"], m))
            results["io"] = [streaming_overhead(root / "io", m, repeats=1 if quick else 3, **io_settings)]
            _print(out, _table(results["io"], ("datasets", "repeats", "real_run_dir_s", "null_sink_s", "overhead")))
        if "rss" in parts:
            results["rss"] = peak_rss(root / "rss", draws=(100, 1000) if quick else (1000, 10000))
            _print(out, _table(results["rss"], ("draws", "datasets", "chains", "max_rss_mb", "wall_s")))
        if "warmup" in parts:
            results["warmup"] = warmup_comparison(num_chains=8, num_warmup=50 if quick else 200,
                                                  num_draws=50 if quick else 200)
            _print(out, _table(results["warmup"], ("scheme", "draws", "wall_s", "grads_per_draw",
                                                   "lockstep_grads_per_draw", "moved", "max_rhat", "min_ess",
                                                   "ess_per_1k_grads",
                                                   "ess_per_s")))
        if "ess" in parts:
            from sampler import bench_ess
            counts = bench_ess.default_datasets(quick, jax.default_backend(), datasets)
            results["ess"] = bench_ess.time_to_ess(
                root / "ess", datasets=counts, dtype=dtype, max_draws=500 if quick else 8000,
                num_warmup=100 if quick else bench_ess.BURN_IN, seed_max_draws=2000 if quick else 20000,
                target=100.0 if quick else bench_ess.TARGET_ESS)
            _print(out, _table(results["ess"], bench_ess.COLUMNS))
    return results


def _print(out: Optional[TextIO], text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)

"""Shared test helpers: small simulated datasets, config files, a CLI runner (subprocess, with a
timeout) and store comparisons.

Tests import them as ``from helpers import ...``: ``tests/`` has no ``__init__.py``, so pytest (its
default ``prepend`` import mode) puts ``tests/`` itself on ``sys.path``, as it does for the test
modules and ``conftest.py``; this works with ``pytest`` and ``python -m pytest`` from any directory.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import jax
import numpy as np
import zarr


def simulate(num_datasets: int, state_dim: int = 1, emission_dim: int = 2, T: int = 40, seed: int = 0,
             num_sequences: int | None = None, input_dim: int = 0) -> dict:
    """Datasets from one dynamax LG-SSM with fixed, well-conditioned parameters (numpy arrays)."""
    import jax.numpy as jnp
    import jax.random as jr
    from dynamax.linear_gaussian_ssm import LinearGaussianConjugateSSM
    from sampler.core.leaves import LEAVES, get_leaf, store_name
    m = LinearGaussianConjugateSSM(state_dim, emission_dim, input_dim)
    params, _ = m.initialize(jr.PRNGKey(seed), dynamics_weights=0.9 * jnp.eye(state_dim),
                             dynamics_covariance=0.1 * jnp.eye(state_dim),
                             emission_covariance=0.2 * jnp.eye(emission_dim))
    M = num_sequences or 1
    keys = jr.split(jr.PRNGKey(seed + 1), num_datasets * M)
    u = jr.normal(jr.PRNGKey(seed + 2), (num_datasets * M, T, input_dim)) if input_dim else None
    if input_dim:
        ys = jax.vmap(lambda k, uu: m.sample(params, k, T, inputs=uu)[1])(keys, u)
    else:
        ys = jax.vmap(lambda k: m.sample(params, k, T)[1])(keys)
    ys = np.array(ys).reshape(num_datasets, M, T, emission_dim)
    out = {"emissions": ys if num_sequences else ys[:, 0]}
    if input_dim:
        uu = np.asarray(u).reshape(num_datasets, M, T, input_dim)
        out["inputs"] = uu if num_sequences else uu[:, 0]
    for leaf in LEAVES:
        out[f"true_{store_name(leaf)}"] = np.asarray(get_leaf(params, leaf))
    return out


def write_config(path: Path, data: str, *, state_dim=1, emission_dim=2, extra: str = "", **sections) -> Path:
    """A config TOML; ``sections`` are dicts of keys per section overriding the small defaults."""
    base = {
        "model": {"state_dim": state_dim, "emission_dim": emission_dim},
        "data": {"path": data},
        "sampler": {"num_chains": 2, "num_warmup": 20, "num_draws": 30, "seed": 0},
        "run": {"dir": "run", "checkpoint_every": 10, "workers": 0},
    }
    for name, values in sections.items():
        base[name].update(values)
    lines = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        for k, v in values.items():
            if isinstance(v, str):
                lines.append(f'{k} = "{v}"')
            elif isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, list):
                lines.append(f"{k} = [{', '.join(repr(x).replace(chr(39), chr(34)) for x in v)}]")
            else:
                lines.append(f"{k} = {v}")
        lines.append("")
    path.write_text("\n".join(lines) + extra)
    return path


def cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``python -m sampler ARGS`` in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sampler", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def cli_here(*args, cwd=None) -> subprocess.CompletedProcess:
    """``sampler ARGS`` through ``sampler.cli.main`` in this process: what ``cli`` returns, without
    the ~7 s of interpreter start-up and imports per call, and reusing the programs this process has
    compiled.  For checks that end before sampling (bad input, status, summary) and for the runs that
    follow a real kill or stop; ``cli`` keeps testing the process boundary (exit status, real stderr)."""
    from sampler.cli import main
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd or before)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


#: the store arrays compared between runs that must give the same draws.
ARRAYS = [("posterior", "emissions_cov"), ("posterior", "dynamics_weights"), ("posterior", "initial_mean"),
          ("sample_stats", "lp")]


def read_store(run_dir: Path) -> dict:
    root = zarr.open_group(str(run_dir / "samples.zarr"), mode="r")
    return {f"{g}/{n}": root[g][n][...] for g, n in ARRAYS}


def assert_same_draws(a: Path, b: Path, rtol: float = 0.0):
    sa, sb = read_store(a), read_store(b)
    for key in sa:
        assert np.isfinite(sa[key]).all(), key
        if rtol:
            np.testing.assert_allclose(sa[key], sb[key], rtol=rtol, atol=0, err_msg=key)
        else:
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


def sharded_problem(root: Path, num_draws: int) -> tuple[Path, Path]:
    """3 shards of 2 datasets (``ROOT/c.toml``) and their in-process reference run
    (``ROOT/reference``): (root, config)."""
    np.savez(root / "d.npz", **simulate(6, T=30))
    cfg = write_config(root / "c.toml", "d.npz", sampler={"num_draws": num_draws, "num_warmup": 10},
                       run={"checkpoint_every": 10, "shard_size": 2})
    res = cli("run", cfg, "--run-dir", root / "reference", cwd=root, timeout=400)
    assert res.returncode == 0, res.stderr
    return root, cfg


def shard_steps(run_dir: Path) -> dict[int, int]:
    """Shard index -> newest checkpoint step (draws in the store)."""
    out = {}
    for d in (run_dir / "checkpoints").glob("shard-*"):
        steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()]
        if steps:
            out[int(d.name.split("-")[1])] = max(steps)
    return out


def busy_workers(root_pid: int, idle_too: bool = False) -> list:
    """Ray actor processes under ``root_pid`` (a driver, or a node's `ray start`) that are running a
    shard (Ray titles them ``ray::ShardWorker.run`` while the method executes), or with ``idle_too``
    every ``ray::ShardWorker`` process."""
    title = "ray::ShardWorker" if idle_too else "ray::ShardWorker.run"
    import psutil
    out = []
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for p in children:
        try:
            if " ".join(p.cmdline()).startswith(title):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@contextmanager
def cli_process(*args, cwd=None, env=None):
    """``python -m sampler ARGS`` started in the background; killed on exit from the block if it is
    still running.  Its stdout and stderr go to temporary files (a pipe nobody reads while the test
    polls would fill with progress-bar updates and stall it): ``finish`` waits and reads them."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sampler", *map(str, args)], cwd=cwd, env=full_env,
                                stdout=out, stderr=err, text=True)
        proc.outputs = (out, err)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def finish(proc, timeout: float) -> tuple[str, str]:
    """Wait for a ``cli_process`` to end; its (stdout, stderr)."""
    proc.wait(timeout=timeout)
    texts = []
    for f in proc.outputs:
        f.seek(0)
        texts.append(f.read())
    return texts[0], texts[1]


def wait_while_running(proc, ready, timeout: float = 400, what: str = "the run ended too soon; make it longer"):
    """Poll ``ready()`` every 50 ms until it is true; fail if ``proc`` ends or ``timeout`` passes first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None and time.time() < deadline, what
        time.sleep(0.05)


def diagnostics_rows(rng, C: int, N: int, x=None):
    """(30, C, N) rows that exercise an ESS / R-hat implementation (or ``x``, (K >= 30, C, N), with
    rows 5-26 so overwritten): random walks, chains that disagree, heavy tails, ties, a constant row,
    a NaN."""
    x = rng.normal(size=(30, C, N)) if x is None else x
    x[5:10] = np.cumsum(x[5:10], axis=2)                      # strongly autocorrelated
    x[10:15] += np.arange(C)[None, :, None]                   # chains disagree
    x[15:20] = rng.standard_cauchy(size=(5, C, N))            # heavy tails
    x[20:25] = rng.integers(0, 3, size=(5, C, N))             # ties (repeated values)
    x[25] = 2.0                                               # constant
    x[26, 0, 1] = np.nan
    return x

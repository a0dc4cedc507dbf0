"""Simulation (prior / truth), simulation-based calibration and its ability to catch a wrong model."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

from sampler.analysis import calibrate, simulate
from sampler.core import simulation
from sampler.execution import runner
from sampler.storage import config
from sampler.storage.rundir import RunDir
from sampler.errors import UserError
from sampler.core.model import Model
from helpers import cli, cli_here, write_config

#: the study: small, but enough Gibbs sweeps for the weakly identified datasets a prior this wide gives.
STUDY = dict(num_datasets=100, num_timesteps=50)
STUDY_SAMPLER = {"algorithm": "gibbs", "num_chains": 2, "num_warmup": 200, "num_draws": 200}


def study_config(tmp_path, run_dir: str, **sampler):
    path = write_config(tmp_path / f"{run_dir}.toml", "unused.npz", state_dim=1, emission_dim=2,
                        sampler={**STUDY_SAMPLER, **sampler}, run={"dir": run_dir, "checkpoint_every": 100})
    return config.load(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One calibration run, killed after its first block of draws and resumed by re-running calibrate."""
    tmp = tmp_path_factory.mktemp("sbc")
    cfg = study_config(tmp, "sbc")
    original = runner._write_draws
    calls = []

    def die_after_first_block(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return original(*args, **kwargs)

    runner._write_draws = die_after_first_block
    try:
        with pytest.raises(KeyboardInterrupt):
            calibrate.calibrate(cfg, **STUDY, progress=False)
    finally:
        runner._write_draws = original
    checkpoints = sorted(p.name for p in (tmp / "sbc" / "checkpoints" / "shard-00000").iterdir())
    assert checkpoints == ["0", "100"], checkpoints
    report = calibrate.calibrate(cfg, **STUDY, progress=False)
    return cfg, report


def emission_noise_x2(arrays):
    """The data were generated with twice the emission noise sd of the saved truth (a wrong likelihood)."""
    return {**arrays, "true_emissions_cov": arrays["true_emissions_cov"] / 4}


@pytest.mark.slow  # a 100-dataset SBC study and its failing twin: statistical, minutes
@pytest.mark.parametrize("variant, calibrated", [(None, True), (emission_noise_x2, False)],
                         ids=["correct", "emission_noise_x2"])
def test_sbc_verdict(study, variant, calibrated):
    """The same check passes the sampler on its own model and fails it on data from a different one."""
    cfg, _ = study
    arrays, _ = simulate.simulate_arrays(cfg, **STUDY)
    report = calibrate.analyse(cfg, variant(arrays) if variant else arrays)
    verdict = [q for q in report["quantities"] if q["in_verdict"]]
    assert {q["kind"] for q in verdict} == {"invariant", "joint"}
    assert report["verdict"]["passed"] is calibrated, calibrate.format_report(report)


@pytest.mark.slow  # the 100-dataset SBC study takes a minute to build: a long statistical check
def test_study_report_and_resume(study):
    cfg, report = study
    run_dir = Path(cfg.run.dir)
    saved = json.loads(RunDir(run_dir).calibration_report.read_text())
    assert saved["verdict"] == report["verdict"] and saved["simulation"]["rejected"] == report["simulation"]["rejected"]
    names = [q["name"] for q in report["quantities"]]
    for name in ("emissions_cov[0,0]", "emissions_cov[1,0]", "emissions_cov[1,1]", "dynamics_weights[0,0]",
                 "spectral_radius(F)", "HQH'[0,0]", "loglik", "emissions_weights[0,0]", "initial_cov[0,0]"):
        assert name in names
    kinds = {q["name"]: q["kind"] for q in report["quantities"]}
    assert kinds["emissions_weights[0,0]"] == "rotation-dependent" and kinds["loglik"] == "joint"
    # the draws ranked: 2 chains x 200 draws, thinned to about calibrate.TARGET_DRAWS = 100 pooled
    # draws: thin = 400 // 100 = 4, draws 0, 4, ..., 196 of each chain (50), pooled 100, ranks 0..100
    C, K = STUDY_SAMPLER["num_chains"], STUDY_SAMPLER["num_draws"]
    thin = C * K // 100
    L = C * len(range(0, K, thin))
    assert (thin, L) == (4, 100)
    settings = report["settings"]
    assert {k: settings[k] for k in ("chains", "draws_per_chain", "thin", "pooled_draws", "rank_levels",
                                     "num_datasets", "num_warmup")} == {
        "chains": C, "draws_per_chain": K, "thin": thin, "pooled_draws": L, "rank_levels": L + 1,
        "num_datasets": 100, "num_warmup": STUDY_SAMPLER["num_warmup"]}
    assert calibrate.format_report(report).splitlines()[0] == (
        f"SBC: 100 datasets x {C} chains (gibbs), {L} pooled draws per dataset (thin {thin})")
    sim = report["simulation"]
    assert sim["draws"] == 100 + sim["rejected"] and sim["rejected_fraction"] == sim["rejected"] / sim["draws"]
    # the ECDF test's null distribution is the first use of analyse's generator (default_rng(0))
    null = calibrate.uniformity_null(100, L, np.random.default_rng(0))
    B = 10  # rank-histogram bins: N // 10 = 10 (between 2 and 20, at most L + 1)
    per_bin = np.bincount(np.arange(L + 1) * B // (L + 1), minlength=B)  # rank values per bin
    for q in report["quantities"]:
        r = np.asarray(q["ranks"])
        assert len(r) == 100 and r.dtype.kind == "i" and r.min() >= 0 and r.max() <= L, q["name"]
        assert q["p_value"] == calibrate.ecdf_test(r, L, null), q["name"]
        # chi-square p-value of the binned ranks, recomputed with scipy
        observed = np.bincount(r * B // (L + 1), minlength=B)
        assert q["p_chi2"] == pytest.approx(stats.chisquare(observed, per_bin / (L + 1) * len(r)).pvalue,
                                            rel=1e-9, abs=1e-300), q["name"]
        # coverage from the fractional rank u in [r, r + 1) / (L + 1): the counts lie between the ranks
        # whose whole cell is inside the central interval and those whose cell meets it; nested intervals
        # give counts that grow with the level
        assert set(q["coverage"]) == {"50", "80", "90", "95"}
        lo_u, hi_u = r / (L + 1), (r + 1) / (L + 1)
        counts = []
        for level in (50, 80, 90, 95):
            c = q["coverage"][str(level)]
            a, b = 0.5 - level / 200, 0.5 + level / 200
            k = c["covered"]
            certain, possible = ((lo_u >= a) & (hi_u <= b)).sum(), ((hi_u > a) & (lo_u <= b)).sum()
            assert certain <= k <= possible, (q["name"], level, certain, k, possible)
            assert c["fraction"] == k / 100 and tuple(c["ci"]) == pytest.approx(calibrate.clopper_pearson(k, 100))
            assert c["ci"][0] <= c["fraction"] <= c["ci"][1]
            counts.append(k)
        assert counts == sorted(counts), q["name"]
        assert q["z_abs_gt_3"] * 100 == pytest.approx(round(q["z_abs_gt_3"] * 100)), q["name"]
    # Holm's step-down adjustment of the verdict quantities' p-values, written out, and the verdict
    verdict = [q for q in report["quantities"] if q["in_verdict"]]
    assert verdict and all(q["kind"] != "rotation-dependent" for q in verdict)
    assert all("p_holm" not in q for q in report["quantities"] if not q["in_verdict"])
    order = sorted(range(len(verdict)), key=lambda i: verdict[i]["p_value"])
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (len(verdict) - j) * verdict[i]["p_value"]))
        assert verdict[i]["p_holm"] == pytest.approx(running, rel=1e-12)
    failing = [q["name"] for q in verdict if q["p_holm"] < calibrate.ALPHA]
    assert report["verdict"]["failing"] == failing and report["verdict"]["passed"] is (not failing)
    assert report["verdict"]["quantities"] == len(verdict)
    # the figures: one panel per quantity (a grid of at most 4 columns, 3.6 x 2.7 inches per panel, at
    # 90 dpi); the recovery figure leaves out the joint quantity (loglik)
    from PIL import Image
    other = [q for q in report["quantities"] if not q["in_verdict"]]
    panels = {"calibration_ranks.png": len(verdict), "calibration_ecdf.png": len(verdict),
              "calibration_recovery.png": sum(q["kind"] != "joint" for q in verdict),
              "calibration_ranks_rotation_dependent.png": len(other),
              "calibration_ecdf_rotation_dependent.png": len(other)}
    assert other and [Path(p).name for p in report["plots"]] == list(panels)
    for png in report["plots"]:
        n = min(panels[Path(png).name], calibrate.MAX_PANELS)
        cols = min(4, n)
        rows = -(-n // cols)
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size == (round(3.6 * cols * 90), round(2.7 * rows * 90)), png
            pixels = np.asarray(im.convert("L"))
        assert pixels.min() < 100 and pixels.max() > 200, png  # drawn on: dark lines on a white background
    # the sampling ran to the end after the kill (no unwritten, NaN draws)
    tree = Path(cfg.run.dir) / "samples.zarr"
    import zarr
    assert not np.isnan(zarr.open_group(str(tree), mode="r")["posterior"]["emissions_cov"][:]).any()
    # the same study again reuses the file; another simulation is refused and nothing is written
    blob = RunDir(run_dir).simulated.read_bytes()
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(UserError, match="cannot resume"):
        calibrate.calibrate(cfg, **STUDY, seed=1, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert RunDir(run_dir).simulated.read_bytes() == blob
    assert calibrate.format_report(report).splitlines()[-2] == f"PASS: {report['verdict']['method']}"


def test_prior_draws_match_dynamax_prior():
    """simulation.prior_draw (the sampler's conjugate update with no data) against independent draws of
    dynamax's prior: scipy's inverse Wishart and the matrix normal's definition, dynamax's hyperparameters."""
    model = Model(1, 2)
    anchor = model.initial_params(jax.random.PRNGKey(0), {})
    n = 4000
    ours = jax.jit(jax.vmap(lambda k: simulation.prior_draw(k, model, anchor)))(
        jax.random.split(jax.random.PRNGKey(1), n))
    ssm = model.ssm
    rng = np.random.default_rng(2)

    def mniw(loc, col_precision, df, scale):
        """(Sigma, W): Sigma ~ IW(df, scale), W | Sigma ~ MN(loc, Sigma, col_precision^-1)."""
        loc, V, k = np.asarray(loc), np.linalg.inv(np.asarray(col_precision)), len(loc)
        Sigma = stats.invwishart(float(df), np.asarray(scale)).rvs(n, random_state=rng).reshape(n, k, k)
        Z = rng.standard_normal((n, *loc.shape))  # MN(loc, A A^T, B B^T) = loc + A Z B^T
        return Sigma, loc + np.linalg.cholesky(Sigma) @ Z @ np.linalg.cholesky(V).T

    ip, dp, ep = ssm.initial_prior, ssm.dynamics_prior, ssm.emission_prior
    S0, m0 = mniw(ip.loc[:, None], [[ip.mean_concentration]], ip.df, ip.scale)  # NIW: MNIW with one column
    m0 = m0[..., 0]
    Q, Wd = mniw(dp.loc, dp.col_precision, dp.df, dp.scale)
    R, We = mniw(ep.loc, ep.col_precision, ep.df, ep.scale)
    pairs = {
        "m0": (ours.initial.mean[:, 0], m0[:, 0]), "S0": (ours.initial.cov[:, 0, 0], S0[:, 0, 0]),
        "F": (ours.dynamics.weights[:, 0, 0], Wd[:, 0, 0]), "b": (ours.dynamics.bias[:, 0], Wd[:, 0, 1]),
        "Q": (ours.dynamics.cov[:, 0, 0], Q[:, 0, 0]),
        "H0": (ours.emissions.weights[:, 0, 0], We[:, 0, 0]), "H1": (ours.emissions.weights[:, 1, 0], We[:, 1, 0]),
        "d1": (ours.emissions.bias[:, 1], We[:, 1, 1]),
        "R00": (ours.emissions.cov[:, 0, 0], R[:, 0, 0]), "R11": (ours.emissions.cov[:, 1, 1], R[:, 1, 1]),
        "R10": (ours.emissions.cov[:, 1, 0], R[:, 1, 0]),
        # W | R has row covariance R: the sign of H0 H1 follows R10
        "H0H1/R10": (ours.emissions.weights[:, 0, 0] * ours.emissions.weights[:, 1, 0] / ours.emissions.cov[:, 1, 0],
                     We[:, 0, 0] * We[:, 1, 0] / R[:, 1, 0]),
    }
    p = {k: stats.ks_2samp(np.asarray(a), np.asarray(b)).pvalue for k, (a, b) in pairs.items()}
    assert min(p.values()) > 0.001 / len(p), p
    # frozen leaves stay; the free ones are drawn from the prior given them
    frozen = Model(1, 2, frozen=("emissions.weights", "dynamics.cov"))
    draw = jax.jit(lambda k: simulation.prior_draw(k, frozen, anchor))(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(draw.emissions.weights, anchor.emissions.weights)
    np.testing.assert_array_equal(draw.dynamics.cov, anchor.dynamics.cov)
    assert not np.allclose(draw.emissions.cov, anchor.emissions.cov)


def test_simulate_cli_file_runs(tmp_path):
    """`sampler simulate` (inputs, sequences, missing entries) writes a data file for `sampler run`."""
    cfg = write_config(tmp_path / "c.toml", "sim.npz", state_dim=1, emission_dim=2,
                       model={"state_dim": 1, "emission_dim": 2, "input_dim": 1},
                       sampler={"num_chains": 1, "num_warmup": 5, "num_draws": 5})
    res = cli("simulate", cfg, "--out", tmp_path / "sim.npz", "--num-datasets", 4, "--num-timesteps", 15,
              "--num-sequences", 2, "--missing-fraction", 0.2, "--seed", 3, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["out"] == str((tmp_path / "sim.npz").resolve())
    assert {k: info[k] for k in ("num_datasets", "source", "num_timesteps", "num_sequences", "missing_fraction",
                                 "seed", "max_abs_emission")} == {
        "num_datasets": 4, "source": "prior", "num_timesteps": 15, "num_sequences": 2, "missing_fraction": 0.2,
        "seed": 3, "max_abs_emission": simulate.DEFAULT_MAX_ABS_EMISSION}
    # every dataset is one kept prior draw; the others were redrawn
    assert info["draws"] == 4 + info["rejected"] and info["rejected_fraction"] == info["rejected"] / info["draws"]
    # the file is a deterministic function of its settings: the same simulation in this process gives
    # the same summary (so the same number of draws) and the same bytes
    arrays, again = simulate.simulate_arrays(config.load(cfg), num_datasets=4, num_timesteps=15, num_sequences=2,
                                             missing_fraction=0.2, seed=3)
    assert again == {k: v for k, v in info.items() if k != "out"}
    assert (tmp_path / "sim.npz").read_bytes() == simulate.npz_bytes(arrays)
    with np.load(tmp_path / "sim.npz") as f:
        assert f["emissions"].shape == (4, 2, 15, 2) and f["inputs"].shape == (4, 2, 15, 1)
        assert f["true_emissions_cov"].shape == (4, 2, 2) and f["true_dynamics_input_weights"].shape == (4, 1, 1)
        assert 0.05 < np.isnan(f["emissions"]).mean() < 0.4
        assert np.nanmax(np.abs(f["emissions"])) <= simulate.DEFAULT_MAX_ABS_EMISSION
    # what `sampler run` checks before sampling (the data file against the model)
    ctx = runner.RunContext(config.load(cfg), tmp_path / "run")
    assert ctx.data.num_datasets == 4 and ctx.data.has_sequences and ctx.model.partial_missing
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_simulate_cli_file_samples(tmp_path):
    """`sampler run` samples a `sampler simulate` file to the end (slow: compiles a sampler)."""
    cfg = write_config(tmp_path / "c.toml", "sim.npz", state_dim=1, emission_dim=2,
                       sampler={"num_chains": 1, "num_warmup": 5, "num_draws": 5})
    assert cli("simulate", cfg, "--out", tmp_path / "sim.npz", "--num-datasets", 2, "--num-timesteps", 15,
               "--missing-fraction", 0.2, cwd=tmp_path).returncode == 0
    res = cli("run", cfg, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    # every draw of the one shard is stored, finite, on the simulated data (NaN where it is missing)
    assert [p["draws_done"] for p in RunDir(tmp_path / "run").shard_progress()] == [5]
    import zarr
    root = zarr.open_group(str(tmp_path / "run" / "samples.zarr"), mode="r")
    with np.load(tmp_path / "sim.npz") as f:
        np.testing.assert_array_equal(root["observed_data"]["emissions"][:], f["emissions"])
    cov = root["posterior"]["emissions_cov"][:]
    assert cov.shape == (1, 5, 2, 2, 2) and np.isfinite(cov).all()


def test_simulate_from_truth_without_true_arrays_exit_2(tmp_path, small_data):
    cfg = write_config(tmp_path / "c.toml", str(small_data))
    with np.load(small_data) as f:
        np.savez(tmp_path / "no_truth.npz", emissions=f["emissions"])
    cfg_bad = write_config(tmp_path / "bad.toml", "no_truth.npz")
    res = cli_here("simulate", cfg_bad, "--out", tmp_path / "out.npz", "--num-datasets", 3, "--from", "truth",
                   cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "true_dynamics_weights" in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out.npz").exists()
    # with the true arrays: the given parameters (shared by the datasets), emissions from them
    info = simulate.simulate_file(config.load(cfg), tmp_path / "out.npz", num_datasets=5, source="truth",
                                  num_timesteps=20)
    assert info["rejected"] == 0
    with np.load(tmp_path / "out.npz") as out, np.load(small_data) as given:
        assert out["emissions"].shape == (5, 20, 2)
        np.testing.assert_array_equal(out["true_emissions_cov"], np.broadcast_to(given["true_emissions_cov"], (5, 2, 2)))


def test_uniformity_test_and_holm():
    """The ECDF test: uniform ranks give spread p-values, a shifted rank distribution a tiny one."""
    rng = np.random.default_rng(1)
    L, N = 99, 200
    null = calibrate.uniformity_null(N, L, rng)
    p_uniform = [calibrate.ecdf_test(rng.integers(0, L + 1, N), L, null) for _ in range(200)]
    assert 0.02 < np.mean(np.array(p_uniform) < 0.05) < 0.1
    skewed = np.minimum(rng.integers(0, L + 1, N), rng.integers(0, L + 1, N))  # too many low ranks
    assert calibrate.ecdf_test(skewed, L, null) < 1e-3
    assert calibrate.chi2_test(skewed, L) < 1e-3
    np.testing.assert_allclose(calibrate.holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    F = np.array([[0.5, 0.2], [-0.3, 0.9]])
    np.testing.assert_allclose(calibrate.char_poly(F), [np.trace(F), np.linalg.det(F)])


@pytest.mark.slow
def test_tempered_sampler_fails_calibration(tmp_path, monkeypatch):
    """A wrong sampler: FFBS draws the states under a tempered likelihood (emission noise doubled).
    The correct sampler passes the same study (test_sbc_verdict); this one must fail it."""
    from sampler.core import engine, gibbs
    original = gibbs.sample_states

    def tempered(key, model, params, emissions, inputs=None, moments=None, emission_factor=None):
        # R's factor from the sweep is the untempered R's: the filter factorises the tempered R itself
        params = params._replace(emissions=params.emissions._replace(cov=2.0 * params.emissions.cov))
        return original(key, model, params, emissions, inputs, moments)

    monkeypatch.setattr(gibbs, "sample_states", tempered)
    engine.init_program.cache_clear()
    engine.sample_program.cache_clear()
    try:
        report = calibrate.calibrate(study_config(tmp_path, "tempered"), **STUDY, progress=False)
    finally:
        engine.init_program.cache_clear()
        engine.sample_program.cache_clear()
    assert report["verdict"]["passed"] is False, calibrate.format_report(report)

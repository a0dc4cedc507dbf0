"""Data ingestion: .npz, CSV/Parquet long tables, netCDF/Zarr panels load to the same arrays; ragged and
gappy input; bad tables -> exit 2 with one line and nothing written; standardisation undone exactly."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from helpers import cli, cli_here, write_config
from sampler.storage import config, data
from sampler.core.model import missingness
from sampler.errors import UserError

LABELS = ["fr", "de", "it"]
YEARS = np.arange(2000, 2012)


@pytest.fixture
def panel() -> np.ndarray:
    """(3, 12, 2) emissions: ragged starts and ends, a gap year, a partly missing row."""
    y = np.random.default_rng(0).normal(size=(3, len(YEARS), 2)) * [1.0, 10.0] + [0.0, 50.0]
    y[1, :4] = np.nan      # starts late
    y[2, -3:] = np.nan     # ends early
    y[0, 6] = np.nan       # a gap
    y[2, 2, 1] = np.nan    # partly missing
    return y


def _wide(y: np.ndarray) -> pd.DataFrame:
    rows = [{"country": LABELS[i], "year": int(YEARS[t]), "a": y[i, t, 0], "b": y[i, t, 1]}
            for i in range(y.shape[0]) for t in range(y.shape[1]) if not np.isnan(y[i, t]).all()]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # row order must not matter...
    # ...except for the datasets, which keep the order of first appearance (checked below)


def _load(path, emission_dim=2, **keys):
    cfg = config.from_dict({"model": {"state_dim": 1, "emission_dim": emission_dim},
                            "data": {"path": str(path), **keys}})
    return data.load(cfg)


def _files(tmp_path, y):
    """The same panel in every format, with the [data] keys each needs."""
    wide = _wide(y)
    order = list(pd.unique(wide["country"]))
    idx = [LABELS.index(c) for c in order]
    keys = {"dataset": "country", "time": "year"}
    np.savez(tmp_path / "p.npz", emissions=y[idx])
    wide.to_csv(tmp_path / "p.csv", index=False)
    wide.to_parquet(tmp_path / "p.parquet")
    long = wide.melt(id_vars=["country", "year"], var_name="var", value_name="val").dropna()
    long.to_csv(tmp_path / "long.csv", index=False)
    arr = xr.Dataset({"emissions": (("country", "year", "emission"), y[idx])},
                     coords={"country": order, "year": YEARS})
    arr.to_netcdf(tmp_path / "p.nc")
    xr.Dataset({"a": arr.emissions.isel(emission=0), "b": arr.emissions.isel(emission=1)}).to_zarr(
        tmp_path / "p.zarr", consolidated=False)
    return y[idx], order, [
        ("p.npz", {}), ("p.csv", keys), ("p.parquet", keys),
        ("long.csv", {**keys, "variable": "var", "value": "val", "emissions": ["a", "b"]}),
        ("p.nc", {**keys}), ("p.zarr", {**keys, "emissions": ["a", "b"]})]


def test_every_format_loads_the_same_arrays(tmp_path, panel):
    expected, order, files = _files(tmp_path, panel)
    for name, keys in files:
        ds = _load(tmp_path / name, **keys)
        assert ds.emissions.shape == (3, 1, len(YEARS), 2), name
        np.testing.assert_array_equal(ds.emissions[:, 0], expected, err_msg=name)  # NaN where missing
        assert missingness(ds.emissions) == (True, True) and not ds.has_sequences, name
        if name != "p.npz":
            assert list(ds.labels) == order, name
            np.testing.assert_array_equal(ds.times, YEARS, err_msg=name)
    assert order != LABELS  # the shuffle really changed the order of first appearance


def test_ragged_sequences_round_trip(tmp_path):
    """A sequence column with ragged lengths and counts -> NaN padding, values in place."""
    rows = [("a", 0, 1, 1.0), ("a", 0, 2, 2.0), ("a", 1, 0, 3.0), ("a", 1, 2, 4.0),
            ("b", 0, 0, 5.0), ("b", 0, 1, 6.0), ("b", 0, 2, 7.0)]
    pd.DataFrame(rows, columns=["id", "run", "t", "y"]).to_csv(tmp_path / "s.csv", index=False)
    ds = _load(tmp_path / "s.csv", emission_dim=1, dataset="id", sequence="run", time="t")
    nan = np.nan
    expected = np.array([[[nan, 1, 2], [3, nan, 4]], [[5, 6, 7], [nan, nan, nan]]])[..., None]
    np.testing.assert_array_equal(ds.emissions, expected)
    assert ds.has_sequences


@pytest.mark.parametrize("case", ["duplicate", "non_numeric", "unknown_column", "short"])
def test_bad_table_exit_2_one_line_nothing_written(tmp_path, case):
    df = pd.DataFrame({"country": ["a"] * 4 + ["b"] * 4, "year": [1, 2, 3, 4] * 2,
                       "a": np.arange(8.0), "b": np.arange(8.0)})
    keys, needles = {"dataset": "country", "time": "year", "emissions": ["a", "b"]}, ()
    if case == "duplicate":
        df.loc[5, "year"] = 1
        needles = ("duplicated", "'b'", "line 6", "line 7")
    elif case == "non_numeric":
        df["b"] = df["b"].astype(object)
        df.loc[3, "b"] = "n/a?"
        needles = ("column 'b'", "line 5", "non-numeric", "'n/a?'")
    elif case == "unknown_column":
        df["extra"] = 1.0
        needles = ("unknown column 'extra'",)
    else:
        df.loc[[4, 5, 6], ["a", "b"]] = np.nan
        keys["min_length"] = 2
        needles = ("dataset 'b'", "1 observed time steps", "data.min_length = 2")
    df.to_csv(tmp_path / "bad.csv", index=False)
    cfg = write_config(tmp_path / "c.toml", "bad.csv", emission_dim=2)
    text = cfg.read_text().replace('path = "bad.csv"', 'path = "bad.csv"\n' + "\n".join(
        f"{k} = {v!r}".replace("'", '"') for k, v in keys.items()))
    cfg.write_text(text)
    res = cli_here("run", cfg, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.csv" in lines[0] and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "run").exists()


def test_unknown_variable_and_dim_are_user_errors(tmp_path):
    pd.DataFrame({"d": ["x", "x"], "t": [0, 1], "v": ["a", "zz"], "val": [1.0, 2.0]}).to_csv(
        tmp_path / "l.csv", index=False)
    with pytest.raises(UserError, match=r"line 3: unknown emission 'zz'"):
        _load(tmp_path / "l.csv", emission_dim=1, dataset="d", time="t", variable="v", value="val",
              emissions=["a"])
    xr.Dataset({"emissions": (("dataset", "time", "site"), np.zeros((2, 3, 1)))}).to_netcdf(tmp_path / "x.nc")
    with pytest.raises(UserError, match=r"unknown dim 'site'"):
        _load(tmp_path / "x.nc", emission_dim=1)


@pytest.mark.parametrize("scale_by", ["std", "diff_std"])
def test_standardisation_is_undone_exactly(tmp_path, panel, scale_by):
    expected, _, files = _files(tmp_path, panel)
    ds = _load(tmp_path / "p.csv", standardize=True, scale_by=scale_by, **files[1][1])
    raw = expected[:, None]
    center = np.nanmean(raw.reshape(3, -1, 2), axis=1)
    spread = np.diff(raw, axis=2) if scale_by == "diff_std" else raw
    scale = np.nanstd(spread.reshape(3, -1, 2), axis=1)
    np.testing.assert_allclose(ds.center, center, rtol=1e-14)
    np.testing.assert_allclose(ds.scale, scale, rtol=1e-14)
    if scale_by == "std":  # each dataset has mean 0 and sd 1 in model space
        np.testing.assert_allclose(np.nanmean(ds.emissions.reshape(3, -1, 2), 1), 0, atol=1e-12)
        np.testing.assert_allclose(np.nanstd(ds.emissions.reshape(3, -1, 2), 1), 1, rtol=1e-12)
    back = data.to_data_scale(ds.emissions, ds.center, ds.scale)
    np.testing.assert_allclose(back, raw, rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(raw))
    sd = np.ones((3, 4, 2))
    np.testing.assert_allclose(data.to_data_scale(sd, ds.center, ds.scale, spread=True),
                               np.broadcast_to(scale[:, None], (3, 4, 2)), rtol=1e-15)
    assert data.to_data_scale(sd, None, None) is sd


@pytest.mark.slow  # two CLI processes, ~80 s; the scaling itself is unit-tested above
def test_standardised_run_forecasts_on_the_data_scale(tmp_path, panel):
    """[data] standardize: the store records centre and scale, and `sampler forecast` undoes them."""
    _, order, files = _files(tmp_path, panel)
    cfg = write_config(tmp_path / "c.toml", "p.csv", emission_dim=2,
                       sampler={"num_chains": 2, "num_warmup": 20, "num_draws": 20})
    cfg.write_text(cfg.read_text().replace('path = "p.csv"',
                                           'path = "p.csv"\ndataset = "country"\ntime = "year"\nstandardize = true'))
    assert cli("run", cfg, cwd=tmp_path).returncode == 0
    res = cli("forecast", tmp_path / "run", "--horizon", 3, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    tree = xr.open_datatree(tmp_path / "run" / "samples.zarr", engine="zarr")
    obs = tree["observed_data"]
    raw = data.to_data_scale(obs["emissions"].values[:, None], obs["emissions_center"].values,
                             obs["emissions_scale"].values)[:, 0]
    np.testing.assert_allclose(raw, panel[[LABELS.index(c) for c in order]], rtol=1e-12, atol=1e-12)
    smooth = tree["forecast"]["smooth_mean"].values          # (dataset, time, emission), data scale
    observed = np.isfinite(raw)
    # the smoothed means follow the data (emission b sits near 50 with sd 10), not the unit scale
    assert np.nanmax(np.abs(smooth - raw)[observed] / obs["emissions_scale"].values[:, None].repeat(
        raw.shape[1], 1)[observed]) < 3.0
    assert np.all(np.abs(smooth[..., 1].mean(axis=1) - 50.0) < 10.0)

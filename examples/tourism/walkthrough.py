# %% [markdown]
# # DataFrame in, forecast frame out
#
# The notebook workflow for structural models (cells in jupytext's percent format: open it in
# Jupyter or VS Code, or run it as a script from the repository root):
# a `unique_id, ds, y` DataFrame -> a Bayesian local linear trend + quarterly seasonal per series
# -> posterior (xarray / ArviZ) -> forecasts in statsforecast's layout -> scored with utilsforecast
# beside statsforecast's AutoETS fitted on the same training frame.
#
#     python examples/tourism/walkthrough.py [WORK_DIR]

# %%
import sys
import tempfile
from pathlib import Path

import arviz as az
import pandas as pd
from statsforecast import StatsForecast
from statsforecast.models import AutoETS
from utilsforecast.evaluation import evaluate
from utilsforecast.losses import mae, rmse

import sampler
from sampler.storage import config

HORIZON, LEVELS = 8, [80, 95]
work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tourism-"))

# %% [markdown]
# The 20 regional series of quarterly log visitor nights (1998-2016), the last two years held out.

# %%
df = pd.read_csv(Path(__file__).with_name("tourism.csv"), parse_dates=["ds"])
df = df[df["unique_id"].str.startswith("nights_")]
cutoff = df["ds"].sort_values().unique()[-HORIZON - 1]
train, test = df[df["ds"] <= cutoff], df[df["ds"] > cutoff]
train.to_parquet(work / "train.parquet")

# %% [markdown]
# The config as a dict (a TOML file works the same: `sampler.run("config.toml")`).

# %%
cfg = config.from_dict({
    "model": {"emission_dim": 1,
              "components": [{"kind": "local_linear_trend"}, {"kind": "seasonal", "period": 4}]},
    "data": {"path": str(work / "train.parquet"), "dataset": "unique_id", "time": "ds",
             "emissions": ["y"], "standardize": True},
    "sampler": {"num_chains": 4, "num_warmup": 250, "num_draws": 500, "seed": 0},
    "run": {"dir": str(work / "run"), "workers": 0},
})
run_dir = sampler.run(cfg, progress=False)

# %% [markdown]
# The posterior: one xarray DataTree; the variables carry the dataset labels.

# %%
post = sampler.open_run(run_dir)["posterior"].to_dataset()
print(az.summary(post[["level_sd", "slope_sd", "seasonal_sd", "obs_sd"]].sel(dataset="nights_NSWMetro"),
                 kind="stats"))

# %% [markdown]
# Forecasts in statsforecast's layout, on the data scale, with AutoETS beside them.

# %%
sampler.forecast(run_dir, horizon=HORIZON)
ours = sampler.forecast_frame(run_dir, levels=LEVELS)
sf = StatsForecast(models=[AutoETS(season_length=4)], freq="QS")
theirs = sf.forecast(df=train, h=HORIZON, level=LEVELS)
print(ours.head(3).to_string(index=False))

# %% [markdown]
# Point accuracy with utilsforecast, interval coverage with plain pandas, on the same points.

# %%
scored = test.merge(ours, on=["unique_id", "ds"]).merge(theirs, on=["unique_id", "ds"])
table = evaluate(scored, metrics=[mae, rmse], models=["sampler", "AutoETS"])
table = table.groupby("metric")[["sampler", "AutoETS"]].mean()
for level in LEVELS:
    inside = {m: ((scored[f"{m}-lo-{level}"] <= scored["y"]) & (scored["y"] <= scored[f"{m}-hi-{level}"])).mean()
              for m in ("sampler", "AutoETS")}
    table.loc[f"coverage {level}%"] = inside
print(f"{len(scored)} held-out points, {scored['unique_id'].nunique()} series")
print(table.round(4).to_string())

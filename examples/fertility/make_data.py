"""Write statsmodels' World Bank fertility panel as a long-format CSV (no download: the data ship with
statsmodels).

219 countries x 56 years (1960-2015) of births per woman, with gaps.  One row per (country, year) with
an observed value; missing years simply have no row (the loader makes them NaN).  Countries with fewer
than ``MIN_OBSERVED`` observed years are left out (they cannot give 5 origins of a 5-year backtest).

    python examples/fertility/make_data.py            # -> examples/fertility/fertility.csv
"""
from pathlib import Path

import statsmodels.api as sm

MIN_OBSERVED = 25


def main(out: Path = Path(__file__).with_name("fertility.csv")) -> Path:
    wide = sm.datasets.fertility.load_pandas().data          # Country Name, Country Code, Indicator ..., 1960..2015
    years = [c for c in wide.columns if c.isdigit()]
    long = wide.melt(id_vars="Country Code", value_vars=years, var_name="year", value_name="fertility")
    long = long.dropna(subset=["fertility"])
    counts = long.groupby("Country Code")["fertility"].size()
    long = long[long["Country Code"].isin(counts[counts >= MIN_OBSERVED].index)]
    long = long.rename(columns={"Country Code": "country"}).astype({"year": int})
    long.sort_values(["country", "year"]).to_csv(out, index=False)
    print(f"{out}: {long['country'].nunique()} countries, {len(long)} rows "
          f"({(counts < MIN_OBSERVED).sum()} countries with < {MIN_OBSERVED} observed years left out)")
    return out


if __name__ == "__main__":
    main()

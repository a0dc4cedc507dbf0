"""The engine's time-to-ESS row (``sampler.bench.ess.engine_time_to_ess``: the headline, ``scale``) counts what it ran."""
import numpy as np
import pytest

from sampler.bench import ess


def test_the_engines_time_to_ess_row_counts_draws_per_chain(tmp_path):
    # a target no chain reaches: the run stops at max_draws, after two blocks of 20
    row = ess.engine_time_to_ess(tmp_path, "gibbs", 2, num_warmup=10, block=20, max_draws=40, target=1e9)
    assert row["draws"] == 40
    assert not row["reached"] and row["datasets_at_target"] == 0
    assert np.isfinite(row["min_ess"]) and row["min_ess"] > 0
    assert row["chain_sweeps_per_s"] == pytest.approx(2 * 4 * (10 + 40) / row["wall_s"])


def test_the_engines_time_to_ess_runs_its_shards_one_after_another(tmp_path):
    # 3 datasets in shards of 2: the second shard (1 dataset, padded) runs after the first
    row = ess.engine_time_to_ess(tmp_path, "gibbs", 3, num_warmup=10, block=20, max_draws=40, target=1e9,
                                 shard_size=2)
    assert row["shards"] == 2 and row["draws"] == 40 and row["datasets"] == 3
    assert not row["reached"] and np.isfinite(row["min_ess"])
    assert row["chain_sweeps_per_s"] == pytest.approx(3 * 4 * (10 + 40) / row["wall_s"])

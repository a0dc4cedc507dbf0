"""``sampler bench``: the performance benchmark, measured in this process on this machine.

Parts (``PARTS``; each a function returning plain dicts, printed as a table or JSON) and their modules:

* ``grad``, ``parallel`` -- gradient throughput of the marginal log-likelihood (``throughput``);
* ``e2e``, ``io``, ``rss`` -- whole ``sampler run`` runs: dataset-ESS/s against the seed's procedure,
  the cost of streaming to the run dir, peak memory (``runs``);
* ``warmup`` -- warmup schemes for many chains on the seed dataset (``warmup``);
* ``ess`` -- wall time until every dataset reaches bulk-ESS 400 on diag(R), every kernel against the
  seed's procedure and dynamax's Gibbs (looped, and vmapped by hand: ``anchor``) (``ess``);
* ``headline`` -- the same for Gibbs and dynamax's Gibbs only (``ess``, ``anchor``);
* ``scale`` -- Gibbs alone to that target on many datasets in shards (100,000 on a GPU) (``ess``);
* ``sts``, ``sts-panel`` -- the structural Gibbs sweep: chain-sweeps/s against the state size, and
  the posterior of 1,000 monthly series (``structural``).

Below them ``problems`` (the seed notebook's model, data and procedure; a bench run's files) and
``measure`` (device, timing, ESS and R-hat of diag(R), tables); above them ``suite.run``.
"""
from sampler.bench.suite import PARTS, run

__all__ = ["PARTS", "run"]

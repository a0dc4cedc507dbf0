"""``sampler`` command line: the thinnest layer over the run and analysis layers.

Each command imports what it uses inside its handler: importing JAX, Ray, matplotlib or statsmodels
takes seconds, and ``sampler status`` or ``--help`` needs none of them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sampler.errors import UserError, environment_failure
from sampler.execution.stop import Stopped

#: exit codes: 2 bad input (config, data, arguments), 3 environmental failure (full disk, permissions, ...);
#: a run stopped by a signal exits 128 + the signal (143 SIGTERM, 130 SIGINT).
EXIT_BAD_INPUT, EXIT_ENVIRONMENT = 2, 3


def _config_with_run_dir(args):
    """The config with ``--set`` overrides and, when given, ``--run-dir`` as ``run.dir``."""
    from sampler.storage import config
    overrides = list(args.set or [])
    if args.run_dir:
        from sampler.storage.location import is_url, location
        run_dir = args.run_dir if is_url(args.run_dir) else location(args.run_dir).resolve()
        overrides.append(f'run.dir="{run_dir}"')
    cfg = config.load(args.config, overrides)
    args.failure_path = cfg.run.dir   # named by an environmental failure that names no file
    return cfg


def _run(args) -> int:
    cfg = _config_with_run_dir(args)  # a bad config is reported before JAX and the layers are loaded
    from sampler.analysis import diagnostics
    from sampler.execution import driver
    run_dir = driver.execute(cfg, workers=args.workers, address=args.address)
    print(diagnostics.format_table(diagnostics.summarize(run_dir), limit=20))
    print(f"run dir: {run_dir}")
    return 0


def _run_dir(path: str):
    from sampler.storage.rundir import RunDir
    return RunDir(path).require()


def _status(args) -> int:
    from sampler.storage.rundir import format_status
    rd = _run_dir(args.dir)
    print(json.dumps(rd.shard_progress(), indent=1) if args.json else format_status(rd))
    return 0


def _summary(args) -> int:
    from sampler.analysis import diagnostics
    summary = diagnostics.summarize(_run_dir(args.dir).path, all_leaves=args.all)
    print(json.dumps(summary, indent=1) if args.json else diagnostics.format_table(summary, limit=args.limit))
    return 0


def _forecast(args) -> int:
    from sampler.analysis import forecast
    try:
        plot = [int(i) for i in args.plot.split(",") if i.strip()] if args.plot else None
    except ValueError:
        raise UserError(f"--plot: expected comma-separated dataset indices, got {args.plot!r}") from None
    result = forecast.forecast_run(_run_dir(args.dir).path, horizon=args.horizon, burn_in=args.burn_in,
                                   thin=args.thin, plot=plot)
    print(json.dumps(result, indent=1))
    return 0


def _simulate(args) -> int:
    from sampler.analysis import simulate
    from sampler.storage import config
    cfg = config.load(args.config, list(args.set or []))
    result = simulate.simulate_file(cfg, Path(args.out), num_datasets=args.num_datasets, source=args.source,
                                    num_timesteps=args.num_timesteps, num_sequences=args.num_sequences,
                                    missing_fraction=args.missing_fraction, seed=args.seed,
                                    max_abs_emission=args.max_abs_emission)
    print(json.dumps(result, indent=1))
    return 0


def _calibrate(args) -> int:
    from sampler.analysis import calibrate
    cfg = _config_with_run_dir(args)
    report = calibrate.calibrate(cfg, num_datasets=args.num_datasets, num_timesteps=args.num_timesteps,
                                 thin=args.thin, seed=args.seed, workers=args.workers, address=args.address,
                                 include_rotation_dependent=args.include_rotation_dependent,
                                 max_abs_emission=args.max_abs_emission)
    print(calibrate.format_report(report))
    return 0


def _submit(args) -> int:
    from sampler.execution import submit
    job_id = submit.submit(args.config, address=args.address, overrides=list(args.set or []),
                           run_dir=args.run_dir, workers=args.workers, wait=args.wait)
    print(job_id)
    return 0


def _backtest(args) -> int:
    from sampler.analysis import backtest
    cfg = _config_with_run_dir(args)
    report = backtest.backtest(cfg, horizon=args.horizon, origins=args.origins,
                               statsmodels=not args.no_statsmodels, workers=args.workers, address=args.address,
                               season_length=args.season_length)
    print(backtest.format_report(report))
    return 0


def _bench(args) -> int:
    from sampler import bench
    results = bench.run(quick=args.quick, batches=args.batches, datasets=args.datasets,
                        include=args.only, dtype=args.dtype, out=sys.stdout if not args.json else None)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


def _add_sampling_commands(sub) -> None:
    """run, status, summary, forecast, submit."""
    r = sub.add_parser("run", help="sample every dataset (re-running on an existing run dir resumes it)")
    r.add_argument("config")
    r.add_argument("--run-dir")
    r.add_argument("--workers", type=int, help="Ray actors (0 = in-process, no Ray)")
    r.add_argument("--address", help="address of an existing Ray cluster")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. sampler.num_draws=200")
    r.set_defaults(fn=_run)
    s = sub.add_parser("status", help="progress per shard: draws done, checkpoints, failures")
    s.add_argument("dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_status)
    m = sub.add_parser("summary", help="per dataset: max R-hat, min bulk/tail ESS, divergences, acceptance, step size")
    m.add_argument("dir")
    m.add_argument("--json", action="store_true")
    m.add_argument("--all", action="store_true", help="diagnose every free leaf, not only rotation-invariant ones")
    m.add_argument("--limit", type=int, default=50, help="rows shown in the table")
    m.set_defaults(fn=_summary)
    f = sub.add_parser("forecast", help="smoothing + forecast for every dataset (group `forecast`, PNGs)")
    f.add_argument("dir")
    f.add_argument("--horizon", type=int, default=50)
    f.add_argument("--burn-in", type=int, default=0, help="leading posterior draws to drop")
    f.add_argument("--thin", type=int, default=1, help="keep every K-th draw")
    f.add_argument("--plot", help="datasets whose forecast and lp-trace figures to draw, e.g. 0,3,7 "
                                  "(default: none; plots/diagnostics.png is always written)")
    f.set_defaults(fn=_forecast)
    j = sub.add_parser("submit", help="the same run as a Ray Job on an existing cluster")
    j.add_argument("config")
    j.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HOST:8265")
    j.add_argument("--run-dir", help="run dir as seen from the cluster (shared filesystem or URL)")
    j.add_argument("--workers", type=int)
    j.add_argument("--wait", action="store_true", help="follow the job until it ends")
    j.add_argument("--set", action="append", metavar="KEY=VALUE")
    j.set_defaults(fn=_submit)


def _add_study_commands(sub) -> None:
    """simulate, calibrate, backtest, bench."""
    g = sub.add_parser("simulate", help="draw datasets (and their true params) from the model")
    g.add_argument("config")
    g.add_argument("--out", required=True)
    g.add_argument("--num-datasets", type=int, required=True)
    g.add_argument("--from", dest="source", choices=("prior", "truth"), default="prior")
    g.add_argument("--num-timesteps", type=int, default=100)
    g.add_argument("--num-sequences", type=int, default=None)
    g.add_argument("--missing-fraction", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-abs-emission", type=float, default=1e4,
                   help="redraw a prior draw whose observed emissions exceed this in absolute value")
    g.add_argument("--set", action="append", metavar="KEY=VALUE")
    g.set_defaults(fn=_simulate)
    c = sub.add_parser("calibrate", help="simulation-based calibration: simulate, sample, rank, report")
    c.add_argument("config")
    c.add_argument("--num-datasets", type=int, required=True)
    c.add_argument("--run-dir", required=True)
    c.add_argument("--num-timesteps", type=int, default=100)
    c.add_argument("--thin", type=int, default=None, help="keep every K-th draw for ranks (default: ~100 kept)")
    c.add_argument("--seed", type=int, default=0, help="seed of the simulated datasets")
    c.add_argument("--max-abs-emission", type=float, default=1e4,
                   help="redraw a prior draw whose observed emissions exceed this in absolute value")
    c.add_argument("--include-rotation-dependent", action="store_true",
                   help="also put rotation-dependent quantities (F, H, Q, ... entries) in the verdict")
    c.add_argument("--workers", type=int)
    c.add_argument("--address")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(fn=_calibrate)
    t = sub.add_parser("backtest", help="rolling-origin backtest with scored forecasts, beside statsmodels")
    t.add_argument("config")
    t.add_argument("--horizon", type=int, required=True)
    t.add_argument("--origins", type=int, required=True, help="number of forecast origins (the last K)")
    t.add_argument("--run-dir", required=True)
    t.add_argument("--no-statsmodels", action="store_true",
                   help="skip the baselines (statsmodels and statsforecast)")
    t.add_argument("--season-length", type=int, help="statsforecast's season length (default: the "
                   "seasonal component's period, else 1)")
    t.add_argument("--workers", type=int)
    t.add_argument("--address")
    t.add_argument("--set", action="append", metavar="KEY=VALUE")
    t.set_defaults(fn=_backtest)
    b = sub.add_parser("bench", help="the performance benchmark on this machine")
    b.add_argument("--json", action="store_true")
    b.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    b.add_argument("--batches", help="comma-separated batch sizes for the gradient benchmark")
    b.add_argument("--datasets", type=int, help="datasets in the end-to-end run")
    b.add_argument("--only", help="comma-separated parts: grad,parallel,e2e,io,rss,warmup,ess,headline,scale,sts,sts-panel (default: all)")
    b.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    b.set_defaults(fn=_bench)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sampler", description="Batched Bayesian LG-SSM posterior sampling.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_sampling_commands(sub)
    _add_study_commands(sub)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)   # XLA's log level: set when ``sampler`` was imported
    try:
        return args.fn(args)
    except UserError as err:
        print(f"sampler: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Stopped as err:
        print(f"sampler: {err}: every completed block is stored and checkpointed; run the same command "
              "again to resume", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # an OSError, or Ray's RayTaskError carrying one from an actor
        message = environment_failure(err, getattr(args, "failure_path", None) or getattr(args, "dir", None)
                                      or getattr(args, "out", None))
        if message is None:
            raise   # not environmental: a bug, whose traceback is the report
        print(f"sampler: error: {message}", file=sys.stderr)
        return EXIT_ENVIRONMENT


if __name__ == "__main__":
    sys.exit(main())

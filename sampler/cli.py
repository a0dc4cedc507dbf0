"""``sampler`` command line: the thinnest layer over ``sampler.driver`` and ``sampler.diagnostics``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sampler.errors import UserError


def _run(args) -> int:
    from sampler import config, driver
    overrides = list(args.set or [])
    if args.run_dir:
        overrides.append(f'run.dir="{Path(args.run_dir).resolve()}"')
    cfg = config.load(args.config, overrides)
    run_dir = driver.execute(cfg, workers=args.workers, address=args.address)
    from sampler import diagnostics
    print(diagnostics.format_table(diagnostics.summarize(run_dir), limit=20))
    print(f"run dir: {run_dir}")
    return 0


def _require_run_dir(path: str) -> Path:
    from sampler.runner import RUN_FILE
    run_dir = Path(path)
    if not (run_dir / RUN_FILE).is_file():
        raise UserError(f"{run_dir}: not a sampler run dir (no {RUN_FILE})")
    return run_dir


def _status(args) -> int:
    from sampler import driver
    rows = driver.shard_progress(_require_run_dir(args.dir))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from sampler import config
    total = config.load(Path(args.dir) / "config.toml").sampler.num_draws
    print(f"{'shard':>5} {'datasets':>15} {'warmup':>6} {'draws':>13} {'checkpoints':>20} {'failures':>8}")
    for r in rows:
        a, b = r["datasets"]
        print(f"{r['shard']:>5} {f'{a}-{b - 1}':>15} {'done' if r['warmup_done'] else '-':>6} "
              f"{r['draws_done']:>6}/{total:<6} {','.join(map(str, r['checkpoints'])) or '-':>20} {r['failures']:>8}")
    done = sum(r["draws_done"] == total for r in rows)
    print(f"{done} of {len(rows)} shards complete")
    return 0


def _summary(args) -> int:
    from sampler import diagnostics
    summary = diagnostics.summarize(_require_run_dir(args.dir), all_leaves=args.all)
    print(json.dumps(summary, indent=1) if args.json else diagnostics.format_table(summary, limit=args.limit))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sampler", description="Batched Bayesian LG-SSM posterior sampling.")
    sub = p.add_subparsers(dest="command", required=True)
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
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as err:
        print(f"sampler: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

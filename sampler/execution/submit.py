"""``sampler submit``: the same run as ``sampler run``, as a Ray Job on an existing cluster.

What travels and what must already be there:

* The config is resolved here (``--set`` overrides applied, relative paths made absolute) and shipped
  as the job's ``working_dir`` (one small ``config.toml``); the ``sampler`` package of this machine is
  shipped as a ``py_module``, so the cluster runs the submitter's code.  The cluster's Python must
  have the dependencies (our Docker image, or the same venv on a local cluster).
* The data file and the run dir are read and written by every worker, so they must be on storage
  that every node mounts at the same path (NFS, a Kubernetes shared volume, ...).  The data is not
  shipped: the run dir's ``config.toml`` names the data path, which later ``sampler forecast`` or a
  resume must be able to read again.  So submit from a machine that sees that filesystem (a login
  node, the head node, a pod with the volume); the data is validated here before anything is sent.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import ray.exceptions
from ray.job_submission import JobSubmissionClient

from sampler.errors import UserError
from sampler.execution.distributed import GPUS_ENV
from sampler.execution.runner import RunContext
from sampler.storage import config
from sampler.storage.location import is_url

#: the ``sampler`` package directory, shipped to the cluster as a ``py_module``
_PACKAGE = Path(__file__).resolve().parents[1]


def _validate(config_path, overrides: list[str], run_dir: Optional[str]):
    """The resolved config (its run dir replaced by ``run_dir``), after loading and checking its data
    as ``sampler run`` would.  Raises ``UserError``."""
    if run_dir is not None:
        if not (is_url(run_dir) or Path(run_dir).is_absolute()):
            raise UserError(f"--run-dir {run_dir}: must be an absolute path on the cluster's shared filesystem "
                            "or an object-store URL")
        overrides = overrides + [f"run.dir={json.dumps(run_dir)}"]
    cfg = config.load(config_path, overrides)
    RunContext(cfg, cfg.run.dir)  # reads and validates the data file; writes nothing
    return cfg


def _use_token_if_available() -> bool:
    """Clusters started by ``ray start`` (Ray >= 2.5x) require a token by default, which the job client
    sends only in token mode: turn that mode on when a token is available (``$RAY_AUTH_TOKEN``,
    ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``$RAY_AUTH_MODE`` is unset, as ``ray.init``
    does when it connects to a cluster.  Returns whether token mode is on."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # a Ray without token authentication
        return False
    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _client(address: str):
    """(client, whether it authenticates with a token)."""
    logging.getLogger("ray").setLevel(logging.WARNING)  # no per-package upload chatter
    # its warning is about starting a cluster ("set RAY_AUTH_MODE=disabled to opt out"), not this client
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    token = _use_token_if_available()
    try:
        return JobSubmissionClient(address), token
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--address {address}: cannot reach a Ray dashboard ({first})") from None


def _follow(client, job_id: str) -> str:
    """Stream the job's logs to stderr until it ends; return its final status."""

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            sys.stderr.write(chunk)
            sys.stderr.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as err:  # the log stream closed early; the status below still tells the end
        print(f"sampler: log stream ended: {err}", file=sys.stderr)
    status = client.get_job_status(job_id)
    while not status.is_terminal():
        time.sleep(1.0)
        status = client.get_job_status(job_id)
    return str(status)


def submit(config_path, *, address: str, overrides: list[str], run_dir: Optional[str] = None,
           workers: Optional[int] = None, wait: bool = False) -> str:
    """Submit ``sampler run CONFIG`` as a Ray Job to the cluster whose dashboard is at ``address``.

    Validates the config and data first (``UserError`` on bad input; nothing is submitted).  Prints
    to stderr how to follow the job.  With ``wait``, streams the job's logs to stderr until it ends
    and exits with status 1 (``SystemExit``) unless it succeeded.  Returns the job's submission id.
    """
    cfg = _validate(config_path, list(overrides), run_dir)
    client, token = _client(address)
    command = ["python", "-m", "sampler", "run", "config.toml", "--run-dir", cfg.run.dir]
    if workers is not None:
        command += ["--workers", str(workers)]
    with tempfile.TemporaryDirectory(prefix="sampler-submit-") as staging:
        (Path(staging) / "config.toml").write_text(config.to_toml(cfg))
        runtime_env = {"working_dir": staging, "py_modules": [str(_PACKAGE)],
                       "excludes": ["__pycache__", "*.pyc"]}
        if GPUS_ENV in os.environ:  # GPUs per worker on an autoscaling cluster (see sampler.distributed)
            runtime_env["env_vars"] = {GPUS_ENV: os.environ[GPUS_ENV]}
        job_id = client.submit_job(
            entrypoint=shlex.join(command), runtime_env=runtime_env,
            metadata={"sampler_run_dir": cfg.run.dir, "sampler_config": str(Path(config_path).resolve())})
    ray_cli = "RAY_AUTH_MODE=token ray" if token else "ray"  # Ray's CLI sends the token only in token mode
    print(f"submitted Ray job {job_id}; run dir {cfg.run.dir} (on the cluster's filesystem)\n"
          f"  logs:   {ray_cli} job logs --follow {job_id} --address {address}\n"
          f"  status: {ray_cli} job status {job_id} --address {address}\n"
          f"  shards: sampler status {cfg.run.dir}", file=sys.stderr)
    if wait:
        status = _follow(client, job_id)
        if status != "SUCCEEDED":
            print(f"sampler: Ray job {job_id} ended {status}", file=sys.stderr)
            raise SystemExit(1)
    return job_id

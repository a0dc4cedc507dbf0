"""Real Ray nodes for tests: ``ray start --block`` on loopback addresses with free ports and their own
temp dir, each node in a session (process group) of its own, so a node is stopped or killed through its own
pid and process tree and nothing else on the machine is touched."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> dict[str, int]:
    """Free ports for every server one raylet starts (two raylets on one machine must not share)."""
    return {"--node-manager-port": free_port(), "--object-manager-port": free_port(),
            "--runtime-env-agent-port": free_port(), "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(), "--metrics-export-port": free_port()}


def ray_env(temp_dir: str) -> dict:
    """The environment for the nodes of the cluster in ``temp_dir`` and for commands that join them:
    this venv's `python` first, a shared compilation cache, Ray's token authentication on with the
    cluster's own token (``TEMP_DIR/auth_token``, made on first use; ``~/.ray`` is left alone)."""
    token = Path(temp_dir) / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this one
    env["JAX_COMPILATION_CACHE_DIR"] = str(Path(env.get("JAX_COMPILATION_CACHE_DIR", ".venv/xla-cache")).resolve())
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token)
    return env


#: node addresses.  Ray replaces 127.0.0.1 (and "localhost") with the host's routable address when a
#: node joins a cluster, so the nodes use other loopback addresses, which it leaves as they are.
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def _start_node(args: list[str], temp_dir: str, log_name: str) -> subprocess.Popen:
    """``ray start --block ARGS`` in a session of its own: the raylet and every worker of the node
    descend from it, so the node is stopped through its pid."""
    with open(Path(temp_dir) / log_name, "w") as log:
        return subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block", "--num-gpus=0",
                                 "--disable-usage-stats"] + args,
                                env=ray_env(temp_dir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start_head(temp_dir: str, num_cpus: int) -> tuple[subprocess.Popen, str, str]:
    """A Ray head; returns (process, dashboard address, GCS address) once the dashboard answers."""
    dashboard, gcs = free_port(), free_port()
    ports = {"--port": gcs, "--dashboard-port": dashboard, "--ray-client-server-port": free_port(), **_node_ports()}
    head = _start_node(["--head", f"--node-ip-address={HEAD_IP}", f"--dashboard-host={HEAD_IP}",
                        "--include-dashboard=true",
                        f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}"]
                       + [f"{k}={v}" for k, v in ports.items()], temp_dir, "head.log")
    address = f"http://{HEAD_IP}:{dashboard}"
    deadline = time.time() + 120
    while True:
        assert head.poll() is None, (Path(temp_dir) / "head.log").read_text()
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2).close()
            break
        except urllib.error.HTTPError:  # it answers (401: Ray's token authentication is on)
            break
        except OSError:
            pass
        assert time.time() < deadline, "Ray head did not start"
        time.sleep(0.5)
    return head, address, f"{HEAD_IP}:{gcs}"


def start_worker_node(temp_dir: str, gcs_address: str, num_cpus: int) -> subprocess.Popen:
    """Another raylet joining the head at ``gcs_address`` (the head's temp dir and token)."""
    return _start_node([f"--address={gcs_address}", f"--node-ip-address={WORKER_IP}", f"--num-cpus={num_cpus}"]
                       + [f"{k}={v}" for k, v in _node_ports().items()], temp_dir, f"node-{free_port()}.log")


def wait_for_nodes(temp_dir: str, gcs_address: str, count: int, timeout: float = 120) -> None:
    """Until ``ray status`` at ``gcs_address`` lists ``count`` alive nodes."""
    deadline = time.time() + timeout
    while True:
        res = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", f"--address={gcs_address}"],
                             env=ray_env(temp_dir), capture_output=True, text=True, timeout=60)
        active = res.stdout.split("Active:")[-1].split("Pending:")[0] if "Active:" in res.stdout else ""
        if active.count("node_") >= count:
            return
        assert time.time() < deadline, f"{count} Ray nodes did not come up:\n{res.stdout}\n{res.stderr}"
        time.sleep(1)


def node_processes(node: subprocess.Popen) -> list[psutil.Process]:
    """The node's `ray start` process and everything under it (raylet, agents, workers)."""
    try:
        root = psutil.Process(node.pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_node(node: subprocess.Popen) -> None:
    """Lose a node at once: SIGKILL to its process group and to every process under it."""
    procs = node_processes(node)
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    node.wait()


def stop_node(node: subprocess.Popen) -> None:
    """Stop one node through its own pid and process tree."""
    procs = node_processes(node)[1:] if node.poll() is None else []
    node.terminate()  # its processes share its fate (Ray's kernel fate-sharing); leftovers killed below
    try:
        node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()

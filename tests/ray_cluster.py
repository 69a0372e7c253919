"""A Ray cluster of several nodes on this one machine, started with ``ray start`` as on a real
cluster, for the tests that submit work with ``ray job submit``.

Each node is its own set of processes (raylet, agents, workers) under its own ``--temp-dir``, on
free ports, with token auth on (a token made as the README tells users, in a HOME of the test's
own). A node is killed the way a lost machine goes: SIGKILL to exactly the processes that node
started (found by its temp dir and their descendants), nothing else on the machine; a replacement
joins as an autoscaler's would. Ray's own tests do the same in-process (``ray.cluster_utils.
Cluster``); separate ``ray start`` processes are what ``ray up`` runs.
"""
from __future__ import annotations

import os
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Ray's per-node listeners: a second node on this machine must not take the first's ports.
NODE_PORT_FLAGS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                   "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args, env: dict, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    return subprocess.run([ray_bin, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=check)


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                out[int(entry)] = (ppid, cmd)
            except (OSError, ValueError, IndexError):
                pass
    return out


def kill_processes_of(*marks: str, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to the processes whose command line names one of ``marks`` (a node's temp dir:
    its raylet, agents, GCS...) and all their descendants (its workers, which rename themselves
    ``ray::...``); returns how many. ``ray stop`` would stop every Ray on the machine."""
    procs = processes()
    doomed = {pid for pid, (_, cmd) in procs.items() if any(m in cmd for m in marks) and pid != os.getpid()}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in doomed} - doomed
        doomed |= kids
        grew = bool(kids)
    for pid in doomed:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return len(doomed)


def stop_cluster(*marks: str) -> None:
    """Stop the node(s) whose processes ``marks`` name (:func:`kill_processes_of`): SIGTERM, then
    SIGKILL what is left."""
    kill_processes_of(*marks, sig=signal.SIGTERM)
    time.sleep(2)
    kill_processes_of(*marks, sig=signal.SIGKILL)


def cluster_env(home: Path) -> dict:
    """This process's environment less any RAY_ setting, with token auth on and a token generated
    in ``home`` exactly as the README tells a new user (``ray get-auth-token --generate``): a fresh
    machine has none, and the user's own ~/.ray is never touched."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    env["HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    ray_cli("get-auth-token", "--generate", env=env)
    assert (home / ".ray" / "auth_token").stat().st_size > 0
    return env


@dataclass
class Node:
    name: str
    temp_dir: str
    # What names this node's processes on their command lines besides its temp dir: the head's Ray
    # Client server is started with the GCS address and its port only.
    marks: tuple[str, ...] = ()
    alive: bool = True


@dataclass
class LocalCluster:
    """A head and worker nodes on this machine. ``env``: see :func:`cluster_env`. Use as a context
    manager: every node it started is stopped on exit, however the test ends."""
    env: dict
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        for node in self.nodes:
            stop_cluster(node.temp_dir, *node.marks)
            shutil.rmtree(node.temp_dir, ignore_errors=True)

    @property
    def address(self) -> str:
        """The job server's address (``ray job submit --address``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], marks: tuple[str, ...] = ()) -> Node:
        # A short temp dir: Unix socket paths have at most 107 characters.
        node = Node(name, tempfile.mkdtemp(prefix=f"facray-{name}-", dir="/tmp"), marks)
        self.nodes.append(node)
        # Worker processes on any free port (as ray.cluster_utils.Cluster does): three raylets on one
        # host would otherwise share Ray's default range 10002-19999.
        ports = [f"--{flag}={free_port()}" for flag in NODE_PORT_FLAGS] + ["--min-worker-port=0",
                                                                            "--max-worker-port=0"]
        ray_cli("start", *args, "--temp-dir", node.temp_dir, "--disable-usage-stats", *ports, env=self.env)
        return node

    def start_head(self, num_cpus: float = 0, resources: str = "") -> Node:
        self.gcs_port, self.dashboard_port, client_port = free_port(), free_port(), free_port()
        return self._start("head", ["--head", "--port", str(self.gcs_port), "--num-cpus", str(num_cpus),
                                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                                    "--ray-client-server-port", str(client_port),
                                    *(["--resources", resources] if resources else [])],
                           marks=(f"--port={client_port} ",))

    def add_node(self, name: str, num_cpus: float = 1, num_gpus: float = 0) -> Node:
        """A worker node joining the head (as ``ray up``'s ``worker_start_ray_commands`` do)."""
        return self._start(name, ["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", str(num_cpus),
                                  *(["--num-gpus", str(num_gpus)] if num_gpus else [])])

    def kill(self, node: Node) -> int:
        """The node is lost: SIGKILL its processes, no goodbye to the head."""
        node.alive = False
        return kill_processes_of(node.temp_dir, *node.marks)

    def submit(self, *entrypoint: str, attempts: int = 20, env_vars: dict | None = None) -> str:
        """``ray job submit --working-dir . -- entrypoint``; the job id. ``env_vars``: the job's
        runtime environment variables (its driver's and every worker's, on every node)."""
        found = None
        runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
        for _ in range(attempts):  # the job agent needs a few seconds after `ray start`
            submitted = ray_cli("job", "submit", "--address", self.address, "--working-dir", ".", "--no-wait",
                                *runtime_env, "--", *entrypoint, env=self.env, check=False)
            found = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr)
            if submitted.returncode == 0 and found:
                break
            time.sleep(3)
        assert found, submitted.stderr[-2000:]
        return found.group(0)

    @property
    def jobs(self):
        """Ray's job SDK for polling: one HTTP request, where each ``ray job status`` would start a
        Python that imports Ray (a second of CPU, which the cluster's nodes share here)."""
        if getattr(self, "_jobs", None) is None:
            from ray.job_submission import JobSubmissionClient
            token = (Path(self.env["HOME"]) / ".ray" / "auth_token").read_text().strip()
            self._jobs = JobSubmissionClient(self.address, headers={"authorization": f"Bearer {token}"})
        return self._jobs

    def status(self, job_id: str) -> str:
        info = self.jobs.get_job_info(job_id)
        return f"{info.status.value}: {info.message or ''}"

    def logs(self, job_id: str) -> str:
        return self.jobs.get_job_logs(job_id)

    def wait(self, job_id: str, seconds: float = 300, until: str = "") -> tuple[str, str]:
        """Poll until the job ends (or, with ``until``, its logs match that regex); (status, logs)."""
        deadline, status = time.monotonic() + seconds, ""
        while time.monotonic() < deadline:
            status = self.status(job_id)
            if re.search(r"succeeded|failed|stopped", status, re.IGNORECASE):
                break
            if until and re.search(until, self.logs(job_id), re.MULTILINE):
                break
            time.sleep(2)
        return status, self.logs(job_id)

    def run(self, *entrypoint: str, seconds: float = 300, env_vars: dict | None = None) -> str:
        """Submit, wait, and assert it succeeded; its logs."""
        status, logs = self.wait(self.submit(*entrypoint, env_vars=env_vars), seconds)
        assert re.search(r"succeeded", status, re.IGNORECASE), f"{' '.join(entrypoint)}: {status}\n{logs[-4000:]}"
        return logs

"""Start or join Ray: the one place facray calls ``ray.init``.

Runs on the driver. Under ``ray job submit`` (``RAY_ADDRESS`` set) it joins the cluster; otherwise
it starts a local Ray sized to this machine, every server of it bound to 127.0.0.1 (a local run has
no reason to listen beyond loopback), with a reaper (:mod:`facray.runners.reaper`) that stops it should the
driver be killed. The same command works on a laptop and on a cluster.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Iterable, Iterator, TypeVar

from facray.preflight import cgroup_memory_limit

T = TypeVar("T")

# Ray's switch for a single-machine Ray: the node's address becomes 127.0.0.1 and the GCS, raylet,
# agents and workers listen there only (checked with ss: without it they bind *:PORT). Ray reads it
# at import (ray_constants.ENABLE_RAY_CLUSTER) and its child processes from their environment.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _local_only() -> None:
    os.environ[LOCAL_ONLY_ENV] = "0"
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process may have imported Ray already


# The allocators' settings in every worker of the Ray facray starts or joins. Both are read when a
# process starts, so they are the job's runtime environment, not a task's or an actor's own: as the
# read tasks' own, Ray started fresh read workers for every Ray Data execution (each pass of an
# epoch): 68 of a test's 120 s on 80 faces. A Ray you start yourself (a notebook) gets them only if
# you pass ``runtime_env=job_runtime_env()`` to ``ray.init``.
# - MIMALLOC_PURGE_DELAY=0: Arrow allocates with mimalloc, which by default keeps freed pages for
#   reuse: stream mode's Parquet read tasks grew to 1.3-2.0 GB; a plain pyarrow scan of those rows
#   ended holding 416 MB, 115 MB with this setting (bench/RESULTS.md, "Stream mode's read memory").
# - MALLOC_ARENA_MAX=2: glibc gives each thread of a process its own malloc arena; buffers of
#   changing sizes (decode, detect, forward) spread over them and are not given back. A label actor
#   grew by ~85 MB from 3,000 to 20,000 images (2 cores, bench/label.py: actors' PSS 1.45 -> 1.62
#   GB), flat with two arenas (1.45 -> 1.48 GB); a stream-mode Train worker peaked at 0.92-0.96 GB
#   against 1.06-1.08 GB (bench/stream_worker_memory.py, 20,000 faces, 2 runs each); the same speed
#   in both (2 cores). Its effect on the speed of prepare's actors, Ray Data's read tasks and
#   workers with many threads (GPU nodes, --torch-threads > 2) is not measured: set
#   MALLOC_ARENA_MAX yourself (below) to compare.
ALLOCATOR_ENV = {"MIMALLOC_PURGE_DELAY": "0", "MALLOC_ARENA_MAX": "2"}


def job_runtime_env() -> dict:
    """The runtime environment facray gives ``ray.init``: :data:`ALLOCATOR_ENV` as env vars,
    less those a submitted job (``ray job submit --runtime-env``) sets itself (Ray merges the two
    env var by env var and refuses a variable set in both; the job's own value is kept). A variable
    set in this process's own environment is passed on with its value instead of facray's (e.g.
    ``MALLOC_ARENA_MAX=16 facray train ...`` to measure without facray's two arenas)."""
    try:
        submitted = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        taken = set((submitted.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):  # not Ray's JSON: Ray's own parse will say so
        taken = set()
    env_vars = {k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items() if k not in taken}
    return {"env_vars": env_vars} if env_vars else {}


class ClusterTooSmall(RuntimeError):
    """Work that waited ``--node-wait`` seconds for CPUs/GPUs no live node offers (a lost node not
    replaced, an autoscaler that never added one). Its message names what is needed and what the
    nodes have; finished work (checkpoints, label parts) is kept, so the same command resumes."""


def describe_nodes() -> str:
    """The live nodes and what the cluster has free now, for a :class:`ClusterTooSmall` message:
    "live nodes: 1a2b3c4d (CPU 1, GPU 1), 5e6f7a8b (CPU 1); free now: CPU 0, GPU 1"."""
    import ray

    def amounts(resources: dict) -> str:
        return ", ".join(f"{key} {resources.get(key, 0):g}" for key in ("CPU", "GPU") if key == "CPU" or
                         resources.get(key))
    try:
        nodes = [f"{n['NodeID'][:8]} ({amounts(n.get('Resources', {}))})" for n in ray.nodes() if n.get("Alive")]
        return f"live nodes: {', '.join(nodes)}; free now: {amounts(ray.available_resources())}"
    except Exception:  # noqa: BLE001 - the message goes out without the details
        return "the live nodes could not be listed"


def stop_if_stalled(items: Iterable[T], seconds: float, stalled: Callable[[], str]) -> Iterator[T]:
    """``items`` (a Ray Data iterator: its ``next`` blocks while the pipeline waits), read in a
    helper thread; raises :class:`ClusterTooSmall` with ``stalled()``'s message when none arrives
    for ``seconds``. Ray Data waits forever for an actor no live node can host (the only GPU node
    lost), with no word; a pool that merely shrank keeps going and never trips this. However the
    caller stops (this error, its own, Ctrl-C), the helper leaves its loop and closes ``items``,
    so the pipeline behind it is released."""
    import queue
    handoff: queue.Queue = queue.Queue(maxsize=1)  # the thread reads at most one item ahead
    stop, done = threading.Event(), object()

    def hand(entry) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.2)
                return True
            except queue.Full:
                pass
        return False

    def read():
        try:
            for item in items:
                if not hand((item, None)):
                    break
            else:
                hand((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread as it is
            hand((done, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing a pipeline already torn down
                    pass

    threading.Thread(target=read, name="stop-if-stalled", daemon=True).start()
    try:
        while True:
            try:
                item, error = handoff.get(timeout=seconds)
            except queue.Empty:
                raise ClusterTooSmall(stalled()) from None
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()


class Terminated(BaseException):
    """SIGTERM (a scheduler's pre-emption, ``kill``): ends a command as Ctrl-C does (exit 143)."""


def raise_terminated(signum, frame):
    raise Terminated()


_started_here = False  # did init_ray start (or join) the Ray this process uses?


def stop_ray() -> None:
    """Shut down the Ray :func:`init_ray` started (or leave the cluster it joined); checkpoints and
    label parts are on disk already. A Ray the caller initialised itself (a notebook, a test
    session) is left alone. Never raises: the caller is on its way out."""
    global _started_here
    if _started_here and "ray" in sys.modules:
        _started_here = False
        try:
            import ray
            if ray.is_initialized():
                # Ray's own actors print tracebacks to the driver as they are torn down (measured:
                # PlacementGroupCleaner on Ctrl-C to `facray train`); they stay in the session's
                # logs, and the user reads facray's one line instead. Ray's private dispatcher: no
                # public switch exists after ray.init(log_to_driver=True).
                try:
                    from ray._private.ray_logging import global_worker_stdstream_dispatcher
                    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
                except Exception:  # noqa: BLE001 - a Ray without it: the tracebacks show, nothing worse
                    pass
                ray.shutdown()
        except Exception:  # noqa: BLE001 - leaving anyway; the reaper stops what is left
            pass


def _start_reaper() -> None:
    """``python -m facray.runners.reaper <this pid>`` in its own session, so a Ctrl-C to the terminal's
    process group or a kill of the driver does not take it down with the driver."""
    subprocess.Popen([sys.executable, "-m", "facray.runners.reaper", str(os.getpid())], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                     close_fds=True)


_local_instance = False  # this process started a local Ray (its workers share the driver's cgroup)


def started_local_ray() -> bool:
    """Whether :func:`init_ray` started a local Ray in this process (not joined a cluster)."""
    return _local_instance


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True,
             dashboard: bool = True) -> None:
    """Initialise Ray once per process (a no-op when already initialised). ``dashboard=False``
    starts a local Ray without the dashboard (about 1 GB in ten processes with Ray 2.60), for
    work that needs neither Ray Train's state polling nor a job server: labelling."""
    configure_ray_output()
    import ray

    global _started_here
    if ray.is_initialized():
        return
    _started_here = True
    try:
        # Ray's public calls (ray.get, ...) start a fresh Ray when none is up. After facray shuts
        # Ray down on an error, a helper thread still inside Ray Data would then join the cluster
        # again as a new driver (measured: a stalled `label` under `ray job submit`): never wanted.
        from ray._private import auto_init_hook
        auto_init_hook.enable_auto_connect = False
    except ImportError:  # another Ray version: the thread ends with the process, after a warning
        pass
    address = address or os.environ.get("RAY_ADDRESS")
    # Worker output (per-epoch progress lines) reaches the driver; Ray's own INFO logs do not.
    kwargs = dict(log_to_driver=True, logging_level=logging.WARNING if quiet else logging.INFO,
                  runtime_env=job_runtime_env())
    if address:
        ray.init(address=address, **kwargs)
    else:
        # The dashboard (127.0.0.1 only) also serves the State API that Ray Train polls.
        _local_only()
        global _local_instance
        _local_instance = True
        limit = cgroup_memory_limit()
        if limit is not None:
            # Ray sizes its object store from the machine's memory (or a container's root cgroup),
            # not from a limited sub-group this process runs in (a Slurm job, a capped shell): keep
            # it to Ray's usual 30% of what this process may use.
            kwargs["object_store_memory"] = max(int(0.3 * limit), 80 * 2**20)
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1", **kwargs)
        _start_reaper()
    if threading.current_thread() is threading.main_thread():
        # ray.init replaces the SIGTERM handler with one that exits at once; facray's (installed by
        # facray.cli.main) ends the command as Ctrl-C does: one line, Ray shut down, exit 143.
        signal.signal(signal.SIGTERM, raise_terminated)
    ctx = ray.data.DataContext.get_current()
    # Progress bars want a terminal; under CI/jobs Ray logs a progress line instead.
    ctx.enable_progress_bars = bool(os.environ.get("FACRAY_PROGRESS", "")) or os.isatty(2)


def fit_in_thread(trainer):
    """``trainer.fit()`` (a Ray Train trainer or a Tune ``Tuner``) run in a helper thread, the main
    thread waiting.

    Ray Train and Tune install their own SIGINT handlers when ``fit`` runs on the main thread (Tune
    then saves its state and returns trials that never ran; facray's results table crashed on
    them). Ray Train's: the first
    Ctrl-C "gracefully aborts" the run, whose end the caller cannot tell from a failure, and the
    handler stays installed afterwards (measured: Ctrl-C twice to ``facray train`` exited 2 with
    nothing printed). Off the main thread Ray installs none, so Ctrl-C and SIGTERM reach facray's
    one handler (:func:`facray.cli.main`) as usual: it shuts Ray down and says how to resume; the
    last checkpoint is kept.
    """
    import threading
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller's thread as it is
            outcome["error"] = e

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# The lines facray's Train workers print ("[rank 0] epoch 3/10: ..."). Ray's log deduplication
# (on by default) folds worker lines that differ only in their numbers within 5 s: epochs of a
# few seconds would reach the terminal and `ray job logs` as every third line. These never are.
PROGRESS_LINE_REGEX = r"^\[rank \d+\] "


def configure_ray_output(verbose: bool = False) -> None:
    """What Ray prints, set before Ray is imported or started (environment variables the driver
    reads, and Ray Train hands on to its controller and workers): facray's progress lines are
    never deduplicated; a worker's ``print`` is printed once (Ray Train also copies it into its
    logger, which shows it a second time when Ray wraps stdout); ``verbose`` keeps Ray Train's own
    per-report lines (checkpoint paths, metric dicts), otherwise only its warnings (see
    :func:`train_logging_config`). A variable the user set is kept."""
    os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", PROGRESS_LINE_REGEX)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if verbose:
        os.environ["FACRAY_VERBOSE"] = "1"


def train_logging_config():
    """Ray Train's ``LoggingConfig`` for every facray run: INFO with ``--verbose``, else WARNING
    (its "Checkpoint successfully created at ..." and "Reporting training result ..." lines,
    one pair per epoch and worker, are internals)."""
    import ray.train
    return ray.train.LoggingConfig(log_level="INFO" if os.environ.get("FACRAY_VERBOSE") == "1" else "WARNING")


def verbose() -> bool:
    """Whether ``--verbose`` was given (:func:`configure_ray_output`)."""
    return os.environ.get("FACRAY_VERBOSE") == "1"


def quiet_train_worker(verbose: bool) -> None:
    """In a Ray Train worker, unless ``verbose``: Ray Train's "Reporting training result N: ..."
    line (a full metrics dict and checkpoint path per epoch) is logged by a logger named after its
    file, which :func:`train_logging_config` cannot reach; set that logger to WARNING."""
    if verbose:
        return
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: its lines stay
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


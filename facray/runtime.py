"""Start or join Ray: the one place facray calls ``ray.init``.

Runs on the driver. Under ``ray job submit`` (``RAY_ADDRESS`` set) it joins the cluster; otherwise
it starts a local Ray sized to this machine, its dashboard bound to 127.0.0.1, so the same
command works on a laptop and on a cluster.
"""
from __future__ import annotations

import logging
import os


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True,
             dashboard: bool = True) -> None:
    """Initialise Ray once per process (a no-op when already initialised). ``dashboard=False``
    starts a local Ray without the dashboard (about 1 GB in ten processes with Ray 2.60), for
    work that needs neither Ray Train's state polling nor a job server: labelling."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Worker output (per-epoch progress lines) reaches the driver; Ray's own INFO logs do not.
    kwargs = dict(log_to_driver=True, logging_level=logging.WARNING if quiet else logging.INFO)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # The dashboard (127.0.0.1 only) also serves the State API that Ray Train polls.
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1", **kwargs)
    ctx = ray.data.DataContext.get_current()
    # Progress bars want a terminal; under CI/jobs Ray logs a progress line instead.
    ctx.enable_progress_bars = bool(os.environ.get("FACRAY_PROGRESS", "")) or os.isatty(2)

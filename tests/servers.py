"""Servers the cluster tests start on 127.0.0.1 (no other network): an S3-compatible store (moto)
and an MLflow tracking server. Context managers, so a module-scoped cluster test and a
function-scoped fixture share them."""
from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.ray_cluster import free_port


def wait_for(url: str, proc: subprocess.Popen, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer {url} within {seconds:.0f}s")


@contextlib.contextmanager
def moto_s3(bucket: str):
    """A moto S3 server with ``bucket``; yields the AWS variables that point at it (as a cluster's
    nodes would have them: environment, not code)."""
    pytest.importorskip("moto.server")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        wait_for(f"http://127.0.0.1:{port}/moto-api/", proc, 60, "moto server")
        s3_filesystem(env, allow_bucket_creation=True).create_dir(bucket)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def s3_filesystem(env: dict, **options) -> pafs.S3FileSystem:
    """The test's S3 server, for checking what landed where."""
    return pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"].split("://")[1], scheme="http",
                             access_key="testing", secret_key="testing", region="us-east-1", **options)


def s3_listing(env: dict, prefix: str) -> list[str]:
    fs = s3_filesystem(env)
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True)))


def s3_read(env: dict, path: str) -> io.BytesIO:
    with s3_filesystem(env).open_input_stream(path) as f:
        return io.BytesIO(f.read())


@contextlib.contextmanager
def mlflow_server(root: Path):
    """``mlflow server`` with a SQLite backend and artifacts under ``root``; yields its URI."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc, 120, "mlflow server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""``--data auto``: whether the Ray Train workers load the prepared arrays into memory or are fed by
Ray Data (stream), decided from the sizes before any worker starts. No Ray here: the runner supplies the nodes'
memory (:func:`facray.runners.train.ray_nodes`, which also applies
:func:`facray.preflight.cgroup_memory_limit`).

The rule (also in ``--data``'s help): *memory* when every worker that can land on one node,
holding its decoded arrays times :data:`DECODE_HEADROOM`, fits in :data:`NODE_SHARE` of that
node's memory for Ray workers (Ray's ``memory`` resource: RAM less the object store); *stream*
otherwise. ``--data memory`` that does not fit is refused with the sizes.

In memory mode every worker loads the whole train split (all variants) and the originals of the
validation and test splits (:func:`facray.training.splits.load_split_arrays`): the arrays do not
shrink with more workers.
"""
from __future__ import annotations

from dataclasses import dataclass

from facray.attributes import ATTRIBUTES

# Peak worker memory while loading / the decoded arrays: Arrow's read-ahead batches and its memory
# pool live beside the arrays while they decode. Measured 1.32-1.41x over three runs
# (bench/data_mode.py: celebahq_dev at 128 px, 37,000 rows, raw format, with and without sketch).
DECODE_HEADROOM = 1.5
# Of a node's memory for Ray workers, what the workers' arrays may take: the rest is the model,
# activations, the optimiser and Python.
NODE_SHARE = 0.8
# Per row beside the pixels: labels (40 int8), landmarks (10 float32), and the object columns
# (image id, path, split, variant, ...) as Python strings.
ROW_OVERHEAD_BYTES = len(ATTRIBUTES) + 10 * 4 + 400
GB = 1e9


@dataclass(frozen=True)
class Node:
    """A Ray node as the workers see it: its memory for Ray workers (bytes) and its CPUs and GPUs."""
    memory: float
    cpus: float
    gpus: float = 0.0


def row_bytes(meta: dict, columns: tuple[str, ...]) -> int:
    """Decoded bytes of one prepared row with these pixel ``columns`` (``image``, ``sketch``,
    ``masks``), as :func:`facray.data.prepared.read_prepared` returns it. ``meta``: the prepared
    data's metadata (``size``, ``sketch_channels``, ``mask_size``)."""
    side = meta["size"]
    total = ROW_OVERHEAD_BYTES
    if "image" in columns:
        total += side * side * 3
    if "sketch" in columns and meta.get("sketch_channels"):
        total += side * side * meta["sketch_channels"]
    if "masks" in columns and meta.get("mask_size"):
        total += len(ATTRIBUTES) * meta["mask_size"] ** 2
    return total


def bytes_per_worker(meta: dict, rows: dict[str, int], columns: tuple[str, ...]) -> int:
    """Decoded bytes one memory-mode worker holds: ``rows`` (``train``, ``val``, ``test`` usable
    row counts, :func:`facray.training.splits.check_splits`) x :func:`row_bytes`."""
    return sum(rows.values()) * row_bytes(meta, columns)


def workers_per_node(num_workers: int, cpus_per_worker: float, gpus_per_worker: float, node: Node) -> int:
    """The most of ``num_workers`` workers Ray can place on ``node`` (by its CPUs and GPUs)."""
    fit = node.cpus // cpus_per_worker if cpus_per_worker > 0 else num_workers
    if gpus_per_worker > 0:
        fit = min(fit, node.gpus // gpus_per_worker)
    return int(max(0, min(num_workers, fit)))


def check_streamable(requested: str, memory_only: str) -> None:
    """ValueError when ``--data stream`` is asked for a run that cannot stream (``memory_only``:
    why, "" when it can): checked before Ray starts, and again by :func:`choose_data_mode`."""
    if requested == "stream" and memory_only:
        raise ValueError(f"--data stream: {memory_only}")


def choose_data_mode(requested: str, per_worker: int, nodes: list[Node], num_workers: int, cpus_per_worker: float,
                     gpus_per_worker: float = 0.0, memory_only: str = "") -> tuple[str, str]:
    """``(mode, line)``: ``memory`` or ``stream`` for ``requested`` (``auto``, ``memory``,
    ``stream``) and the line saying why, with the sizes. ``per_worker``: :func:`bytes_per_worker`;
    ``nodes``: the cluster's nodes (a worker-less head node is ignored); ``memory_only``: why this
    run cannot stream ("" when it can).

    Raises ValueError when ``memory`` is asked for (or ``auto`` cannot stream) and the arrays do
    not fit, naming the sizes and the ways out.
    """
    if requested == "stream":
        check_streamable(requested, memory_only)
        return "stream", "data: stream (Ray Data feeds the workers), as asked"
    num_workers = max(1, num_workers)
    hosts = [(n, workers_per_node(num_workers, cpus_per_worker, gpus_per_worker, n)) for n in nodes]
    hosts = [(n, k) for n, k in hosts if k > 0] or [(n, num_workers) for n in nodes]
    # The tightest node: the least memory per worker that could land on it.
    node, k = min(hosts, key=lambda h: h[0].memory / h[1]) if hosts else (Node(0, 0), num_workers)
    need = per_worker * DECODE_HEADROOM * k
    room = node.memory * NODE_SHARE
    sizes = (f"each worker loads {_size(per_worker, 2)} of decoded arrays; {k} worker(s) on a node need "
             f"{_size(need)} with decode headroom (x{DECODE_HEADROOM:g}), and {NODE_SHARE:.0%} of the "
             f"tightest node's {_size(node.memory)} for Ray workers is {_size(room)}")
    if need <= room:
        return "memory", f"data: memory ({sizes})"
    if requested == "auto" and not memory_only:
        return "stream", f"data: stream, since the arrays do not fit in memory ({sizes})"
    why = f"--data memory does not fit: {sizes}" if requested == "memory" else \
        f"the prepared arrays do not fit in memory ({sizes}), and {memory_only}"
    raise ValueError(f"{why}; use --data stream{'' if memory_only else ' (or auto)'}, fewer workers per node "
                     f"(--cpus-per-worker), nodes with more memory, or data prepared smaller (--size)")


def _size(n: float, digits: int = 1) -> str:
    return f"{n / GB:.{digits}f} GB" if n >= GB else f"{n / 1e6:.{digits}f} MB"

"""How many labelling actors, of how many torch threads, a cluster's resources hold (no Ray:
``resources`` is what ``ray.cluster_resources()`` returns)."""
from __future__ import annotations

from facray.labelling.config import LabelConfig


ACTOR_MEMORY = 1.0e9  # an actor that predicts: torch, OpenCV, the model and a batch of images
# One that only decodes and crops: no torch, 0.18 GB PSS each on 2 cores (bench/label.py); 1024 px
# inputs decoded 8 at a time add 25 MB.
PREPROCESS_ACTOR_MEMORY = 0.4e9


def pool_sizes(cfg: LabelConfig, resources: dict) -> tuple[int, int, int]:
    """(label or predict actors, preprocess actors, torch threads per predicting actor) for
    ``resources`` (``ray.cluster_resources()``): what the user gave, else sized to the cluster.

    Split (the default): with GPUs one predict actor per GPU share and every CPU left over
    decoding, so no GPU waits on one CPU stage; on CPU one predict actor per 4 CPUs with a thread
    per CPU (at most 4) and a preprocess actor per CPU. The CPUs are oversubscribed on purpose:
    Ray Data's backpressure pauses the preprocess actors whenever prediction falls behind, so the
    cores go where the work is (2 cores: the fused layout's speed with 0.3 GB less, bench/label.py).
    Fused: one actor per CPU. Never more actors than the memory holds."""
    cpus, gpus, memory = int(resources.get("CPU", 1)), resources.get("GPU", 0), resources.get("memory", ACTOR_MEMORY)
    if cfg.layout == "fused":
        return cfg.num_actors or max(1, min(cpus, int(memory // ACTOR_MEMORY))), 0, cfg.torch_threads or 1
    if cfg.gpus > 0:
        predict = cfg.num_actors or max(1, int(gpus // cfg.gpus))
        threads, spare = cfg.torch_threads or 1, cpus - predict
    else:
        predict = cfg.num_actors or max(1, min(cpus // 4, int(memory // ACTOR_MEMORY) - 1))
        threads, spare = cfg.torch_threads or max(1, min(4, cpus // predict)), cpus
    by_memory = int((memory - predict * ACTOR_MEMORY) // PREPROCESS_ACTOR_MEMORY)
    return predict, cfg.preprocess_actors or max(1, min(spare, by_memory)), threads

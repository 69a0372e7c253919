"""The picture of a sweep: its metric over the grid. Pure pandas/matplotlib (no Ray).

Two swept keys give a heatmap (the KTH paper's lr x epochs table as an image), one key a line,
more keys one bar per trial. Trials stopped early or failed show their last reported value,
marked, so a grid cell is never silently empty.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def metric_grid(table: pd.DataFrame, rows: str, columns: str, metric: str, mode: str) -> pd.DataFrame:
    """``rows`` x ``columns`` table of the best ``metric`` per cell (over repeated samples)."""
    best = "max" if mode == "max" else "min"
    return table.pivot_table(index=rows, columns=columns, values=metric, aggfunc=best).sort_index().sort_index(axis=1)


def plot_metric(table: pd.DataFrame, space, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(space.space)
    swept = [k for k in keys if table[k].nunique() > 1] or keys
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(swept) == 2:
        grid = metric_grid(table, swept[0], swept[1], space.metric, space.mode)
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [f"{v:g}" if isinstance(v, float) else str(v) for v in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [f"{v:g}" if isinstance(v, float) else str(v) for v in grid.index])
        ax.set_xlabel(swept[1])
        ax.set_ylabel(swept[0])
        complete = table.assign(done=table.status == "finished").pivot_table(
            index=swept[0], columns=swept[1], values="done", aggfunc="all").reindex_like(grid)
        for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
            if np.isfinite(v):
                mark = "" if complete.iat[i, j] else "*"
                ax.text(j, i, f"{v:.4f}{mark}", ha="center", va="center", color="w", fontsize=8)
        if not complete.to_numpy(dtype=bool).all():
            ax.set_xlabel(f"{swept[1]}   (* stopped early or failed: last value reported)")
        fig.colorbar(image, ax=ax, label=space.metric)
    elif len(swept) == 1:
        ordered = table.sort_values(swept[0])
        ax.plot(ordered[swept[0]], ordered[space.metric], "o-")
        stopped = ordered[ordered.status != "finished"]
        ax.scatter(stopped[swept[0]], stopped[space.metric], marker="x", color="r", label="stopped early / failed")
        if pd.api.types.is_numeric_dtype(ordered[swept[0]]) and (ordered[swept[0]] > 0).all():
            ax.set_xscale("log")
        ax.set_xlabel(swept[0])
        ax.set_ylabel(space.metric)
        ax.legend(fontsize=8)
    else:
        labels = [", ".join(f"{k}={r[k]}" for k in swept) for _, r in table.iterrows()]
        ax.barh(range(len(table)), table[space.metric])
        ax.set_yticks(range(len(table)), labels, fontsize=7)
        ax.set_xlabel(space.metric)
    ax.set_title(f"{space.name}: {space.metric} ({space.mode}) per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

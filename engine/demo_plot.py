"""The PNG of `streamscore demo`: drift statistics, rolling AUC and served model version over the
stream position, and the score distribution per phase (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from engine.demo_live import DriftSample
from engine.demo_report import LabelledScores, phases, rolling_auc


def plot(path: Path, ls: LabelledScores, samples: Sequence[DriftSample], drift_at: int, chunk: int,
         marks: Mapping[str, int]) -> Path:
    """Write the demo's PNG: drift ratio, rolling AUC and served version over stream position,
    and the score distribution per phase. `marks`: label -> stream position (vertical lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 11))
    grid = fig.add_gridspec(4, 1, height_ratios=[1.2, 1.0, 0.6, 1.2], hspace=0.45)
    ax_drift = fig.add_subplot(grid[0])
    ax_auc = fig.add_subplot(grid[1], sharex=ax_drift)
    ax_ver = fig.add_subplot(grid[2], sharex=ax_drift)
    ax_hist = fig.add_subplot(grid[3])

    # After a hot swap the gauges keep the old champion's last windows until the new champion's
    # monitors (warming up) close one: only the samples taken while the first version served.
    first = samples[0].version if samples else None
    watched = [s for s in samples if s.version == first]
    xs = [s.consumed for s in watched]
    ax_drift.plot(xs, [s.feature_ratio for s in watched], "-o", ms=3, label="largest feature PSI / threshold")
    ax_drift.plot(xs, [s.score_ratio for s in watched], "-o", ms=3, label="score PSI / threshold")
    ax_drift.axhline(1.0, color="red", ls="--", lw=1, label="threshold (max(calibrated, floor))")
    ax_drift.set_ylabel("PSI / threshold")
    ax_drift.set_title(f"Drift statistics of v{first}'s last closed window (engine /metrics every 0.5 s, "
                       "max over partitions)")

    chunks = rolling_auc(ls, chunk)
    for c_version in sorted({c.version for c in chunks}):
        cells = [c for c in chunks if c.version == c_version and c.auc is not None]
        ax_auc.plot([(c.start + c.end) / 2 for c in cells], [c.auc for c in cells], "-o", label=f"v{c_version}")
    ax_auc.set_ylabel("AUC")
    ax_auc.set_title(f"Rolling AUC per {chunk:,} events (labels: purchase within the horizon, from the live stream)")

    ax_ver.step(ls.position, ls.version, where="post")
    ax_ver.set_yticks(sorted(set(ls.version.tolist())) or [1])
    ax_ver.set_ylabel("version")
    ax_ver.set_xlabel("stream position (events produced; drift panel: events consumed by the engine)")
    ax_ver.set_title("Model version in the score records")

    for ax in (ax_drift, ax_auc, ax_ver):
        ax.axvline(drift_at, color="black", ls=":", lw=1)
        for i, (name, pos) in enumerate(marks.items()):
            ax.axvline(pos, color=f"C{i + 2}", ls="-.", lw=1, label=name if ax is ax_drift else None)
        ax.grid(alpha=0.3)
    ax_drift.legend(fontsize=8, loc="upper left")
    ax_auc.legend(fontsize=8, loc="lower left")
    ax_drift.text(drift_at, ax_drift.get_ylim()[1], " drift injected", va="top", fontsize=8)

    bins = np.linspace(0.0, 1.0, 41)
    for p in phases(ls, drift_at):
        ax_hist.hist(p.scores, bins=bins, histtype="step", density=True, lw=1.5,
                     label=f"{p.name} (n {p.n:,}, mean {p.mean:.3f})")
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel("score")
    ax_hist.set_ylabel("density (log)")
    ax_hist.set_title("Score distribution before and after")
    ax_hist.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

"""PNG training curves of GRPO stages (matplotlib, Agg backend: no display needed).

One figure per GRPO stage, ``<out>/<stage>.png``, three panels against the step: reward (the total, plus the
format and language components when logged, dashed), accuracy, and mean response length in tokens.
"""
from __future__ import annotations

from pathlib import Path

from r1mega.report.collect import CURVES, EXTRA_REWARDS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list, key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_stage(name: str, rows: list, path: Path) -> Path:
    """Write the stage's figure to ``path`` and return it."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], CURVES.items()):
        xs, ys = _series(rows, key)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3,
                label="total" if key == "reward/total" else label)
        if key == "reward/total":
            for extra in EXTRA_REWARDS:
                ex, ey = _series(rows, extra)
                if ex:
                    ax.plot(ex, ey, linestyle="--", linewidth=1, label=extra.split("/")[-1])
            ax.legend(fontsize=7)
        if not xs:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "response/length_mean":
            ax.set_ylabel("tokens (mean)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name} (GRPO)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


__all__ = ["plot_stage"]

"""The PNG plots of the scenarios (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.batch import BatchScenario
from scenarios.run import ArmResult
from scenarios.sampling import complete
from scenarios.stats import CUT

COLORS = {
    "vLLM FIFO": "tab:red",
    "vLLM priority": "tab:orange",
    "llm-dispatcher": "tab:blue",
    "idle (interactive only, dispatcher)": "tab:green",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_priority(results: Sequence[ArmResult], idle: ArmResult | None, path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    arms = ([idle] if idle else []) + list(results)
    for ax, cls in zip(axes[:2], ("interactive", "batch"), strict=True):
        for res in arms:
            v = sorted(r.ttft for r in res.records if r.cls == cls and r.status in (200, CUT) and r.ttft is not None)
            if v:
                ax.plot(v, np.linspace(0, 1, len(v)), label=res.arm, color=COLORS.get(res.arm))
        ax.set_xscale("log")
        ax.set_xlabel("time to first token (s, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{cls}: TTFT CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for res in results:
        pts = [
            (r.start, r.ttft)
            for r in res.records
            if r.cls == "interactive" and r.status in (200, CUT) and r.ttft is not None
        ]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, s=6, label=res.arm, color=COLORS.get(res.arm))
    ax.set_yscale("log")
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel("interactive TTFT (s, log)")
    ax.set_title("interactive TTFT over the run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path, title)


def plot_goodput(results: Sequence[ArmResult], path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for res in results:
        rows = complete(res.samples)
        t = np.array([r.t for r in rows])
        g = np.array([r.gen_total() for r in rows])
        run = np.array([r.running_total() for r in rows])
        if len(t) > 10:
            step = 10  # ~1 s
            axes[0].plot(
                t[step:],
                (g[step:] - g[:-step]) / (t[step:] - t[:-step]),
                label=res.arm,
                color=COLORS.get(res.arm),
            )
            axes[1].plot(t, run, label=res.arm, color=COLORS.get(res.arm), alpha=0.8)
    axes[0].set_title("engine output tokens/s (1 s window)")
    axes[1].set_title("sequences running in the engine (max 16)")
    for ax in axes:
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path, title)


def plot_replicas(results: Sequence[ArmResult], path: Path, title: str, names: list[str]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(5 * (len(results) + 1), 4.2))
    for ax, res in zip(axes, results, strict=False):
        rows = complete(res.samples)
        t = [r.t for r in rows]
        for i, n in enumerate(names):
            ax.plot(t, [r.running[i] for r in rows], label=f"{n} running")
        if res.through_dispatcher:
            ax.plot(t, [r.tickets for r in rows], label="tickets waiting", color="grey", alpha=0.6)
        else:
            ax.plot(t, [r.waiting_total() for r in rows], label="vLLM waiting (both)", color="grey", alpha=0.6)
        ax.set_title(res.arm)
        ax.set_xlabel("time (s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    x = np.arange(len(results))
    for i, n in enumerate(names):
        counts = [sum(r.replica == f"r{i}" and r.status == 200 for r in res.records) for res in results]
        ax.bar(x + (i - 0.5) * 0.38, counts, 0.38, label=n)
    ax.set_xticks(x, [r.arm for r in results], fontsize=8)
    ax.set_title("completed requests per replica")
    ax.legend(fontsize=8)
    _save(plt, fig, path, title)


def plot_floor(results: Sequence[ArmResult], floor: float, path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for res in results:
        v = sorted(r.tps for r in res.records if r.status == 200 and r.tps)
        if v:
            axes[0].plot(v, np.linspace(0, 1, len(v)), label=res.arm, color=COLORS.get(res.arm))
        rows = complete(res.samples)
        axes[1].plot(
            [r.t for r in rows],
            [r.running_total() for r in rows],
            label=res.arm,
            color=COLORS.get(res.arm),
            alpha=0.8,
        )
    axes[0].axvline(floor, color="k", ls="--", label=f"floor {floor:g} tok/s")
    axes[0].set_xlabel("per-stream decode tokens/s")
    axes[0].set_ylabel("fraction of admitted requests")
    axes[0].set_title("per-stream speed CDF")
    axes[1].set_title("sequences running in the engine")
    axes[1].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path, title)


def plot_batch(scen: BatchScenario, duration: float, path: Path, title: str) -> None:
    """Scenario 6: interactive TTFT CDF per arm; engine tokens/s over time against the capacity; the
    batch's progress and the sequences running."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    arms = [(scen.alone, "tab:green"), (scen.with_batch, "tab:blue")]
    ax = axes[0]
    for res, color in arms:
        v = sorted(r.ttft for r in res.records if r.status in (200, CUT) and r.ttft is not None)
        if v:
            ax.plot(v, np.linspace(0, 1, len(v)), label=res.arm, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("interactive time to first token (s, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("interactive TTFT CDF")
    ax = axes[1]
    for res, color in [(scen.saturation, "tab:grey"), *arms]:
        rows = complete(res.samples)
        t = np.array([r.t for r in rows])
        g = np.array([r.gen_total() for r in rows])
        step = 8  # 2 s at 250 ms
        if len(t) > step:
            ax.plot(t[step:], (g[step:] - g[:-step]) / (t[step:] - t[:-step]), label=res.arm, color=color, lw=1)
    ax.axhline(scen.capacity_measured, color="k", ls="--", lw=1, label=f"capacity {scen.capacity_measured:.0f}")
    ax.axhline(0.95 * scen.capacity_measured, color="k", ls=":", lw=1, label="95 % of capacity")
    ax.axvline(duration, color="tab:red", ls="--", lw=1, label="interactive arrivals end")
    ax.set_xlabel("time (s)")
    ax.set_title("engine output tokens/s (2 s window)")
    ax.set_ylim(bottom=0)
    ax = axes[2]
    polls = scen.with_batch.polls
    ax.plot([p.t for p in polls], [p.completed + p.failed for p in polls], color="tab:purple", label="batch lines done")
    ax.axvline(duration, color="tab:red", ls="--", lw=1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("batch lines done")
    ax.set_title("batch progress; sequences running (right)")
    ax2 = ax.twinx()
    for res, color in arms:
        rows = complete(res.samples)
        ax2.plot([r.t for r in rows], [r.running_total() for r in rows], color=color, alpha=0.5, lw=0.8,
                 label=f"running: {res.arm}")  # fmt: skip
    ax2.set_ylim(0, 17)
    ax2.set_ylabel("sequences running (max 16)")
    lines, labels = ax.get_legend_handles_labels()
    lines2, labels2 = ax2.get_legend_handles_labels()
    ax.legend(lines + lines2, labels + labels2, fontsize=8, loc="center right")
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    _save(plt, fig, path, title)


def plot_fairness(scen: Any, duration: float, path: Path, title: str) -> None:
    """Scenario 7: each token's queue-wait CDF per arm, and its served output tokens/s over time."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    styles = {"light": "-", "heavy": "--"}
    colors = {scen.alone.name: "tab:green", scen.fifo.name: "tab:red", scen.fair.name: "tab:blue"}
    ax = axes[0]
    for arm in (scen.alone, scen.fifo, scen.fair):
        for cls, waits in sorted(arm.queue_wait.items()):
            v = sorted(max(w, 1e-4) for w in waits)
            ax.plot(v, np.linspace(0, 1, len(v)), styles[cls], color=colors[arm.name], label=f"{arm.name}: {cls}")
    ax.set_xscale("log")
    ax.set_xlabel("queue wait (s, log; the sender's own measure)")
    ax.set_ylabel("fraction of served requests")
    ax.set_title("queue wait CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for ax, arm in zip(axes[1:], (scen.fifo, scen.fair), strict=True):
        edges = np.arange(0, duration + 20, 5.0)
        for cls in ("heavy", "light"):
            ends = [(r.start + r.e2e, r.out_tokens) for r in arm.records if r.cls == cls and r.status == 200 and r.e2e]
            hist, _ = np.histogram([e for e, _ in ends], bins=edges, weights=[n for _, n in ends])
            ax.step(edges[:-1], hist / 5.0, where="post", label=cls, linestyle=styles[cls])
        ax.axvline(duration, color="grey", linewidth=0.8)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("output tokens/s served (5 s bins)")
        ax.set_title(arm.name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path, title)

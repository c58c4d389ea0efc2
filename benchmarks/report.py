"""Report of an end-to-end benchmark result (`benchmarks.bench_e2e`): markdown table and PNG plots.

`write_report(result, out_dir)` writes ``e2e.md`` (environment, one row per run, the
streamscore/peer ratios measured in that run, streamscore's stage breakdown) and
``latency_cdf.png``, ``latency_vs_load.png``, ``throughput.png``; it returns the markdown.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _f(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{nd}f}"


def saturation(result: dict[str, Any]) -> dict[str, float]:
    """Saturation throughput (events/s) per system label, from the 'saturation' scenario."""
    return {r["label"]: r["throughput"] for r in result["runs"]
            if r.get("scenario") == "saturation" and r.get("throughput")}


def ratios(result: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(streamscore label, peer label, throughput ratio) for every pair measured in this run."""
    sat = saturation(result)
    ours = [k for k in sat if k.startswith("streamscore") and " x" not in k]
    peers = [k for k in sat if not k.startswith("streamscore")]
    return [(a, b, sat[a] / sat[b]) for a in ours for b in peers]


def _warmup_note(warmup: dict[str, Any] | None) -> str:
    if not warmup:
        return " No broker warm-up run."
    return (f" Broker warmed up first by a discarded streamscore exactly-once drain of {warmup['events']:,} events "
            f"({_f(warmup.get('throughput'), 0)} events/s).")


def markdown(result: dict[str, Any]) -> str:
    env = result.get("environment", {})
    v = env.get("versions", {})
    lines = [
        f"End-to-end benchmark, {result.get('started_at', '')}: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, "
        f"load average {env.get('loadavg_start')} at start, {env.get('loadavg_end')} at end; Python {v.get('python')}, "
        f"Kafka {v.get('kafka', '?')} on the same machine, {env.get('partitions')} partitions, "
        f"{env.get('users', 0):,} users; {result.get('duration_s', 0):.0f} s in all."
        + _warmup_note(result.get("broker_warmup")),
        "",
        "| system | scenario | offered ev/s | throughput ev/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
        "| CPU (cores, measured span) | RSS MB | ev per CPU-s | answered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['label']} | {r.get('scenario', '')} | {_f(r.get('target_rate'), 0)} | FAILED: "
                         f"{r['error'].splitlines()[0][:80]} | | | | | | | | | |")
            continue
        lat = r.get("latency_ms", {})
        res = r.get("resources", {})
        offered = r.get("target_rate") or "backlog"
        dup = f" (+{r['duplicates']:,} dup)" if r.get("duplicates") else ""
        lines.append(
            f"| {r['label']} | {r.get('scenario', '')} | {offered if isinstance(offered, str) else _f(offered, 0)} "
            f"| {_f(r.get('throughput'), 0)} | {_f(lat.get('p50'))} | {_f(lat.get('p90'))} | {_f(lat.get('p99'))} "
            f"| {_f(lat.get('p99.9'))} | {_f(lat.get('max'))} | {_f(res.get('cpu_in_span'), 2)} "
            f"| {_f(res.get('rss_max_mb_total'), 0)} | {_f(r.get('events_per_cpu_s'), 0)} "
            f"| {r.get('answered', 0):,}/{r['events']:,}{dup} |")
    rs = ratios(result)
    if rs:
        lines += ["", "Saturation throughput ratios, measured in this run:", ""]
        lines += [f"- {a} / {b}: **{x:.2f}x**" for a, b, x in rs]
    stage_rows = [r for r in result["runs"] if r.get("stages", {}).get("us_per_event") and r.get("scenario") == "saturation"]
    if stage_rows:
        stages = list(stage_rows[0]["stages"]["us_per_event"])
        lines += ["", "streamscore stage breakdown at saturation (µs of batch wall time per event; share):", "",
                  "| run | " + " | ".join(stages) + " | total |", "|---" * (len(stages) + 2) + "|"]
        for r in stage_rows:
            st = r["stages"]
            cells = [f"{st['us_per_event'].get(s, 0):.1f} ({100 * st['share'].get(s, 0):.0f} %)" for s in stages]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {sum(st['us_per_event'].values()):.1f} |")
    if result.get("restore"):
        rr = result["restore"]
        lines += ["", f"Restore ({rr['events']:,}-event backlog): " + "; ".join(
            f"{k}: ready again in {v['seconds_to_ready']:.1f} s, {v['records_restored']:,} changelog records restored "
            f"in {v['restore_s_sum']:.2f} s" for k, v in rr["restarts"].items())]
    return "\n".join(lines) + "\n"


def _save(fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str | None = None) -> Path:
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(result: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate_runs = [r for r in result["runs"] if r.get("mode") == "rate" and r.get("latency_cdf")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rate_runs:
        ax.plot([p[0] for p in r["latency_cdf"]], [p[1] for p in r["latency_cdf"]],
                label=f"{r['label']} @ {r['target_rate']:,.0f}/s")
    ax.set_xscale("log")
    written = [_save(fig, ax, out / "latency_cdf.png", "Latency CDF",
                     "end-to-end latency (ms, produce schedule -> score visible, read_committed)",
                     "fraction of events")]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rate_runs:
        by_label.setdefault(r["label"], []).append(r)
    for i, (label, rs) in enumerate(by_label.items()):
        rs.sort(key=lambda r: r["target_rate"])
        for q, style in (("p50", "--"), ("p99", "-")):  # one colour per system: p50 dashed, p99 solid
            ax.plot([r["target_rate"] for r in rs], [r["latency_ms"][q] for r in rs], style, marker="o",
                    color=f"C{i}", label=f"{label} {q}")
    ax.set_yscale("log")
    written.append(_save(fig, ax, out / "latency_vs_load.png", "Latency vs load", "offered load (events/s)",
                         "latency (ms)"))

    sat = saturation(result)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(list(sat), list(sat.values()), color="#4477aa")
    for i, v in enumerate(sat.values()):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    written.append(_save(fig, ax, out / "throughput.png", "Throughput per engine (same broker, model, workload)",
                         "saturation throughput (events/s, backlog drained)"))
    return written


def write_report(result: dict[str, Any], out: Path) -> str:
    text = markdown(result)
    (out / "e2e.md").write_text(text)
    plots(result, out)
    return text

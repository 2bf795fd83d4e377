"""Compare training methods the way a paper does: mean and spread over seeds, and paired differences.

Why paired: every variant of a sweep is trained once per seed, and seed s of every variant sees the
same data, the same evaluation set and (for the same architecture) the same initial backbone. The
difference to the baseline is therefore taken per seed, d_s = x_s(variant) - x_s(baseline), and its
interval is mean(d) +- t_{(1+c)/2, n-1} * sd(d) / sqrt(n) over the n seeds both have a value for
(Student's t, scipy). That interval is narrower than comparing two independent means when the seeds
are correlated, and it says honestly when the difference is within seed noise (it contains 0). With
one seed there is no spread and no interval: the table says so instead of printing a number.

Input: one metrics.json (gbcosface.eval.run_ijb) per (variant, seed). `metric_values` flattens what
the table compares: 1:1 TAR at each FAR under both conventions (nearest, the published one, and
strict), AUC, and with 1:N the rank-1 rate and TPIR at each FPIR for both 1:N conventions (the
galleries' mean, and their union where present). A cell a run cannot measure (too few impostors for
the FAR, or perfectly separated scores) is None and is left out of that metric's statistics, with
its count shown (n).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95


@dataclass(frozen=True)
class RunResult:
    """One trained and evaluated model of a sweep."""

    variant: str
    seed: int
    metrics: dict[str, Any]  # the evaluation's metrics.json
    run_id: str = ""  # the iteration's run id (its S3 prefix and job name derive from it)
    uri: str = ""  # where the iteration's artifacts live


def _far(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-")


def metric_values(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """The compared scalars of one metrics.json, in table order; None where the cell is not meaningful.

    Keys: `tar@<FAR>/<nearest|strict>`, `auc`, and with 1:N `rank1/<convention>/<mean|union>` and
    `tpir@<FPIR>/<convention>/<mean|union>`. Rates are fractions in [0, 1].
    """
    out: dict[str, float | None] = {}
    tar = metrics.get("tar_at_far") or {}
    for convention in ("nearest", "strict"):
        for cell in tar.get(convention, []):
            out[f"tar@{_far(cell['far'])}/{convention}"] = None if cell.get("tar") is None else float(cell["tar"])
    if "auc" in metrics:
        out["auc"] = float(metrics["auc"])
    ident = metrics.get("identification")
    if ident:
        blocks = [("mean", "mean")] + ([(ident["combined"], "union")] if ident.get("combined") else [])
        for convention in ("insightface", "open_set"):
            section = ident.get(convention) or {}
            for key, label in blocks:
                block = section.get(key)
                if not block:
                    continue
                rank1 = block["cmc"].get("1", block["cmc"].get(1))
                out[f"rank1/{convention}/{label}"] = None if rank1 is None else float(rank1)
                for cell in block["tpir_at_fpir"]:
                    value = cell.get("tpir")
                    out[f"tpir@{_far(cell['fpir'])}/{convention}/{label}"] = None if value is None else float(value)
    return out


def metric_label(key: str) -> str:
    """A human name for a metric key, e.g. `TAR@FAR=1e-4 (nearest)`."""
    parts = key.split("/")
    if parts[0].startswith("tar@"):
        return f"TAR@FAR={parts[0][4:]} ({parts[1]})"
    if parts[0] == "auc":
        return "AUC"
    if parts[0] == "rank1":
        return f"1:N rank-1 ({parts[1]}, {parts[2]})"
    if parts[0].startswith("tpir@"):
        return f"1:N TPIR@FPIR={parts[0][5:]} ({parts[1]}, {parts[2]})"
    return key


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation with n-1); sd is None below two values, both None for none."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def paired_interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean of paired differences with its two-sided Student-t interval over the n pairs.

    `half_width` = t.ppf((1 + confidence) / 2, n - 1) * sd / sqrt(n); with n < 2 there is no spread and
    `low`/`high`/`half_width` are None (`note` says why). `excludes_zero` is True when the whole interval
    lies on one side of 0 (a difference larger than seed noise at that confidence), None without one.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(diffs)
    mean, sd = mean_sd(diffs)
    out: dict[str, Any] = {"n": n, "mean": mean, "sd": sd, "confidence": confidence, "low": None, "high": None,
                           "half_width": None, "excludes_zero": None, "note": None}
    if n == 0:
        out["note"] = "no seed with a value for both"
        return out
    if n == 1:
        out["note"] = "n=1: one seed gives no interval"
        return out
    from scipy.stats import t

    half = float(t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n)
    out.update(low=mean - half, high=mean + half, half_width=half, excludes_zero=bool(mean - half > 0 or mean + half < 0))
    return out


def compare_runs(runs: Sequence[RunResult], baseline: str, confidence: float = CONFIDENCE,
                 variants: Sequence[str] | None = None) -> dict[str, Any]:
    """The comparison table as a JSON-ready dict.

    `variants`: the column order (default: first appearance in `runs`). `baseline` must be one of them.
    Returns {"baseline", "confidence", "variants", "seeds": {variant: [seeds]}, "metrics": [keys],
    "labels": {key: label}, "stats": {variant: {key: {"n", "mean", "sd", "values": {seed: v}}}},
    "diffs": {variant: {key: paired_interval(...) + "seeds"}} (every variant but the baseline),
    "runs": [{"variant", "seed", "run_id", "uri"}]}.
    """
    order = list(variants) if variants else list(dict.fromkeys(r.variant for r in runs))
    if not order:
        raise ValueError("no runs to compare")
    if baseline not in order:
        raise ValueError(f"baseline {baseline!r} is not one of the sweep's variants {order}")
    seen: set[tuple[str, int]] = set()
    values: dict[str, dict[int, dict[str, float | None]]] = {v: {} for v in order}
    for r in runs:
        if r.variant not in values:
            raise ValueError(f"run of variant {r.variant!r} (seed {r.seed}) is not in the variants {order}")
        if (r.variant, r.seed) in seen:
            raise ValueError(f"two runs of variant {r.variant!r} with seed {r.seed}")
        seen.add((r.variant, r.seed))
        values[r.variant][r.seed] = metric_values(r.metrics)
    keys = list(dict.fromkeys(k for per_seed in values.values() for vals in per_seed.values() for k in vals))

    stats: dict[str, dict[str, Any]] = {}
    for v in order:
        stats[v] = {}
        for k in keys:
            per_seed = {s: vals.get(k) for s, vals in sorted(values[v].items())}
            have = [x for x in per_seed.values() if x is not None]
            mean, sd = mean_sd(have)
            stats[v][k] = {"n": len(have), "mean": mean, "sd": sd, "values": per_seed}
    diffs: dict[str, dict[str, Any]] = {}
    base = values[baseline]
    for v in order:
        if v == baseline:
            continue
        diffs[v] = {}
        for k in keys:
            seeds = sorted(s for s in values[v] if s in base and values[v][s].get(k) is not None
                           and base[s].get(k) is not None)
            d = [values[v][s][k] - base[s][k] for s in seeds]
            diffs[v][k] = {**paired_interval(d, confidence), "seeds": seeds}
    return {
        "baseline": baseline,
        "confidence": confidence,
        "variants": order,
        "seeds": {v: sorted(values[v]) for v in order},
        "metrics": keys,
        "labels": {k: metric_label(k) for k in keys},
        "stats": stats,
        "diffs": diffs,
        "runs": [{"variant": r.variant, "seed": r.seed, "run_id": r.run_id, "uri": r.uri}
                 for r in sorted(runs, key=lambda r: (order.index(r.variant), r.seed))],
    }


def _pts(value: float | None, signed: bool = False) -> str:
    """A fraction as percent (or percentage points) with two decimals; n/a for None."""
    if value is None:
        return "n/a"
    return f"{100.0 * value:+.2f}" if signed else f"{100.0 * value:.2f}"


def format_cell(stat: Mapping[str, Any]) -> str:
    """`mean ± sd (n)` in percent; `mean (n=1)` without spread; `n/a` without values."""
    if stat["mean"] is None:
        return "n/a"
    if stat["sd"] is None:
        return f"{_pts(stat['mean'])} (n={stat['n']})"
    return f"{_pts(stat['mean'])} ± {_pts(stat['sd'])} (n={stat['n']})"


def format_diff(diff: Mapping[str, Any]) -> str:
    """`+0.57 [+0.12, +1.02]` in percentage points; `+0.57 (n=1: no interval)`; `n/a`."""
    if diff["mean"] is None:
        return "n/a"
    if diff["low"] is None:
        return f"{_pts(diff['mean'], True)} (n={diff['n']}: no interval)"
    mark = " *" if diff["excludes_zero"] else ""
    return f"{_pts(diff['mean'], True)} [{_pts(diff['low'], True)}, {_pts(diff['high'], True)}]{mark}"


def _header_notes(table: Mapping[str, Any]) -> list[str]:
    seeds = "; ".join(f"{v}: {table['seeds'][v]}" for v in table["variants"])
    conf = int(round(100 * table["confidence"]))
    return [f"Seeds per variant: {seeds}. Cells: mean ± sample sd over seeds, in %, (n) seeds with a value.",
            f"Δ vs {table['baseline']}: mean of per-seed differences in percentage points, [{conf}% paired "
            "Student-t interval]; * marks an interval that excludes 0. n/a: the cell was not measurable "
            "(too few impostors for the FAR, or perfectly separated scores)."]


def format_markdown(table: Mapping[str, Any], title: str = "") -> str:
    """The comparison as a Markdown table: one row per metric, a column per variant, then the deltas."""
    others = [v for v in table["variants"] if v != table["baseline"]]
    head = ["metric", *table["variants"], *(f"Δ {v} − {table['baseline']}" for v in others)]
    rows = [f"**{title}**" if title else "", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k in table["metrics"]:
        cells = [table["labels"][k], *(format_cell(table["stats"][v][k]) for v in table["variants"]),
                 *(format_diff(table["diffs"][v][k]) for v in others)]
        rows.append("| " + " | ".join(cells) + " |")
    rows += [""] + _header_notes(table)
    return "\n".join(rows).lstrip("\n") + "\n"


def format_text(table: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """A plain-text table for a terminal (the demo prints it): the chosen metric keys (default: all)."""
    others = [v for v in table["variants"] if v != table["baseline"]]
    keys = [k for k in (keys or table["metrics"]) if k in table["metrics"]]
    head = ["metric", *table["variants"], *(f"Δ {v}" for v in others)]
    body = [[table["labels"][k], *(format_cell(table["stats"][v][k]) for v in table["variants"]),
             *(format_diff(table["diffs"][v][k]) for v in others)] for k in keys]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *body]]
    return "\n".join([*lines, *_header_notes(table)])


def roc_overlay_png(curves: Mapping[str, Mapping[int, tuple[Sequence[float], Sequence[float]]]], title: str) -> bytes:
    """PNG of every run's ROC (log FPR), one colour per variant and one line style per seed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    styles = ["-", "--", ":", "-."]
    fig = Figure(figsize=(7.2, 5.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    lowest = 1.0
    for i, (variant, per_seed) in enumerate(curves.items()):
        for j, (seed, (fpr, tpr)) in enumerate(sorted(per_seed.items())):
            pts = [(f, t) for f, t in zip(fpr, tpr, strict=True) if f > 0]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, lw=1.2, color=colours[i % len(colours)], ls=styles[j % len(styles)],
                    label=f"{variant} seed {seed}")
            lowest = min(lowest, min(ys))
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1e-1)
    ax.set_ylim(max(0.0, min(0.3, lowest - 0.05)), 1.0)
    ax.grid(linestyle="--", linewidth=0.8)
    ax.set_xlabel("False Positive Rate")
    ax.set_ylabel("True Positive Rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="x-small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves_of(runs: Sequence[RunResult]) -> dict[str, dict[int, tuple[list[float], list[float]]]]:
    """{variant: {seed: (fpr, tpr)}} from the runs' metrics.json `roc` (what the overlay plots)."""
    out: dict[str, dict[int, tuple[list[float], list[float]]]] = {}
    for r in runs:
        roc = r.metrics.get("roc") or {}
        if roc.get("fpr"):
            out.setdefault(r.variant, {})[r.seed] = (list(roc["fpr"]), list(roc["tpr"]))
    return out


def render_html(table: Mapping[str, Any], roc_png: bytes | None, title: str, context: Mapping[str, Any]) -> str:
    """A self-contained report: the table, the overlaid ROC curves, and where each run lives."""
    e = html.escape
    others = [v for v in table["variants"] if v != table["baseline"]]
    head = "".join(f"<th>{e(v)}</th>" for v in table["variants"]) + "".join(
        f"<th>&Delta; {e(v)} &minus; {e(table['baseline'])}</th>" for v in others)
    body = "".join(
        f"<tr><td>{e(table['labels'][k])}</td>"
        + "".join(f"<td>{e(format_cell(table['stats'][v][k]))}</td>" for v in table["variants"])
        + "".join(f"<td>{e(format_diff(table['diffs'][v][k]))}</td>" for v in others) + "</tr>"
        for k in table["metrics"])
    runs = "".join(f"<tr><td>{e(r['variant'])}</td><td>{r['seed']}</td><td><code>{e(r['run_id'])}</code></td>"
                   f"<td><code>{e(r['uri'])}</code></td></tr>" for r in table["runs"])
    ctx = "".join(f"<tr><th>{e(str(k))}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in context.items())
    img = (f'<img alt="ROC curves" src="data:image/png;base64,{base64.b64encode(roc_png).decode("ascii")}">'
           if roc_png else "")
    notes = "".join(f"<p>{e(n)}</p>" for n in _header_notes(table))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;max-width:80em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.25em .6em;text-align:left}}</style></head><body>
<h1>{e(title)}</h1>
<table><tr><th>metric</th>{head}</tr>{body}</table>
{notes}
<h2>ROC curves (every run)</h2>
{img}
<h2>Runs</h2>
<table><tr><th>variant</th><th>seed</th><th>run id</th><th>artifacts</th></tr>{runs}</table>
<h2>Sweep</h2>
<table>{ctx}</table>
</body></html>
"""

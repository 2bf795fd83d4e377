"""Human-facing IJB results: the TAR@FAR table (text, Markdown), roc.png and a self-contained report.html.

Why every output repeats the flags: flip / norm score / detector score alone move IJB-C TAR@1e-4 by
about 0.6 points, so a number without them cannot be compared. Cells that mean nothing (too few
impostor pairs for the FAR, or perfectly separated scores) print as "n/a (reason)".
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from gbcosface.eval._io import atomic_write_bytes

__all__ = ["atomic_write_bytes", "downsample_curve", "flags_text", "format_comparison", "format_markdown",
           "format_table", "render_html", "roc_png"]


def _pct(cell: dict) -> str:
    if cell.get("tar") is None:
        return f"n/a ({cell.get('reason') or 'not measured'})"
    return f"{100.0 * cell['tar']:.2f}"


def _far(far: float) -> str:
    return f"{far:.0e}".replace("e-0", "e-")


def flags_text(flags: dict) -> str:
    on = {True: "on", False: "off"}
    return (f"flip {on[bool(flags.get('flip'))]}, norm score {on[bool(flags.get('norm_score'))]}, "
            f"detector score {on[bool(flags.get('detector_score'))]}")


def format_table(metrics: dict) -> str:
    """The TAR@FAR table (both conventions) as plain text, with the flags and counts."""
    c = metrics["counts"]
    lines = [
        f"{metrics['target']} 1:1 verification, TAR (%) @ FAR  [{flags_text(metrics['flags'])}]",
        f"{c['pairs_scored']:,} pairs scored ({c['genuine']:,} genuine, {c['impostor']:,} impostor)"
        + (f"; {c['pairs_excluded']:,} excluded (templates without features)" if c.get("pairs_excluded") else "")
        + (f"; {c['images_missing']:,} images missing/unreadable (left out)" if c.get("images_missing") else ""),
        f"{'FAR':>6}  {'nearest (published)':<32} {'strict (FPR <= FAR)':<32}",
    ]
    for near, strict in zip(metrics["tar_at_far"]["nearest"], metrics["tar_at_far"]["strict"], strict=True):
        lines.append(f"{_far(near['far']):>6}  {_pct(near):<32} {_pct(strict):<32}")
    lines.append(f"AUC {100.0 * metrics['auc']:.4f} %")
    return "\n".join(lines)


def format_markdown(metrics: dict) -> str:
    """The same table in Markdown (for a KFP Markdown artifact)."""
    rows = [
        f"**{metrics['target']} 1:1 verification** ({flags_text(metrics['flags'])}), "
        f"model `{Path(metrics['model'].get('path') or '-').name}` sha256 `{(metrics['model'].get('sha256') or '-')[:12]}`",
        "",
        "| FAR | TAR nearest (published) % | TAR strict (FPR <= FAR) % |",
        "| --- | --- | --- |",
    ]
    for near, strict in zip(metrics["tar_at_far"]["nearest"], metrics["tar_at_far"]["strict"], strict=True):
        rows.append(f"| {_far(near['far'])} | {_pct(near)} | {_pct(strict)} |")
    rows += ["", f"AUC {100.0 * metrics['auc']:.4f} %; {metrics['counts']['pairs_scored']:,} pairs scored."]
    return "\n".join(rows) + "\n"


def format_comparison(results: dict[str, dict], convention: str = "nearest") -> str:
    """One column per named metrics dict: TAR (%) at each FAR under `convention`, then AUC."""
    names = list(results)
    if not names:
        return "(no results)"
    fars = [cell["far"] for cell in results[names[0]]["tar_at_far"][convention]]
    width = max(12, *(len(n) for n in names))
    flags = {flags_text(r["flags"]) for r in results.values()}
    head = f"TAR (%) @ FAR, {convention} convention" + (f" [{flags.pop()}]" if len(flags) == 1 else "")
    lines = [head, f"{'FAR':>6}  " + "  ".join(f"{n:>{width}}" for n in names)]
    for i, far in enumerate(fars):
        cells = []
        for n in names:
            cell = results[n]["tar_at_far"][convention][i]
            text = _pct(cell) if cell.get("tar") is not None else "n/a"
            cells.append(f"{text:>{width}}")
        lines.append(f"{_far(far):>6}  " + "  ".join(cells))
    lines.append(f"{'AUC':>6}  " + "  ".join(f"{100.0 * results[n]['auc']:>{width}.4f}" for n in names))
    notes = sorted({(c["far"], c["reason"]) for r in results.values()
                    for c in r["tar_at_far"][convention] if c.get("tar") is None and c.get("reason")})
    if notes:
        lines.append("n/a: " + "; ".join(f"{_far(far)}: {reason}" for far, reason in notes))
    return "\n".join(lines)


def downsample_curve(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, points: int = 400) -> dict:
    """At most ~`points` ROC points spread evenly in log FPR (finite thresholds only), for JSON and KFP."""
    fpr, tpr, thr = (np.asarray(a, dtype=np.float64) for a in (fpr, tpr, thresholds))
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    if fpr.size == 0:
        return {"fpr": [], "tpr": [], "thresholds": []}
    grid = np.logspace(-8, 0, points)
    idx = np.unique(np.concatenate([[0, fpr.size - 1], np.searchsorted(fpr, grid).clip(0, fpr.size - 1)]))
    return {"fpr": fpr[idx].tolist(), "tpr": tpr[idx].tolist(), "thresholds": thr[idx].tolist()}


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> bytes:
    """PNG bytes of ROC curves (log FPR from 1e-6 to 1e-1, as the official IJB plot)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for name, (fpr, tpr, auc) in curves.items():
        keep = fpr > 0
        ax.plot(fpr[keep], tpr[keep], lw=1.2, label=f"{name} (AUC = {100 * auc:.4f} %)")
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1e-1)
    lowest = min((float(np.interp(1e-6, c[0], c[1])) for c in curves.values()), default=0.0)
    ax.set_ylim(max(0.0, min(0.3, lowest - 0.05)), 1.0)
    ax.set_xticks([10.0**-k for k in range(6, 0, -1)])
    ax.grid(linestyle="--", linewidth=0.8)
    ax.set_xlabel("False Positive Rate")
    ax.set_ylabel("True Positive Rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_html(metrics: dict, png: bytes) -> str:
    """A self-contained page: flags, lineage, the TAR table (both conventions) and the embedded ROC."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(_far(n['far']))}</td><td>{e(_pct(n))}</td><td>{e(_pct(s))}</td>"
        f"<td>{n['fpr']:.3g}</td></tr>"
        for n, s in zip(metrics["tar_at_far"]["nearest"], metrics["tar_at_far"]["strict"], strict=True)
    )
    counts = "".join(f"<tr><th>{e(k)}</th><td>{e(f'{v:,}' if isinstance(v, int) else str(v))}</td></tr>"
                     for k, v in metrics["counts"].items())
    data = "".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in metrics["data"]["meta_sha256"].items())
    model = metrics["model"]
    img = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(metrics['target'])} 1:1 verification</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.25em .6em;text-align:left}}</style></head><body>
<h1>{e(metrics['target'])} 1:1 verification</h1>
<p><b>Flags:</b> {e(flags_text(metrics['flags']))}. Official GB-CosFace evaluation: flip off, norm score on,
detector score on.</p>
<h2>TAR @ FAR (%)</h2>
<table><tr><th>FAR</th><th>TAR, nearest ROC point (published convention)</th><th>TAR, strict (FPR &le; FAR)</th>
<th>FPR of the nearest point</th></tr>{rows}</table>
<p>AUC {100.0 * metrics['auc']:.4f} %. "nearest": among the points of sklearn's roc_curve (drop_intermediate),
the one with FPR nearest to the target (it may lie above it). "strict": the largest TPR with FPR &le; FAR.
A cell is n/a with fewer than 10/FAR impostor pairs or when the scores separate perfectly.</p>
<img alt="ROC curve" src="data:image/png;base64,{img}">
<h2>Model</h2><table><tr><th>path</th><td><code>{e(str(model.get('path')))}</code></td></tr>
<tr><th>sha256</th><td><code>{e(str(model.get('sha256')))}</code></td></tr>
<tr><th>backbone</th><td>{e(str(model.get('backbone_type')))}</td></tr></table>
<h2>Data</h2><table><tr><th>image path</th><td><code>{e(str(metrics['data'].get('image_path')))}</code></td></tr>{data}</table>
<h2>Counts</h2><table>{counts}</table>
<p>gbcosface {e(str(metrics.get('version')))}</p>
</body></html>
"""

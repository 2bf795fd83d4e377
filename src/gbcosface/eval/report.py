"""Human-facing IJB results: TAR@FAR and 1:N tables (text, Markdown), roc.png, cmc.png, det.png, report.html.

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

__all__ = ["atomic_write_bytes", "downsample_curve", "flags_text", "format_comparison", "format_flags_table",
           "format_identification_markdown", "format_identification_table", "format_markdown", "format_table",
           "identification_pngs", "identification_rows", "render_html", "roc_png"]

CONVENTION_TITLES = {"insightface": "insightface (ijb_1n.py)", "open_set": "open-set (NIST)"}


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


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:.2f}"


def identification_rows(metrics: dict) -> list[dict]:
    """One row per (convention, gallery or mean or union): CMC (%) at the ranks, TPIR (%) at the FPIRs.

    The rows the demo's and the report's 1:N tables print: ``{"convention", "gallery", "cmc": {rank: %},
    "tpir": {fpir: % or None}, "reasons": [...]}``.
    """
    ident = metrics["identification"]
    rows = []
    for conv in ("insightface", "open_set"):
        section = ident.get(conv) or {}
        for g in [*ident["galleries"], "mean", *([ident["combined"]] if ident.get("combined") else [])]:
            block = section.get(g)
            if not block:
                continue
            cells = block["tpir_at_fpir"]
            rows.append({"convention": conv, "gallery": g,
                         "cmc": {int(k): 100.0 * v for k, v in block["cmc"].items()},
                         "tpir": {c["fpir"]: (None if c["tpir"] is None else 100.0 * c["tpir"]) for c in cells},
                         "reasons": sorted({c["reason"] for c in cells if c.get("reason")})})
    return rows


def _ident_header(metrics: dict) -> str:
    ident = metrics["identification"]
    c = ident["counts"]
    gals = ", ".join(f"{g} {c['galleries'][g]['templates']:,} templates ({c['galleries'][g]['mated_probes']:,} mated"
                     f" / {c['galleries'][g]['nonmated_probes']:,} non-mated probes)" for g in ident["galleries"])
    return f"{c['probes']:,} probe templates; {gals}"


def format_identification_table(metrics: dict) -> str:
    """The 1:N table as plain text: CMC rank-k (%) and TPIR (%) @ FPIR, per gallery, mean and union."""
    ident = metrics["identification"]
    ranks, fpirs = ident["ranks"], ident["fpirs"]
    head = (f"{'convention':<24} {'gallery':<8}" + "".join(f"{'rank-' + str(k):>9}" for k in ranks)
            + "".join(f"{'TPIR@' + _far(f):>12}" for f in fpirs))
    lines = [f"{metrics['target']} 1:N identification, rates (%)  [{flags_text(metrics['flags'])}]",
             _ident_header(metrics), head]
    notes = set()
    for r in identification_rows(metrics):
        lines.append(f"{CONVENTION_TITLES[r['convention']]:<24} {r['gallery']:<8}"
                     + "".join(f"{r['cmc'][k]:>9.2f}" for k in ranks)
                     + "".join(f"{'n/a' if r['tpir'][f] is None else format(r['tpir'][f], '.2f'):>12}" for f in fpirs))
        notes.update(r["reasons"])
    lines.append("insightface: closed set over mated probes, threshold from all non-mated scores (FPIR = false "
                 "alarms per probe); open-set: TPIR at rank 1, FPIR over non-mated searches.")
    if notes:
        lines.append("n/a: " + "; ".join(sorted(notes)))
    return "\n".join(lines)


def format_identification_markdown(metrics: dict) -> str:
    """The 1:N table in Markdown (for a KFP Markdown artifact and the demo)."""
    ident = metrics["identification"]
    ranks, fpirs = ident["ranks"], ident["fpirs"]
    rows = [f"**{metrics['target']} 1:N identification** ({flags_text(metrics['flags'])}); {_ident_header(metrics)}",
            "",
            "| convention | gallery | " + " | ".join(f"rank-{k} %" for k in ranks) + " | "
            + " | ".join(f"TPIR@FPIR={_far(f)} %" for f in fpirs) + " |",
            "| --- | --- |" + " --- |" * (len(ranks) + len(fpirs))]
    for r in identification_rows(metrics):
        rows.append(f"| {CONVENTION_TITLES[r['convention']]} | {r['gallery']} | "
                    + " | ".join(f"{r['cmc'][k]:.2f}" for k in ranks) + " | "
                    + " | ".join("n/a" if r["tpir"][f] is None else f"{r['tpir'][f]:.2f}" for f in fpirs) + " |")
    return "\n".join(rows) + "\n"


def format_flags_table(metrics: dict, convention: str = "nearest") -> str:
    """The N/D/F flag table: 1:1 TAR (%) at each FAR for each flag combination (insightface's names)."""
    table = metrics["flags_table"]
    fars = metrics["fars"]
    lines = [f"{metrics['target']} 1:1 TAR (%) @ FAR by flags ({convention} convention; N norm score, "
             f"D detector score, F flip)",
             f"{'flags':<8}" + "".join(f"{_far(f):>9}" for f in fars) + f"{'AUC':>10}"]
    for name, row in table.items():
        cells = row["tar_at_far"][convention]
        lines.append(f"{name:<8}" + "".join(f"{'n/a' if c['tar'] is None else format(100 * c['tar'], '.2f'):>9}"
                                            for c in cells) + f"{100 * row['auc']:>10.4f}")
    return "\n".join(lines)


def identification_pngs(metrics: dict) -> tuple[bytes, bytes]:
    """(CMC plot, TPIR-vs-FPIR plot) PNG bytes from the identification curves."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ident = metrics["identification"]
    curves = ident["curves"]
    title = f"{metrics['target']} ({flags_text(metrics['flags'])})"

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for g, c in curves["cmc"].items():
        ax.plot(c["rank"], c["rate"], lw=1.2, marker=".", label=g)
    ax.set_xscale("log")
    ax.set_xlabel("Rank")
    ax.set_ylabel("Identification rate")
    ax.set_ylim(0.0, 1.0)
    ax.grid(linestyle="--", linewidth=0.8)
    ax.set_title(f"CMC on {title}")
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    cmc = buf.getvalue()

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for conv, per in curves["det"].items():
        for g, c in per.items():
            ax.plot(c["fpir"], c["tpir"], lw=1.2, ls="-" if conv == "open_set" else "--",
                    label=f"{g}, {CONVENTION_TITLES[conv]}")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("False Positive Identification Rate")
    ax.set_ylabel("True Positive Identification Rate")
    ax.grid(linestyle="--", linewidth=0.8)
    ax.set_title(f"TPIR vs FPIR on {title}")
    ax.legend(loc="lower right", fontsize="x-small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return cmc, buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def render_html(metrics: dict, png: bytes | None, extra_pngs: dict[str, bytes] | None = None) -> str:
    """A self-contained page: flags, lineage, the TAR table (both conventions) with the embedded ROC, the 1:N
    tables with the CMC and TPIR-FPIR plots beside it, and the flag table when present."""
    e = html.escape
    pngs = extra_pngs or {}
    sections = []
    if "tar_at_far" in metrics:
        rows = "".join(
            f"<tr><td>{e(_far(n['far']))}</td><td>{e(_pct(n))}</td><td>{e(_pct(s))}</td>"
            f"<td>{n['fpr']:.3g}</td></tr>"
            for n, s in zip(metrics["tar_at_far"]["nearest"], metrics["tar_at_far"]["strict"], strict=True)
        )
        roc = _img(png, "ROC curve") if png else ""
        sections.append(f"""<h2>1:1 verification: TAR @ FAR (%)</h2>
<table><tr><th>FAR</th><th>TAR, nearest ROC point (published convention)</th><th>TAR, strict (FPR &le; FAR)</th>
<th>FPR of the nearest point</th></tr>{rows}</table>
<p>AUC {100.0 * metrics['auc']:.4f} %. "nearest": among the points of sklearn's roc_curve (drop_intermediate),
the one with FPR nearest to the target (it may lie above it). "strict": the largest TPR with FPR &le; FAR.
A cell is n/a with fewer than 1/FAR impostor pairs (the FAR cannot be reached) or when the scores separate
perfectly; its value is still in metrics.json.</p>
{roc}""")
    if "identification" in metrics:
        ident = metrics["identification"]
        ranks, fpirs = ident["ranks"], ident["fpirs"]
        head = "".join(f"<th>rank-{k}</th>" for k in ranks) + "".join(f"<th>TPIR@FPIR={e(_far(f))}</th>" for f in fpirs)
        body = "".join(
            f"<tr><td>{e(CONVENTION_TITLES[r['convention']])}</td><td>{e(r['gallery'])}</td>"
            + "".join(f"<td>{r['cmc'][k]:.2f}</td>" for k in ranks)
            + "".join(f"<td>{'n/a' if r['tpir'][f] is None else format(r['tpir'][f], '.2f')}</td>" for f in fpirs)
            + "</tr>" for r in identification_rows(metrics))
        plots = "".join(_img(pngs[n], alt) for n, alt in (("cmc.png", "CMC curve"), ("det.png", "TPIR vs FPIR"))
                        if n in pngs)
        sections.append(f"""<h2>1:N identification (%)</h2>
<p>{e(_ident_header(metrics))}.</p>
<table><tr><th>convention</th><th>gallery</th>{head}</tr>{body}</table>
<p>insightface (ijb_1n.py): closed set over the probes mated in the gallery; the threshold at FPIR f is the
ceil(f &times; probes)-th largest of all non-mated probe &times; gallery scores, and TPIR counts mated scores above
it at any rank; its published numbers are those on the galleries' union. Open-set (NIST): TPIR counts mated searches
with the mate at rank 1 above the threshold, the largest such rate with FPIR (share of non-mated searches whose
best score reaches the threshold) &le; f. "mean" is the plain mean over the galleries.</p>
{plots}""")
    if "curves.png" in pngs:  # the trained model's curves (tracking/curves.py)
        sections.append("<h2>Training curves</h2>\n<p>Loss terms, cos_v, learning rate and validation accuracy "
                        "against the optimizer step, from the run's TensorBoard event files.</p>\n"
                        + _img(pngs["curves.png"], "training curves"))
    if "flags_table" in metrics:
        fars = metrics["fars"]
        head = "".join(f"<th>{e(_far(f))}</th>" for f in fars)
        body = "".join(
            f"<tr><td>{e(name)}</td>" + "".join(f"<td>{e(_pct(c))}</td>" for c in row["tar_at_far"]["nearest"])
            + f"<td>{100 * row['auc']:.4f}</td></tr>" for name, row in metrics["flags_table"].items())
        sections.append(f"""<h2>1:1 TAR (%) by flags (nearest convention)</h2>
<table><tr><th>flags</th>{head}<th>AUC</th></tr>{body}</table>
<p>N norm score, D detector score, F flip test (1 on, 0 off), all from one feature extraction.</p>""")
    counts = "".join(f"<tr><th>{e(k)}</th><td>{e(f'{v:,}' if isinstance(v, int) else str(v))}</td></tr>"
                     for k, v in metrics["counts"].items())
    data = "".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in metrics["data"]["meta_sha256"].items())
    model = metrics["model"]
    what = " and ".join(t for k, t in (("tar_at_far", "1:1 verification"), ("identification", "1:N identification"))
                        if k in metrics)
    body = "\n".join(sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(metrics['target'])} {e(what)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.25em .6em;text-align:left}}</style></head><body>
<h1>{e(metrics['target'])} {e(what)}</h1>
<p><b>Flags:</b> {e(flags_text(metrics['flags']))}. Official GB-CosFace evaluation: flip off, norm score on,
detector score on.</p>
{body}
<h2>Model</h2><table><tr><th>path</th><td><code>{e(str(model.get('path')))}</code></td></tr>
<tr><th>sha256</th><td><code>{e(str(model.get('sha256')))}</code></td></tr>
<tr><th>backbone</th><td>{e(str(model.get('backbone_type')))}</td></tr></table>
<h2>Data</h2><table><tr><th>image path</th><td><code>{e(str(metrics['data'].get('image_path')))}</code></td></tr>{data}</table>
<h2>Counts</h2><table>{counts}</table>
<p>gbcosface {e(str(metrics.get('version')))}</p>
</body></html>
"""

"""Training curves for the HTML report, read back from the run's TensorBoard event files.

Why the event files: they are already published with the run (`<run>/train/tensorboard/`) and hold every
scalar the trainer logged, so the evaluate step can draw the curves of the model it evaluates without a
tracking server. Read with TensorBoard's own reader (`EventAccumulator`, every point kept); an s3:// run
is copied to a temporary directory first.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

from gbcosface.storage import get_bytes, join_uri, list_uri, parse_uri

log = logging.getLogger("gbcosface.tracking")

Scalars = dict[str, list[tuple[int, float]]]


def read_scalars(tb_uri: str, endpoint_url: str | None = None) -> Scalars:
    """{tag: [(step, value), ...]} from the event files under `tb_uri`; {} when there are none."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    def read(local: Path) -> Scalars:
        out: Scalars = {}
        for run_dir in sorted({p.parent for p in local.rglob("events.out.tfevents.*")}):
            acc = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        return {tag: sorted(points) for tag, points in out.items()}

    loc = parse_uri(tb_uri)
    if not loc.is_s3:
        return read(Path(tb_uri)) if Path(tb_uri).is_dir() else {}
    try:
        keys = list_uri(tb_uri, endpoint_url=endpoint_url)
    except Exception:  # noqa: BLE001 - no event files is not an error
        return {}
    with tempfile.TemporaryDirectory(prefix="gbcosface-tb-read-") as tmp:
        for key in keys:
            dest = Path(tmp) / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(get_bytes(join_uri(tb_uri, key), endpoint_url=endpoint_url))
        return read(Path(tmp))


PANELS = (
    ("loss terms", lambda t: t.startswith("train/") and t.split("/", 1)[1] not in ("cos_v", "lr", "epoch", "samples_per_s")),
    ("cos_v", lambda t: t == "train/cos_v"),
    ("learning rate", lambda t: t == "train/lr"),
    ("validation accuracy", lambda t: t.startswith("val/") and t.endswith("/accuracy")),
)


def curves_png(scalars: Scalars, title: str = "training") -> bytes | None:
    """Loss terms, cos_v, lr and validation accuracy against the step, as one PNG; None without data."""
    panels = [(name, sorted(t for t in scalars if pick(t))) for name, pick in PANELS]
    panels = [(name, tags) for name, tags in panels if tags]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (name, tags) in zip(axes[:, 0], panels, strict=True):
        for tag in tags:
            steps, values = zip(*scalars[tag], strict=True)
            ax.plot(steps, values, label=tag, linewidth=1.2)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
        if name == "learning rate":
            ax.set_yscale("log")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def add_to_report(result_dir: str | Path, metrics: dict, tb_uri: str, endpoint_url: str | None = None) -> bool:
    """Write `curves.png` beside the evaluation and re-render its report.html with it; False without curves."""
    from gbcosface.eval import report

    try:
        png = curves_png(read_scalars(tb_uri, endpoint_url), f"training ({tb_uri})")
    except Exception as exc:  # noqa: BLE001 - curves are a convenience: the evaluation stands without them
        log.warning("no training curves in the report: %s", exc)
        return False
    if png is None:
        return False
    out = Path(result_dir)
    pngs = {p.name: p.read_bytes() for p in out.glob("*.png")}
    pngs["curves.png"] = png
    html = report.render_html(metrics, pngs.get("roc.png"), extra_pngs=pngs).encode("utf-8")
    report.atomic_write_bytes(out / "curves.png", png)
    report.atomic_write_bytes(out / "report.html", html)
    return True

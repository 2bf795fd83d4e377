"""IJB 1:N identification (`--protocol 1N`): mixed probes searched in each gallery, CMC and TPIR@FPIR.

Galleries are IJB-C's G1 and G2 (IJB-B's S1 and S2); the probes are `<t>_1N_probe_mixed.csv`. Every
probe is searched in each gallery separately; a probe is mated in the gallery that holds its subject.
Reported per gallery, as the plain mean over the two galleries, and, for the insightface convention,
on G1+G2 together as ijb_1n.py computes it (its published numbers; every probe is mated there).
Conventions: `eval/identification.py`. Template features are the 1:1 ones (`eval/ijb.py`); probes or
gallery templates whose images are all missing (`--skip-missing`) are left out and counted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gbcosface.data.ijb import IJB1NMeta, IJBMeta, meta_paths_1n, read_ijb_1n_meta
from gbcosface.eval.identification import CONVENTIONS_1N, DEFAULT_RANKS, SearchOutcomes, TpirCell, search
from gbcosface.eval.ijb import template_rows

__all__ = ["COMBINED", "Identification1N", "Searches"]

COMBINED = "+"  # name of the union of the galleries, e.g. "G1+G2"
CMC_CURVE_RANKS = 50


@dataclass
class Searches:
    """The probes' outcomes in each gallery (and in their union), with what was left out."""

    outcomes: dict[str, SearchOutcomes]  # gallery name (or "G1+G2") -> outcomes
    gallery_templates: dict[str, int]
    probes: int
    probes_without_features: int
    gallery_without_features: dict[str, int] = field(default_factory=dict)
    combined: str = ""


def _cell_mean(cells: list[TpirCell]) -> dict[str, Any]:
    value = float(np.mean([c.value for c in cells]))
    reasons = sorted({c.reason for c in cells if c.reason})
    meaningful = not reasons
    return {"fpir": cells[0].fpir, "convention": cells[0].convention, "value": value,
            "tpir": value if meaningful else None, "meaningful": meaningful,
            "reason": "; ".join(reasons) if reasons else None}


class Identification1N:
    """IJB 1:N identification over the shared template features (see the module docstring)."""

    name = "1N"
    title = "1:N identification"

    def __init__(self, ranks: Sequence[int] = DEFAULT_RANKS) -> None:
        bad = [r for r in ranks if int(r) != r or r < 1]
        if bad or not ranks:
            raise ValueError(f"CMC ranks must be positive integers, got {list(ranks)}")
        self.ranks = tuple(int(r) for r in ranks)

    def meta_files(self, root: str | os.PathLike, target: str) -> list[Path]:
        return list(meta_paths_1n(root, target).values())

    def read_meta(self, root: str | os.PathLike, target: str, base: IJBMeta) -> IJB1NMeta:
        return read_ijb_1n_meta(root, target, known_templates=base.templates)

    def score(self, tfeats: np.ndarray, templates: np.ndarray, meta: IJB1NMeta) -> Searches:
        has = np.any(tfeats != 0, axis=1)
        prow = template_rows(templates, meta.probes.templates, "probe template")
        pkeep = has[prow]
        pf, pids = tfeats[prow[pkeep]], meta.probes.subjects[pkeep]
        outcomes: dict[str, SearchOutcomes] = {}
        sizes, missing = {}, {}
        parts = []
        for name, gal in meta.galleries.items():
            grow = template_rows(templates, gal.templates, f"gallery {name} template")
            gkeep = has[grow]
            gf, gids = tfeats[grow[gkeep]], gal.subjects[gkeep]
            sizes[name], missing[name] = int(gkeep.sum()), int((~gkeep).sum())
            outcomes[name] = search(pf, pids, gf, gids, keep_negatives=pids.size)
            parts.append((gf, gids))
        combined = COMBINED.join(meta.galleries)
        gf = np.concatenate([p[0] for p in parts])
        gids = np.concatenate([p[1] for p in parts])
        if np.unique(gids).size == gids.size:  # galleries of disjoint subjects, as IJB's: ijb_1n.py's union
            outcomes[combined] = search(pf, pids, gf, gids, keep_negatives=pids.size)
            sizes[combined] = int(gids.size)
        else:
            combined = ""
        return Searches(outcomes, sizes, int(prow.size), int((~pkeep).sum()), missing, combined)

    def metrics(self, scores: Searches, at: Sequence[float]) -> dict[str, Any]:
        """The `identification` section of metrics.json (FPIRs `at`)."""
        fpirs = [float(f) for f in at]
        galleries = [g for g in scores.outcomes if g != scores.combined]
        out: dict[str, Any] = {"galleries": galleries, "combined": scores.combined or None,
                               "ranks": list(self.ranks), "fpirs": fpirs}
        counts: dict[str, Any] = {"probes": scores.probes, "probes_without_features": scores.probes_without_features,
                                  "galleries": {}}
        for g, o in scores.outcomes.items():
            counts["galleries"][g] = {"templates": scores.gallery_templates[g],
                                      "templates_without_features": scores.gallery_without_features.get(g, 0),
                                      "mated_probes": o.n_mated, "nonmated_probes": o.n_nonmated}
        out["counts"] = counts
        for conv in CONVENTIONS_1N:
            section: dict[str, Any] = {}
            names = galleries + ([scores.combined] if scores.combined and conv == "insightface" else [])
            cells_by_g = {}
            for g in names:
                o = scores.outcomes[g]
                if o.n_mated == 0 or (conv == "open_set" and o.n_nonmated == 0):
                    section[g] = None
                    continue
                cells_by_g[g] = [o.cell(f, conv) for f in fpirs]
                section[g] = {"cmc": {str(k): v for k, v in o.cmc(self.ranks).items()},
                              "tpir_at_fpir": [c.to_dict() for c in cells_by_g[g]]}
            per = [g for g in galleries if section.get(g)]
            if per:
                section["mean"] = {
                    "cmc": {str(k): float(np.mean([section[g]["cmc"][str(k)] for g in per])) for k in self.ranks},
                    "tpir_at_fpir": [_cell_mean([cells_by_g[g][i] for g in per]) for i in range(len(fpirs))],
                    "over": per,
                }
            out[conv] = section
        out["curves"] = {
            "cmc": {g: dict(zip(("rank", "rate"), (a.tolist() for a in o.cmc_curve(CMC_CURVE_RANKS)), strict=True))
                    for g, o in scores.outcomes.items() if o.n_mated},
            "det": {conv: {g: o.det_curve(conv) for g, o in scores.outcomes.items()
                           if o.n_mated and (conv == "insightface" or o.n_nonmated)}
                    for conv in CONVENTIONS_1N},
        }
        return out

    def headline(self, metrics: dict[str, Any], at: float) -> float:
        """TPIR at FPIR `at`, insightface convention on the galleries' union (the published number)."""
        ident = metrics["identification"] if "identification" in metrics else metrics
        key = ident.get("combined") or "mean"
        block = ident["insightface"].get(key) or {}
        for cell in block.get("tpir_at_fpir", []):
            if math.isclose(cell["fpir"], at, rel_tol=1e-9):
                return float("nan") if cell["tpir"] is None else float(cell["tpir"])
        raise ValueError(f"FPIR {at:g} was not evaluated")

"""IJB-scale scoring benchmark: template aggregation, pair scores, TAR@FAR (both conventions), AUC, 1:N search.

Random features at IJB-C's size (469,375 x 512 float32, 23,124 templates with a realistic mix of
still images and video frames, 15,658,489 pairs of which 19,557 genuine), shaped like the real 1:1
protocol: 3,531 gallery templates, each of 19,593 probe templates paired with about 800 of them.
Features carry an identity signal, so the scores look like a trained model's.

Prints seconds and peak memory per stage for `gbcosface.eval` and for a BASELINE written plainly
here in the official script's style (a Python loop over templates, chunked per-pair gathers,
sklearn's roc_curve), on the same data in the same run, and checks that both give the same TAR.
1:N: the gallery templates split into two galleries (G1/G2, as IJB-C's), every probe searched in both
and in their union, both conventions (eval/ijb_1n.py), against ijb_1n.py's maths written plainly (full
similarity matrix, argsort, a sort of all non-mated scores) on the union.
`--target ijbb` uses IJB-B's sizes (227,630 images, 12,115 templates, 8,010,270 pairs, 1,845 gallery).
Run: `OMP_NUM_THREADS=2 .venv/bin/python bench/bench_ijb_scoring.py` (`--scale 0.1` for a quick run).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import sklearn.metrics

from gbcosface.eval.ijb import image_weights, template_features
from gbcosface.eval.ijb_11 import pair_scores
from gbcosface.eval.roc import DEFAULT_FARS, ScoreSet

SIZES = {  # images, templates, pairs, genuine pairs, gallery templates
    "ijbc": (469_375, 23_124, 15_658_489, 19_557, 3_531),
    "ijbb": (227_630, 12_115, 8_010_270, 10_270, 1_845),
}
N_IMAGES, N_TEMPLATES, N_PAIRS, N_GENUINE, N_GALLERY = SIZES["ijbc"]


# -------------------------------------------------------------------------------------------------
# data


def make_data(scale: float, seed: int, dim: int = 512, target: str = "ijbc") -> dict:
    """Synthetic IJB-C (or IJB-B): templates, medias, det scores, features, protocol pairs and 1:N subjects."""
    N_IMAGES, N_TEMPLATES, N_PAIRS, N_GENUINE, N_GALLERY = SIZES[target]  # noqa: N806 - the module's names
    rng = np.random.default_rng(seed)
    n_img = int(N_IMAGES * scale)
    n_t = int(N_TEMPLATES * scale)
    n_gal = int(N_GALLERY * scale)
    n_probe = n_t - n_gal
    n_pairs = int(N_PAIRS * scale)
    n_gen = int(N_GENUINE * scale)
    # Template sizes: heavy-tailed (many small still-image templates, some long videos), sum = n_img.
    weight = rng.lognormal(0.0, 1.3, n_t)
    size = 1 + rng.multinomial(n_img - n_t, weight / weight.sum())
    t_of_img = np.repeat(np.arange(n_t), size)
    # Medias: per template 1 + Poisson(3) of them, images spread unevenly (video media hold many frames).
    n_media = np.minimum(size, 1 + rng.poisson(3, n_t))
    u = rng.random(n_img)
    media_in_t = np.floor(u * u * n_media[t_of_img]).astype(np.int64)
    media_base = np.concatenate([[0], np.cumsum(n_media)[:-1]])
    medias = media_base[t_of_img] + media_in_t + 100_000
    # Scattered template ids (IJB's run up to ~190k), as a reader would give them.
    ids = np.sort(rng.choice(np.arange(1, 200_000), n_t, replace=False))
    templates = ids[t_of_img]
    # Subjects: gallery template g is subject g; probe templates belong to random gallery subjects.
    subj = np.concatenate([np.arange(n_gal), rng.integers(0, n_gal, n_probe)])
    centres = rng.standard_normal((n_gal, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    quality = rng.uniform(0.1, 1.0, n_img).astype(np.float32)
    feats = rng.standard_normal((n_img, dim), dtype=np.float32)
    feats *= np.float32(1.6 / np.sqrt(dim))
    feats += centres[subj[t_of_img]] * quality[:, None]
    feats *= np.float32(20.0)
    det = rng.uniform(0.5, 1.0, n_img).astype(np.float32)
    # Pairs: each probe meets its own gallery template (genuine; all but a few probes) and ~800 other
    # gallery templates (impostors) spread over the whole gallery: start + j * stride (mod gallery
    # size) with a stride coprime to it, so that no block of gallery templates is left out.
    n_imp = n_pairs - n_gen
    per_probe = np.full(n_probe, n_imp // n_probe)
    per_probe[: n_imp - per_probe.sum()] += 1
    probes = np.arange(n_gal, n_t)
    start = rng.integers(0, n_gal, n_probe)
    strides = np.array([s for s in range(1, n_gal) if math.gcd(s, n_gal) == 1])
    stride = rng.choice(strides, n_probe)
    rep = np.repeat(np.arange(n_probe), per_probe)
    offs = np.arange(rep.size) - np.repeat(np.cumsum(per_probe) - per_probe, per_probe)
    gal = (start[rep] + offs * stride[rep]) % n_gal
    own = subj[probes][rep]
    # never the probe's own subject: step once more along the progression (still distinct from the rest)
    gal = np.where(gal == own, (start[rep] + per_probe[rep] * stride[rep]) % n_gal, gal)
    gen_probes = rng.choice(n_probe, n_gen, replace=False)
    p1 = np.concatenate([gal, subj[probes[gen_probes]]])
    p2 = np.concatenate([probes[rep], probes[gen_probes]])
    label = np.concatenate([np.zeros(rep.size, np.int64), np.ones(n_gen, np.int64)])
    order = np.argsort(p1, kind="stable")  # the real pair file runs through the first templates in order
    return {
        "feats": feats, "templates": templates, "medias": medias, "det": det,
        "p1": ids[p1[order]], "p2": ids[p2[order]], "label": label[order],
        "gallery_ids": ids[:n_gal], "probe_ids": ids[n_gal:], "subject": subj,
    }


# -------------------------------------------------------------------------------------------------
# baseline: the official script's approach, written plainly


def baseline_templates(img_feats, templates, medias):
    order = np.argsort(templates, kind="stable")
    t_sorted = templates[order]
    unique_templates, starts = np.unique(t_sorted, return_index=True)
    ends = np.append(starts[1:], len(order))
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for i in range(len(unique_templates)):
        ind_t = order[starts[i]:ends[i]]
        face_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        media_feats = []
        for u in np.unique(face_medias):
            media_feats.append(np.mean(face_feats[face_medias == u], axis=0))
        template_feats[i] = np.sum(media_feats, axis=0)
    template_feats /= np.sqrt(np.sum(template_feats**2, -1, keepdims=True))
    return template_feats, unique_templates


def baseline_scores(template_feats, unique_templates, p1, p2, batch=100_000):
    template2id = np.zeros(unique_templates.max() + 1, dtype=np.int64)
    template2id[unique_templates] = np.arange(len(unique_templates))
    score = np.zeros(len(p1))
    for s in range(0, len(p1), batch):
        f1 = template_feats[template2id[p1[s:s + batch]]]
        f2 = template_feats[template2id[p2[s:s + batch]]]
        score[s:s + batch] = np.sum(f1 * f2, -1)
    return score


def baseline_tar(label, score, fars):
    fpr, tpr, _ = sklearn.metrics.roc_curve(label, score)
    auc = sklearn.metrics.auc(fpr, tpr)
    fpr_f, tpr_f = np.flipud(fpr), np.flipud(tpr)
    nearest = []
    for far in fars:
        _, i = min(zip(abs(fpr_f - far), range(len(fpr_f)), strict=True))
        nearest.append(float(tpr_f[i]))
    fpr_all, tpr_all, _ = sklearn.metrics.roc_curve(label, score, drop_intermediate=False)
    strict = [float(tpr_all[fpr_all <= far].max()) for far in fars]
    return nearest, strict, auc


# -------------------------------------------------------------------------------------------------
# measurement


def measure(fn: Callable, trace: bool):
    """(result, seconds, peak traced MiB above the start or None)."""
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = None
    if trace:
        peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        tracemalloc.stop()
    return out, dt, peak


def ours(data, fars, trace):
    stages = {}
    w = image_weights(data["feats"], data["det"], norm_score=True, detector_score=True)
    (tf, ut), stages["aggregate"], m1 = measure(
        lambda: template_features(data["feats"], data["templates"], data["medias"], weights=w), trace)
    scores, stages["score"], m2 = measure(lambda: pair_scores(tf, ut, data["p1"], data["p2"]), trace)

    def tar():
        ss = ScoreSet(data["label"], scores)
        ss.top_impostors(ss.k_for(max(fars)))
        return ss, [ss.cell(f, "nearest").value for f in fars], [ss.cell(f, "strict").value for f in fars]
    (ss, nearest, strict), stages["tar_at_far"], m3 = measure(tar, trace)
    auc, stages["auc"], m4 = measure(ss.auc, trace)
    mem = {"aggregate": m1, "score": m2, "tar_at_far": m3, "auc": m4}
    return {"scores": scores, "nearest": nearest, "strict": strict, "auc": auc, "time": stages, "mem": mem}


def baseline(data, fars):
    stages = {}
    feats = data["feats"] * data["det"][:, None]
    (tf, ut), stages["aggregate"], _ = measure(
        lambda: baseline_templates(feats, data["templates"], data["medias"]), False)
    scores, stages["score"], _ = measure(lambda: baseline_scores(tf, ut, data["p1"], data["p2"]), False)
    (nearest, strict, auc), stages["tar_at_far+auc"], _ = measure(
        lambda: baseline_tar(data["label"], scores, fars), False)
    return {"scores": scores, "nearest": nearest, "strict": strict, "auc": auc, "time": stages}


def one_n_meta(data):
    """IJB1NMeta of the data: gallery templates of even subjects in G1, odd in G2; all probes mixed."""
    from pathlib import Path

    from gbcosface.data.ijb import IJB1NMeta, IJB1NSet

    n_gal = data["gallery_ids"].size
    subj = data["subject"]
    lines = np.arange(2, 2 + n_gal)
    sets = {g: IJB1NSet(Path(g), data["gallery_ids"][k::2], np.arange(n_gal)[k::2], lines[k::2])
            for k, g in enumerate(("G1", "G2"))}
    probes = IJB1NSet(Path("probe"), data["probe_ids"], subj[n_gal:], np.arange(2, 2 + data["probe_ids"].size))
    return IJB1NMeta(galleries=sets, probes=probes)


def ours_1n(data, fpirs=(0.01, 0.1)):
    from gbcosface.eval.ijb_1n import Identification1N

    w = image_weights(data["feats"], data["det"], norm_score=True, detector_score=True)
    tf, ut = template_features(data["feats"], data["templates"], data["medias"], weights=w)
    meta = one_n_meta(data)
    proto = Identification1N()
    searches, t_score, _ = measure(lambda: proto.score(tf, ut, meta), False)
    metrics, t_metrics, _ = measure(lambda: proto.metrics(searches, fpirs), False)
    return tf, ut, meta, metrics, {"search (G1, G2, union)": t_score, "metrics + curves": t_metrics}


def baseline_1n(tf, ut, meta, fpirs=(0.01, 0.1)):
    """ijb_1n.py's evaluation() on the union of the galleries, written plainly (numpy sort for heapq)."""
    rows = {int(t): i for i, t in enumerate(ut.tolist())}
    g_t = np.concatenate([meta.galleries["G1"].templates, meta.galleries["G2"].templates])
    g_s = np.concatenate([meta.galleries["G1"].subjects, meta.galleries["G2"].subjects])
    q = tf[[rows[int(t)] for t in meta.probes.templates.tolist()]]
    g = tf[[rows[int(t)] for t in g_t.tolist()]]
    col = {int(s): j for j, s in enumerate(g_s.tolist())}
    mask = np.array([col[int(s)] for s in meta.probes.subjects.tolist()])
    t = time.perf_counter()
    sim = q @ g.T
    top = np.argsort(-sim, axis=1)
    cmc = {k: float(np.mean([mask[i] in top[i, :k] for i in range(len(mask))])) for k in (1, 5, 10, 20)}
    pos = sim[np.arange(len(mask)), mask].copy()
    sim[np.arange(len(mask)), mask] = -2.0
    neg = np.sort(sim[sim > -2.0])[::-1]
    tpir = {f: float(np.sum(pos > neg[math.ceil(len(mask) * f) - 1]) / len(mask)) for f in fpirs}
    return cmc, tpir, time.perf_counter() - t


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return (f"{platform.node()} {cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, numpy {np.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of IJB-C's size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--target", choices=sorted(SIZES), default="ijbc", help="whose sizes to take")
    ap.add_argument("--only-1n", action="store_true", help="only the 1:N stages")
    args = ap.parse_args()
    fars = DEFAULT_FARS
    print(f"machine: {machine()}")
    t = time.perf_counter()
    data = make_data(args.scale, args.seed, target=args.target)
    print(f"data: {data['feats'].shape[0]:,} images x {data['feats'].shape[1]}, "
          f"{np.unique(data['templates']).size:,} templates, {np.unique(data['medias']).size:,} medias, "
          f"{data['label'].size:,} pairs ({int(data['label'].sum()):,} genuine), "
          f"{np.unique(data['p1']).size:,} first x {np.unique(data['p2']).size:,} second templates "
          f"(made in {time.perf_counter() - t:.1f} s)")

    tf, ut, meta, ident, t1n = ours_1n(data)
    print(f"\n1:N: {meta.probes.templates.size:,} probes x G1 {meta.galleries['G1'].templates.size:,} / "
          f"G2 {meta.galleries['G2'].templates.size:,} gallery templates (eval.ijb_1n)   seconds")
    for k, v in t1n.items():
        print(f"  {k:<40} {v:8.3f}")
    union = ident["insightface"]["G1+G2"]
    print(f"  insightface G1+G2: rank-1 {100 * union['cmc']['1']:.2f} %, TPIR@1e-2 "
          f"{100 * union['tpir_at_fpir'][0]['value']:.2f} %; open-set mean rank-1 "
          f"{100 * ident['open_set']['mean']['cmc']['1']:.2f} %, TPIR@1e-2 "
          f"{100 * ident['open_set']['mean']['tpir_at_fpir'][0]['value']:.2f} %")
    if not args.skip_baseline:
        cmc, tpir, t_base = baseline_1n(tf, ut, meta)
        same = cmc == {int(k): v for k, v in union["cmc"].items()} and \
            [tpir[f] for f in (0.01, 0.1)] == [c["value"] for c in union["tpir_at_fpir"]]
        print(f"  ijb_1n.py-style baseline on the union: {t_base:.3f} s (one gallery set; ours did three); "
              f"identical CMC and TPIR: {'yes' if same else 'NO'}")
        assert same, (cmc, tpir, union)
    if args.only_1n:
        return

    mine = ours(data, fars, trace=False)
    mem = ours(data, fars, trace=True)["mem"]
    total = sum(mine["time"].values())
    print("\ngbcosface.eval                seconds   peak traced MiB")
    for k, v in mine["time"].items():
        print(f"  {k:<26} {v:8.3f}   {mem[k]:10.1f}")
    print(f"  {'total':<26} {total:8.3f}   (goal <= 3 s on 2 cores)")
    print(f"  process max RSS so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(the features alone are {data['feats'].nbytes / 2**20:.0f} MiB)")

    if args.skip_baseline:
        return
    base = baseline(data, fars)
    btotal = sum(base["time"].values())
    print("\nbaseline (official style)     seconds")
    for k, v in base["time"].items():
        print(f"  {k:<26} {v:8.3f}")
    print(f"  {'total':<26} {btotal:8.3f}   speed-up x{btotal / total:.1f}")

    diff = float(np.abs(mine["scores"] - base["scores"]).max())
    print(f"\nmax |score difference| {diff:.2e} (media means accumulate in float32 in both, in other orders)")
    assert diff < 1e-6, diff
    # The TAR code must agree exactly with sklearn's roc_curve, on our scores and on the baseline's.
    for name, scores, ref in (("our", mine["scores"], None), ("the baseline's", base["scores"], base)):
        ref = ref or dict(zip(("nearest", "strict", "auc"), baseline_tar(data["label"], scores, fars), strict=True))
        ss = ScoreSet(data["label"], scores)
        assert [ss.cell(f, "nearest").value for f in fars] == ref["nearest"], name
        assert [ss.cell(f, "strict").value for f in fars] == ref["strict"], name
        assert abs(ss.auc() - ref["auc"]) < 1e-9, name
        print(f"TAR (both conventions) on {name} scores: identical to sklearn.roc_curve "
              f"(AUC within {abs(ss.auc() - ref['auc']):.1e})")
    print(f"\n{'FAR':>8} {'nearest ours':>13} {'baseline':>9} {'strict ours':>12} {'baseline':>9}")
    for i, far in enumerate(fars):
        print(f"{far:8.0e} {100 * mine['nearest'][i]:13.4f} {100 * base['nearest'][i]:9.4f} "
              f"{100 * mine['strict'][i]:12.4f} {100 * base['strict'][i]:9.4f}")
    print(f"AUC ours {mine['auc']:.6f} baseline {base['auc']:.6f}")
    same = mine["nearest"] == base["nearest"] and mine["strict"] == base["strict"]
    # With the TAR code exact on both score sets, a difference here could only come from the two
    # aggregations' float rounding reordering a genuine and an impostor pair at a chosen threshold.
    print(f"end-to-end TAR identical to the baseline: {'yes' if same else 'NO'}")
    assert same, "end-to-end TAR differs from the baseline"


if __name__ == "__main__":
    main()

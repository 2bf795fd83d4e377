"""Assembling a synthetic face world and writing it in the real formats.

Layout of `OUT/` (docs/architecture.md): `train/` (insightface train.rec/.idx + property),
`val/` (lfw.bin, cfp_fp.bin, agedb_30.bin), `IJBC/` (loose_crop/ + meta/, with the 1:1 pair file and
the 1:N files `ijbc_1N_gallery_G1.csv`, `_G2.csv`, `ijbc_1N_probe_mixed.csv`) and `world.json`.

Why it is built this way:
- Every image is described by a small job (identity index, a seed key, a profile) and rendered from
  `np.random.SeedSequence([world seed, stream, ...key])`; workers render jobs in chunks and the parent
  writes results in job order, so the bytes do not depend on the number of workers.
- Identities are allocated in disjoint index blocks (train, IJB-C, each .bin set), so evaluation
  never sees a training identity.
- Everything is written into a staging directory inside OUT and moved into place at the end;
  `world.json` (parameters, counts, sha256 of every file) is written last and marks a complete world.

Difficulty calibration (bench/synth_difficulty.py, default world sizes, the demo's tiny iresnet18 with
GB-CosFace, 600 SGD steps of global batch 128; IJB-C-like template TAR@FAR=1e-3 untrained -> trained,
single-image TAR@1e-3 in brackets; 2-core shared VM, 2026-11-28):
difficulty 0.0: 0.02 -> 0.93 (0.85); 0.25: 0.01 -> 0.76 (0.58), second seed 0.02 -> 0.77 (0.63);
0.3: 0.01 -> 0.68 (0.49); 0.4: 0.01 -> 0.32 (0.21). Default 0.25: mid-range of the 0.5-0.95 target.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gbcosface import __version__
from gbcosface.data.ijb import write_ijb_1n_meta, write_ijb_meta
from gbcosface.data.recordio import write_face_rec
from gbcosface.data.synthetic.identity import Identity, drifted, make_identity
from gbcosface.data.synthetic.nuisance import PROFILES, Nuisance, perturb_frame, sample_nuisance
from gbcosface.data.synthetic.render import crop_transform, encode_jpeg, render_aligned, render_crop

log = logging.getLogger(__name__)

# Bump when rendering or sampling changes what a (seed, spec) produces.
SYNTH_VERSION = 1
WORLD_FORMAT = "gbcosface.synthetic-world/1"
OUTPUTS = ("train", "val", "IJBC")

# SeedSequence stream tags (identity latents use identity.STREAM_IDENTITY = 1)
_STREAM_IMAGE = 2
_STREAM_MEDIA = 3
_STREAM_PAIRS = 4
_STREAM_IJB_PAIRS = 5
_STREAM_STRUCTURE = 6
_STREAM_1N = 7

BIN_SETS = {  # name: (stream code, profile of the first image, profile of the second)
    "lfw": (11, "lfw", "lfw"),
    "cfp_fp": (12, "cfp_frontal", "cfp_profile"),
    "agedb_30": (13, "agedb", "agedb"),
}
_TRAIN_CODE = 10


@dataclass(frozen=True)
class WorldSpec:
    """What to generate. Defaults are the demo's world."""

    seed: int = 0
    identities: int = 1000  # training identities
    images_per_identity: int = 25
    eval_identities: int = 300  # IJB-C-like identities
    templates_per_identity: int = 4
    pairs: int = 1000  # per .bin set (half genuine)
    bin_identities: int = 200  # per .bin set
    impostor_pairs: int = 100_000  # IJB-C impostor template pairs (at most)
    difficulty: float = 0.25  # calibrated with bench/synth_difficulty.py: see the module docstring
    crop_min: int = 150  # loose crop side range, px
    crop_max: int = 250

    def validate(self) -> None:
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        for name in ("identities", "images_per_identity", "templates_per_identity", "pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_identities < 2 or self.bin_identities < 2:
            raise ValueError("eval_identities and bin_identities must be >= 2 (impostor pairs need two people)")
        if self.impostor_pairs < 1:
            raise ValueError(f"impostor_pairs must be >= 1, got {self.impostor_pairs}")
        if not 32 <= self.crop_min <= self.crop_max:
            raise ValueError(f"need 32 <= crop_min <= crop_max, got {self.crop_min}, {self.crop_max}")

    @property
    def spread(self) -> float:
        """How far identities lie from the average face (1 = fully spread, smaller = look-alikes)."""
        return 1.0 - 0.8 * self.difficulty

    @property
    def nuisance_scale(self) -> float:
        """Multiplier of pose, light, blur, noise and occlusion magnitudes."""
        return 0.4 + 1.2 * self.difficulty

    def identity_blocks(self) -> dict[str, tuple[int, int]]:
        """Disjoint [start, stop) identity index ranges of every split."""
        blocks: dict[str, tuple[int, int]] = {}
        start = 0
        for name, size in (("train", self.identities), ("ijbc", self.eval_identities),
                           *((b, self.bin_identities) for b in BIN_SETS)):
            blocks[name] = (start, start + size)
            start += size
        return blocks


# ----------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class _Ctx:
    seed: int
    spread: float
    scale: float
    crop_min: int
    crop_max: int


# A job: ("aligned", identity, key, profile) or ("crop", identity, media_key, frame)
Job = tuple


def _identity(ctx: _Ctx, index: int, cache: dict[int, Identity]) -> Identity:
    ident = cache.get(index)
    if ident is None:
        if len(cache) > 256:
            cache.clear()
        ident = cache[index] = make_identity(ctx.seed, index, ctx.spread)
    return ident


def _render_aligned_job(ctx: _Ctx, ident: Identity, key: tuple, profile: str) -> bytes:
    rng = np.random.default_rng(np.random.SeedSequence([ctx.seed, _STREAM_IMAGE, *key]))
    prof = PROFILES[profile]
    nz = sample_nuisance(rng, prof, ctx.scale)
    who = drifted(ident, rng, prof.drift * ctx.scale)
    img, _ = render_aligned(who, nz)
    return encode_jpeg(img, nz.jpeg)


def media_nuisance(ctx: _Ctx, media_key: tuple, frame: int) -> tuple[Nuisance, np.random.Generator]:
    """The nuisance of one frame of an IJB media (shared scene, small per-frame changes) and the
    generator of the media's appearance drift."""
    base_rng = np.random.default_rng(np.random.SeedSequence([ctx.seed, _STREAM_MEDIA, *media_key]))
    base = sample_nuisance(base_rng, PROFILES["ijb"], ctx.scale)
    drift_seed = int(base_rng.integers(0, 2**62))
    rng = np.random.default_rng(np.random.SeedSequence([ctx.seed, _STREAM_MEDIA, *media_key, frame + 1]))
    nz = base if frame == 0 else perturb_frame(base, rng, ctx.scale)
    return nz, np.random.default_rng(drift_seed)  # the same drift (look) for every frame of the media


def detector_score(nz: Nuisance, face_scale: float, rng: np.random.Generator) -> float:
    """A detector-like confidence: high for clear frontal faces, low for hard ones."""
    penalty = (0.35 * (abs(nz.yaw) / 70.0) ** 2 + 0.06 * nz.blur + 0.006 * nz.noise
               + 0.2 * (nz.occlusion > 0) + 0.6 * max(0.0, 0.95 - face_scale) + 0.05 * (95 - nz.jpeg) / 55.0)
    return float(np.clip(0.999 - penalty - abs(rng.normal(0.0, 0.015)), 0.05, 0.999))


def _render_crop_job(ctx: _Ctx, ident: Identity, media_key: tuple, frame: int
                     ) -> tuple[bytes, np.ndarray, float]:
    nz, drift_rng = media_nuisance(ctx, media_key, frame)
    who = drifted(ident, drift_rng, PROFILES["ijb"].drift * ctx.scale)  # one look per media
    rng = np.random.default_rng(np.random.SeedSequence([ctx.seed, _STREAM_MEDIA, *media_key, frame + 1, 7]))
    w, h = (int(v) for v in rng.integers(ctx.crop_min, ctx.crop_max + 1, 2))
    roll = float(np.clip(rng.normal(0.0, 12.0 * ctx.scale), -35.0, 35.0))
    m, scale = crop_transform(rng, w, h, roll)
    img, lm = render_crop(who, nz, m, w, h)
    score = detector_score(nz, scale, rng)
    sigma = (0.4 + 2.5 * (1.0 - score)) * scale  # a detector is less precise on hard faces
    detected = lm + rng.normal(0.0, sigma, lm.shape)
    return encode_jpeg(img, nz.jpeg), detected.astype(np.float32), score


def _run_chunk(args: tuple[_Ctx, Sequence[Job]]) -> list:
    ctx, jobs = args
    cache: dict[int, Identity] = {}
    out = []
    for job in jobs:
        ident = _identity(ctx, job[1], cache)
        if job[0] == "aligned":
            out.append(_render_aligned_job(ctx, ident, job[2], job[3]))
        else:
            out.append(_render_crop_job(ctx, ident, job[2], job[3]))
    return out


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core: no OpenCV thread pool on top


class _Renderer:
    """Renders job lists in order, in this process or in a pool of `workers` processes."""

    def __init__(self, ctx: _Ctx, workers: int, chunk: int = 48):
        self.ctx, self.chunk = ctx, chunk
        self.pool = None
        if workers > 1:
            self.pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)
        self.rendered = 0

    def map(self, jobs: Sequence[Job]) -> Iterator:
        chunks = ((self.ctx, jobs[i:i + self.chunk]) for i in range(0, len(jobs), self.chunk))
        results = self.pool.imap(_run_chunk, chunks) if self.pool else map(_run_chunk, chunks)
        for part in results:
            self.rendered += len(part)
            yield from part

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


# ----------------------------------------------------------------------------- splits
def train_jobs(spec: WorldSpec) -> list[Job]:
    start, stop = spec.identity_blocks()["train"]
    return [("aligned", c, (_TRAIN_CODE, c, k), "train")
            for c in range(start, stop) for k in range(spec.images_per_identity)]


def bin_pairs(spec: WorldSpec, name: str) -> tuple[list[Job], list[bool]]:
    """Jobs (2 per pair, in pair order) and issame flags of one .bin set; exactly half genuine."""
    code, prof_a, prof_b = BIN_SETS[name]
    start, stop = spec.identity_blocks()[name]
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _STREAM_PAIRS, code]))
    issame = np.zeros(spec.pairs, bool)
    issame[: (spec.pairs + 1) // 2] = True
    rng.shuffle(issame)
    counters: dict[int, int] = {}

    def job(identity: int, profile: str) -> Job:
        k = counters.get(identity, 0)
        counters[identity] = k + 1
        return ("aligned", identity, (code, identity, k), profile)

    jobs: list[Job] = []
    for same in issame:
        a = int(rng.integers(start, stop))
        b = a if same else int(start + (a - start + rng.integers(1, stop - start)) % (stop - start))
        jobs += [job(a, prof_a), job(b, prof_b)]
    return jobs, [bool(s) for s in issame]


@dataclass
class IJBLayout:
    """The structure of the IJB-C-like set: one row per image, plus template pairs."""

    jobs: list[Job]
    names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    template_identity: dict[int, int]
    pair_t1: np.ndarray
    pair_t2: np.ndarray
    pair_label: np.ndarray


def ijb_layout(spec: WorldSpec) -> IJBLayout:
    """Templates of several medias, medias of one or more frames; all genuine template pairs and up to
    `impostor_pairs` impostor pairs drawn uniformly from all different-identity template pairs."""
    start, stop = spec.identity_blocks()["ijbc"]
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _STREAM_STRUCTURE]))
    jobs, templates, medias = [], [], []
    template_identity: dict[int, int] = {}
    tid, mid = 0, 0
    for ident in range(start, stop):
        for t in range(spec.templates_per_identity):
            tid += 1
            template_identity[tid] = ident
            for m in range(int(rng.choice((1, 2, 3), p=(0.45, 0.35, 0.2)))):
                mid += 1
                for f in range(int(rng.choice((1, 2, 3), p=(0.6, 0.25, 0.15)))):
                    jobs.append(("crop", ident, (ident, t, m), f))
                    templates.append(tid)
                    medias.append(mid)
    names = [f"{i + 1}.jpg" for i in range(len(jobs))]
    t1, t2, lab = _ijb_pairs(spec, template_identity)
    return IJBLayout(jobs, names, np.array(templates, np.int64), np.array(medias, np.int64),
                     template_identity, t1, t2, lab)


def _ijb_pairs(spec: WorldSpec, template_identity: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tids = np.array(sorted(template_identity), np.int64)
    who = np.array([template_identity[t] for t in tids.tolist()], np.int64)
    per = spec.templates_per_identity
    genuine = [(a, b) for i in range(0, len(tids), per)
               for a, b in itertools.combinations(tids[i:i + per].tolist(), 2)]
    n = len(tids)
    total_impostor = n * (n - 1) // 2 - len(genuine)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _STREAM_IJB_PAIRS]))
    if total_impostor <= spec.impostor_pairs:
        ii, jj = np.triu_indices(n, 1)
        keep = who[ii] != who[jj]
        imp = np.stack([tids[ii[keep]], tids[jj[keep]]], axis=1)
    else:
        chosen: set[tuple[int, int]] = set()
        while len(chosen) < spec.impostor_pairs:
            need = spec.impostor_pairs - len(chosen)
            i = rng.integers(0, n, 2 * need + 16)
            j = rng.integers(0, n, 2 * need + 16)
            for a, b in zip(i.tolist(), j.tolist(), strict=True):
                if who[a] != who[b]:
                    chosen.add((min(a, b), max(a, b)))
                    if len(chosen) == spec.impostor_pairs:
                        break
        imp = tids[np.array(sorted(chosen), np.int64)]
    gen = np.array(genuine, np.int64).reshape(-1, 2)
    pairs = np.concatenate([gen, imp.reshape(-1, 2)])
    labels = np.concatenate([np.ones(len(gen), np.int64), np.zeros(len(imp), np.int64)])
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order, 0], pairs[order, 1], labels[order]


def ijb_1n_layout(spec: WorldSpec, lay: IJBLayout) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                                           tuple[np.ndarray, np.ndarray]] | None:
    """The 1:N split of the IJB-C-like set, shaped like IJB-C's: identities split at random into two halves
    (galleries G1, G2); each identity's first template enrols it in its gallery, all its other templates
    are probes (so every probe is mated in one gallery and non-mated in the other). Subject id = identity
    index + 1. None when identities have a single template (no probe would be left)."""
    if spec.templates_per_identity < 2:
        return None
    by_identity: dict[int, list[int]] = {}
    for tid in sorted(lay.template_identity):
        by_identity.setdefault(lay.template_identity[tid], []).append(tid)
    people = np.array(sorted(by_identity), np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _STREAM_1N]))
    perm = rng.permutation(people.size)
    halves = {"G1": np.sort(people[perm[: (people.size + 1) // 2]]), "G2": np.sort(people[perm[(people.size + 1) // 2:]])}
    galleries = {g: (np.array([by_identity[int(p)][0] for p in who], np.int64), who + 1) for g, who in halves.items()}
    probe_t = [t for p in people.tolist() for t in by_identity[p][1:]]
    probe_s = [lay.template_identity[t] + 1 for t in probe_t]
    return galleries, (np.array(probe_t, np.int64), np.array(probe_s, np.int64))


# ----------------------------------------------------------------------------- writing
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_digests(root: Path) -> dict[str, dict]:
    """sha256 and size of every file under root; a loose_crop/ directory is summarised as one digest."""
    files: dict[str, dict] = {}
    for sub in OUTPUTS:
        for path in sorted((root / sub).rglob("*")):
            if not path.is_file() or path.parent.name == "loose_crop":
                continue
            files[path.relative_to(root).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        crops = root / sub / "loose_crop"
        if crops.is_dir():
            h = hashlib.sha256()
            count = size = 0
            for path in sorted(crops.iterdir(), key=lambda p: p.name):
                h.update(f"{path.name} {sha256_file(path)}\n".encode())
                count += 1
                size += path.stat().st_size
            files[crops.relative_to(root).as_posix() + "/"] = {
                "files": count, "size": size, "sha256": h.hexdigest(),
                "digest": "sha256 of lines 'name sha256' in name order"}
    return files


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def generate_world(out: str | os.PathLike, spec: WorldSpec, workers: int = 1, overwrite: bool = False,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Generate the world described by `spec` into `out`; returns the world.json content.

    Refuses to replace an existing world unless `overwrite`; on failure nothing in `out` changes.
    """
    # bin_sets imports torch: only the writing parent needs it, not the rendering workers
    from gbcosface.data.bin_sets import write_bin

    spec.validate()
    out = Path(out)
    existing = [name for name in (*OUTPUTS, "world.json") if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds {', '.join(existing)}; pass overwrite=True (--overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".synth-staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    say = progress or log.info
    ctx = _Ctx(spec.seed, spec.spread, spec.nuisance_scale, spec.crop_min, spec.crop_max)
    renderer = _Renderer(ctx, workers)
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    try:
        # training set
        jobs = train_jobs(spec)
        start = spec.identity_blocks()["train"][0]
        labels = (job[1] - start for job in jobs)
        write_face_rec(stage / "train", zip(labels, renderer.map(jobs), strict=True), len(jobs), spec.identities)
        counts.update(train_images=len(jobs), train_identities=spec.identities)
        say(f"train: {len(jobs)} images of {spec.identities} identities ({time.perf_counter() - t0:.1f} s)")
        # .bin sets
        (stage / "val").mkdir()
        for name in BIN_SETS:
            jobs, issame = bin_pairs(spec, name)
            write_bin(stage / "val" / f"{name}.bin", list(renderer.map(jobs)), issame)
            counts[f"{name}_pairs"] = len(issame)
            counts[f"{name}_genuine"] = int(sum(issame))
        say(f"val: {', '.join(BIN_SETS)} ({time.perf_counter() - t0:.1f} s)")
        # IJB-C-like
        lay = ijb_layout(spec)
        crops = stage / "IJBC" / "loose_crop"
        crops.mkdir(parents=True)
        landmarks = np.zeros((len(lay.jobs), 5, 2), np.float32)
        scores = np.zeros(len(lay.jobs), np.float32)
        for i, (jpeg, lm, score) in enumerate(renderer.map(lay.jobs)):
            (crops / lay.names[i]).write_bytes(jpeg)
            landmarks[i], scores[i] = lm, score
        write_ijb_meta(stage / "IJBC", "ijbc", lay.names, lay.templates, lay.medias, landmarks, scores,
                       lay.pair_t1, lay.pair_t2, lay.pair_label)
        split = ijb_1n_layout(spec, lay)
        if split is not None:
            galleries, probes = split
            names: dict[int, list[str]] = {}
            for name, tid in zip(lay.names, lay.templates.tolist(), strict=True):
                names.setdefault(tid, []).append(name)
            write_ijb_1n_meta(stage / "IJBC", "ijbc", galleries, probes, filenames=names)
            counts.update(ijbc_1n_gallery_G1=int(galleries["G1"][0].size), ijbc_1n_gallery_G2=int(galleries["G2"][0].size),
                          ijbc_1n_probes=int(probes[0].size))
        counts.update(ijbc_images=len(lay.jobs), ijbc_templates=len(lay.template_identity),
                      ijbc_medias=int(lay.medias.max()), ijbc_identities=spec.eval_identities,
                      ijbc_genuine_pairs=int(lay.pair_label.sum()),
                      ijbc_impostor_pairs=int((lay.pair_label == 0).sum()))
        say(f"IJBC: {len(lay.jobs)} crops, {counts['ijbc_templates']} templates, {len(lay.pair_label)} pairs "
            f"({time.perf_counter() - t0:.1f} s)")
        renderer.close()
        elapsed = time.perf_counter() - t0
        files = _file_digests(stage)
        world = {
            "format": WORLD_FORMAT,
            "generator_version": SYNTH_VERSION,
            "code_version": __version__,
            "seed": spec.seed,
            "spec": dataclasses.asdict(spec),
            "spread": spec.spread,
            "nuisance_scale": spec.nuisance_scale,
            "identities": {k: list(v) for k, v in spec.identity_blocks().items()},
            "counts": counts,
            "files": files,
            "digest": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
        }
        # move into place: first out of the way what we replace, then the new parts, world.json last
        (out / "world.json").unlink(missing_ok=True)
        for name in OUTPUTS:
            if (out / name).exists():
                shutil.rmtree(out / name)
            os.replace(stage / name, out / name)
        _atomic_json(out / "world.json", world)
        say(f"world written to {out} in {elapsed:.1f} s ({renderer.rendered / max(elapsed, 1e-9):.0f} images/s, "
            f"{workers} worker(s))")
        return world
    except BaseException:
        renderer.terminate()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def load_world(out: str | os.PathLike) -> dict:
    """The world.json of a generated world."""
    path = Path(out) / "world.json"
    with open(path, encoding="utf-8") as fh:
        world = json.load(fh)
    if world.get("format") != WORLD_FORMAT:
        raise ValueError(f"{path}: not a synthetic world (format {world.get('format')!r})")
    return world

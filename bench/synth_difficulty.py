"""Calibrate the synthetic world's difficulty: TAR@FAR before and after a fixed amount of training.

Generates a world at `--difficulty`, trains the demo's tiny backbone (the demo recipe's model, head
and GB-CosFace loss; SGD lr 0.1, momentum 0.9, wd 5e-4) for a fixed number of iterations, and prints
IJB-C-like template TAR@FAR (mean of media means, L2-normalised cosines), single-image TAR@FAR and
best-threshold accuracy on the .bin sets, untrained and at the evaluation points.

Why iterations, not time: the build machines are shared, so a budget in seconds would not reproduce.
The demo trains 600 steps of batch 64 on each of 2 processes, i.e. a global batch of 128, which is
the default here (one process).

    OMP_NUM_THREADS=2 .venv/bin/python bench/synth_difficulty.py --difficulty 0.5 --iters 600
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from gbcosface.config import load_config
from gbcosface.data.bin_sets import load_bin
from gbcosface.data.ijb import load_aligned, read_ijb_meta
from gbcosface.data.recordio import IndexedRecordReader, read_face_layout, unpack
from gbcosface.data.synthetic.world import WorldSpec, generate_world, load_world
from gbcosface.eval.ijb import template_features
from gbcosface.eval.ijb_11 import pair_scores
from gbcosface.eval.roc import tar_at_far
from gbcosface.eval.verification import evaluate_embeddings
from gbcosface.heads import get_head
from gbcosface.losses import get_loss
from gbcosface.models import get_backbone

FARS = (1e-3, 1e-4)


def tar(labels: np.ndarray, scores: np.ndarray, far: float) -> float:
    """Strict TAR@FAR (largest TPR with FPR <= far) from the project's ROC code."""
    return float(tar_at_far(labels, scores, fars=(far,), convention="strict")[0].value)


def load_train(train_dir: Path) -> tuple[list[bytes], np.ndarray, int]:
    reader = IndexedRecordReader(train_dir / "train.idx", train_dir / "train.rec")
    layout = read_face_layout(reader)
    jpegs, labels = [], []
    for key in layout.image_keys.tolist():
        head, payload = unpack(reader.read(key))
        jpegs.append(payload)
        labels.append(int(head.label))
    reader.close()
    return jpegs, np.array(labels, np.int64), int(layout.num_identities or max(labels) + 1)


def decode(jpegs: list[bytes]) -> torch.Tensor:
    arr = np.stack([cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for j in jpegs])
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - 0.5) / 0.5


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    out = [F.normalize(model(normalise(images[i:i + batch])), dim=1) for i in range(0, len(images), batch)]
    model.train()
    return torch.cat(out).numpy()


class IJBEval:
    """Aligned IJB-C-like images in memory, and the pair lists for template and single-image TAR."""

    def __init__(self, root: Path, seed: int = 0, single_impostors: int = 200_000):
        meta = read_ijb_meta(root, "ijbc")
        self.meta = meta
        self.images = torch.from_numpy(np.stack(
            [load_aligned(root, meta, i) for i in range(len(meta.images))]).transpose(0, 3, 1, 2).copy())
        tids = np.unique(meta.templates)
        # identity of every image: the connected components of the genuine template pairs
        parent = {int(t): int(t) for t in tids}

        def find(t: int) -> int:
            while parent[t] != t:
                t = parent[t]
            return t

        for a, b in zip(meta.pair_t1[meta.pair_label == 1].tolist(), meta.pair_t2[meta.pair_label == 1].tolist(),
                        strict=True):
            parent[find(a)] = find(b)
        who = np.array([find(int(t)) for t in meta.templates.tolist()])
        rng = np.random.default_rng(seed)
        n = len(who)
        i, j = np.triu_indices(n, 1)
        same = (who[i] == who[j]) & (meta.medias[i] != meta.medias[j])
        self.single_gen = np.stack([i[same], j[same]], 1)
        a, b = rng.integers(0, n, single_impostors), rng.integers(0, n, single_impostors)
        keep = who[a] != who[b]
        self.single_imp = np.stack([a[keep], b[keep]], 1)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        meta = self.meta
        feats = embed(model, self.images)  # L2-normalised image features (norm and detector score off)
        tfeat, tids = template_features(feats, meta.templates, meta.medias)
        scores = pair_scores(tfeat, tids, meta.pair_t1, meta.pair_t2)
        s_gen = (feats[self.single_gen[:, 0]] * feats[self.single_gen[:, 1]]).sum(1)
        s_imp = (feats[self.single_imp[:, 0]] * feats[self.single_imp[:, 1]]).sum(1)
        s_lab = np.concatenate([np.ones(len(s_gen), np.int64), np.zeros(len(s_imp), np.int64)])
        s_all = np.concatenate([s_gen, s_imp])
        out = {}
        for far in FARS:
            out[f"template_tar@{far:g}"] = tar(meta.pair_label, scores, far)
            out[f"image_tar@{far:g}"] = tar(s_lab, s_all, far)
        return out


def bin_accuracy(model: torch.nn.Module, binset) -> float:
    """10-fold verification accuracy (the project's evaluator) of one .bin set."""
    return evaluate_embeddings(embed(model, binset.images), binset.issame)["accuracy"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--difficulty", type=float, default=WorldSpec.difficulty)
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--identities", type=int, default=WorldSpec.identities)
    ap.add_argument("--images-per-identity", type=int, default=WorldSpec.images_per_identity)
    ap.add_argument("--eval-identities", type=int, default=WorldSpec.eval_identities)
    ap.add_argument("--templates-per-identity", type=int, default=WorldSpec.templates_per_identity)
    ap.add_argument("--pairs", type=int, default=WorldSpec.pairs)
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--batch", type=int, default=128, help="global batch (the demo: 2 x 64)")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2, help="world generation processes")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--world", type=Path, help="generate into (or reuse) this directory; default: a temp dir")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--save", type=Path, help="save the trained backbone's state_dict here")
    ap.add_argument("--load", type=Path, help="start from this backbone state_dict (with --iters 0: evaluate it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__}, {args.threads} threads", flush=True)

    spec = WorldSpec(seed=args.seed, identities=args.identities, images_per_identity=args.images_per_identity,
                     eval_identities=args.eval_identities, templates_per_identity=args.templates_per_identity,
                     pairs=args.pairs, difficulty=args.difficulty)
    tmp = None
    root = args.world
    if root is None:
        tmp = root = Path(tempfile.mkdtemp(prefix="synth-difficulty-"))
    try:
        t0 = time.perf_counter()
        reuse = (root / "world.json").exists() and load_world(root)["spec"] == json.loads(json.dumps(
            spec.__dict__))
        if not reuse:
            generate_world(root, spec, workers=args.workers, overwrite=True, progress=lambda m: None)
        gen_s = time.perf_counter() - t0
        print(f"world: difficulty {spec.difficulty} (spread {spec.spread:.2f}, nuisance x{spec.nuisance_scale:.2f}), "
              f"{'reused' if reuse else f'generated in {gen_s:.1f} s with {args.workers} workers'}", flush=True)
        results = run(args, root)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run(args: argparse.Namespace, root: Path) -> dict:
    cfg = load_config("demo")
    jpegs, labels, num_classes = load_train(root / "train")
    ijb = IJBEval(root / "IJBC")
    bins = {name: load_bin(root / "val" / f"{name}.bin") for name in ("lfw", "cfp_fp", "agedb_30")}
    print(f"train: {len(jpegs)} images, {num_classes} identities; IJB: {len(ijb.meta.images)} images, "
          f"{int(ijb.meta.pair_label.sum())} genuine / {int((ijb.meta.pair_label == 0).sum())} impostor template "
          f"pairs, {len(ijb.single_gen)} / {len(ijb.single_imp)} image pairs", flush=True)

    torch.manual_seed(args.train_seed)
    m = cfg.model
    model = get_backbone(m.name, embedding_size=m.embedding_size, dropout=m.dropout, width=m.width,
                         layers=m.layers, stem_stride=m.stem_stride)
    if args.load:
        model.load_state_dict(torch.load(args.load, weights_only=True))
    head = get_head(cfg.head.type, m.embedding_size, num_classes)
    loss_fn = get_loss(cfg.loss.name, **cfg.loss.params)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=args.lr, momentum=0.9,
                          weight_decay=5e-4)
    gen = torch.Generator().manual_seed(args.train_seed)
    results: dict = {"difficulty": args.difficulty, "iters": args.iters, "batch": args.batch, "points": []}

    def report(step: int, seconds: float, loss: float | None) -> None:
        point = {"step": step, "train_seconds": round(seconds, 1), "loss": loss, **ijb.evaluate(model)}
        point.update({f"{k}_acc": bin_accuracy(model, b) for k, b in bins.items()})
        results["points"].append(point)
        print(json.dumps(point), flush=True)

    report(0, 0.0, None)
    order = torch.randperm(len(jpegs), generator=gen)
    pos, train_s, running = 0, 0.0, []
    for step in range(1, args.iters + 1):
        if pos + args.batch > len(order):
            order, pos = torch.randperm(len(jpegs), generator=gen), 0
        idx = order[pos:pos + args.batch]
        pos += args.batch
        t = time.perf_counter()
        x = decode([jpegs[i] for i in idx.tolist()])
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x[flip] = x[flip].flip(3)
        y = torch.from_numpy(labels[idx.numpy()])
        out = loss_fn(head(model(normalise(x))), y)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        train_s += time.perf_counter() - t
        running.append(out["loss"].item())
        if step % args.eval_every == 0 or step == args.iters:
            report(step, train_s, round(float(np.mean(running[-50:])), 4))
    if args.save:
        torch.save(model.state_dict(), args.save)
    print(f"training: {args.iters} iterations of {args.batch} in {train_s:.0f} s "
          f"({args.iters * args.batch / max(train_s, 1e-9):.0f} images/s)", flush=True)
    return results


if __name__ == "__main__":
    sys.exit(main())

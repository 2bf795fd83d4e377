"""10-fold verification accuracy on .bin pair sets (LFW, CFP-FP, AgeDB-30, ...), docs/formats.md (".bin").

The protocol every published LFW-style number uses: embeddings L2-normalised in float64 (as
insightface's sklearn.preprocessing.normalize does; float32 normalisation moved one accuracy by a pair
in 36 hard sets); with the flip test the embedding is f(img) + f(flip(img)) before normalisation
(off by default, as the official training callback's `flip_test=False` and `gbcosface eval-bin`);
squared L2 distance per pair; 10 folds in
order (no shuffle, the first n % 10 folds one pair longer); thresholds 0, 0.01, ..., 3.99; on each fold
the threshold with the best accuracy on the other 9 folds (first best on ties) is applied to it;
a pair is predicted "same" when its distance is strictly below the threshold. XNorm is the mean norm
of the backbone's raw outputs (both the image's and its flip's when the flip test is on).

Why counting instead of the 400 x n boolean grid: the accuracy at every threshold follows from two
sorted distance lists (searchsorted), which is exact and needs no big temporaries.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

THRESHOLDS = np.arange(0, 4, 0.01)


def fold_slices(n: int, nfolds: int = 10) -> list[slice]:
    """Consecutive folds; the first n % nfolds are one longer (as sklearn's KFold without shuffle)."""
    if nfolds < 2 or n < nfolds:
        raise ValueError(f"need at least {max(nfolds, 2)} pairs for {nfolds} folds, got {n}")
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    ends = np.cumsum(sizes)
    return [slice(int(e - s), int(e)) for s, e in zip(sizes, ends, strict=True)]


def _accuracies(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy at each threshold of the rule `dist < threshold` means same."""
    same = np.sort(dist[issame])
    diff = np.sort(dist[~issame])
    tp = np.searchsorted(same, thresholds, side="left")  # same pairs with dist < t
    tn = diff.size - np.searchsorted(diff, thresholds, side="left")  # different pairs with dist >= t
    return (tp + tn) / dist.size


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero), in float64 (whatever the input's precision)."""
    x = np.asarray(x).astype(np.float64, copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    np.divide(x, norms[:, None], out=x, where=norms[:, None] > 0)
    return x


def pair_distances(emb: np.ndarray) -> np.ndarray:
    """Squared L2 distances (float64) between the normalised rows 2i and 2i+1 of `emb`."""
    emb = l2_normalize(emb)
    return np.sum(np.square(emb[0::2] - emb[1::2]), axis=1)


def evaluate_embeddings(emb: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> dict[str, float]:
    """Accuracy mean and std over folds, and the mean of the folds' chosen thresholds.

    `emb` holds 2P rows (pair i = rows 2i, 2i+1), normalised here; `issame` P booleans.
    """
    emb = np.asarray(emb)
    issame = np.asarray(issame, dtype=bool)
    if emb.ndim != 2 or emb.shape[0] != 2 * issame.size:
        raise ValueError(f"expected {2 * issame.size} embeddings (2 per pair) as (2P, D), got shape {emb.shape}")
    dist = pair_distances(emb)
    accs, thrs = [], []
    for test in fold_slices(issame.size, nfolds):
        train = np.ones(issame.size, dtype=bool)
        train[test] = False
        best = int(np.argmax(_accuracies(dist[train], issame[train], THRESHOLDS)))
        thrs.append(float(THRESHOLDS[best]))
        accs.append(float(_accuracies(dist[test], issame[test], THRESHOLDS[best : best + 1])[0]))
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)), "threshold": float(np.mean(thrs))}


def normalize_images(batch_uint8: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 (B,3,H,W) RGB -> float (x/255 - 0.5)/0.5 on `device` (converted there, not on the host)."""
    x = batch_uint8.to(device, non_blocking=True).float()
    return ((x / 255.0) - 0.5) / 0.5


@torch.no_grad()
def embed_batches(backbone: nn.Module, batches: Iterator[torch.Tensor], device: torch.device | str,
                  flip: bool) -> tuple[np.ndarray, float, int]:
    """(embeddings f or f + f_flip as float32 (N, D), sum of raw output norms, number of outputs).

    Flipped images are made on the device and only when `flip` is on; image and flip go through the
    backbone in one forward pass.
    """
    out: list[np.ndarray] = []
    norm_sum, count = 0.0, 0
    for batch in batches:
        x = normalize_images(batch, device)
        b = x.shape[0]
        if flip:
            x = torch.cat([x, torch.flip(x, dims=[3])])
        f = backbone(x).float()
        norms = torch.linalg.vector_norm(f.double(), dim=1)
        norm_sum += float(norms.sum())
        count += int(norms.numel())
        if flip:
            f = f[:b] + f[b:]
        out.append(f.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32), norm_sum, count


def _model_device(backbone: nn.Module) -> torch.device:
    p = next(iter(backbone.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def evaluate_bin(backbone: nn.Module, binset, batch_size: int = 128, device: torch.device | str | None = None,
                 flip: bool = False, nfolds: int = 10) -> dict[str, float]:
    """Verification on a loaded .bin set (`gbcosface.data.bin_sets.BinSet`).

    Returns {"accuracy", "std", "xnorm", "threshold"}. The backbone runs in eval mode (its previous
    mode is restored); `device` defaults to where its parameters are. `flip` defaults to off, as in
    the official release and the `eval-bin` command.
    """
    device = torch.device(device) if device is not None else _model_device(backbone)
    images = binset.images
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (2P, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    batches = (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))
    was_training = backbone.training
    backbone.eval()
    try:
        emb, norm_sum, count = embed_batches(backbone, batches, device, flip)
    finally:
        backbone.train(was_training)
    result = evaluate_embeddings(emb, np.asarray(binset.issame, dtype=bool), nfolds=nfolds)
    result["xnorm"] = norm_sum / max(count, 1)
    return {k: result[k] for k in ("accuracy", "std", "xnorm", "threshold")}

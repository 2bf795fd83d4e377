"""Training data: the RecordIO face dataset, a resumable distributed sampler, the loader and batch prep.

Why this shape:
- Workers only decode JPEGs to uint8 (3, H, W) tensors; flipping and normalisation happen on the device
  in `prepare_batch`, so worker output is 4x smaller than float32 and the random flips are a pure
  function of (seed, step), which makes a resumed run see exactly the same batches.
- The sampler's position is advanced explicitly by the trainer (`advance(n)`) after each consumed
  batch: a DataLoader prefetches batches ahead of the trainer, so the sampler cannot know by itself
  how many samples were really used when a checkpoint is written.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from gbcosface.data.errors import DataFormatError
from gbcosface.data.recordio import IndexedRecordReader, header_label, read_face_layout, read_property, unpack

log = logging.getLogger(__name__)

# cv2 is the default: it decodes as fast as torchvision.io.decode_jpeg here (both are libjpeg-turbo; see
# bench/bench_loader.py), reads any image format, and torchvision's image decoding is deprecated since 0.29.
DECODERS = ("cv2", "torchvision")


def decode_torchvision(data: bytes) -> torch.Tensor:
    """JPEG bytes -> RGB uint8 (3, H, W) with torchvision.io.decode_jpeg (kept for comparison)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_jpeg(buf, mode=ImageReadMode.RGB)


def decode_cv2(data: bytes) -> torch.Tensor:
    """Encoded image bytes (any format OpenCV reads) -> RGB uint8 (3, H, W)."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("cv2.imdecode returned nothing")
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))


_DECODE = {"torchvision": decode_torchvision, "cv2": decode_cv2}
_COUNTER_SLOTS = 257


class RecordFaceDataset(Dataset):
    """Images of an insightface `train.rec/.idx` + `property` directory as (uint8 (3,H,W) RGB, label).

    With `skip_bad=True` an unreadable sample is replaced by the next readable one (index i+1, i+2, ...
    wrapping around), so the substitution is deterministic; each substitution is logged (file, key,
    reason) by the process that hit it and counted in `bad_samples`, a shared-memory counter that the
    main process can read even when DataLoader workers did the decoding. Without `skip_bad`, the
    first unreadable sample raises DataFormatError naming the file and record key.
    """

    def __init__(self, train_dir: str | os.PathLike, skip_bad: bool = False, decoder: str = "cv2"):
        self.train_dir = Path(train_dir)
        if decoder not in _DECODE:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder = decoder
        self.skip_bad = skip_bad
        self.num_classes, self.height, self.width = read_property(self.train_dir)
        self.reader = IndexedRecordReader(self.train_dir / "train.idx", self.train_dir / "train.rec")
        layout = read_face_layout(self.reader)
        if layout.has_header and layout.num_identities != self.num_classes:
            raise DataFormatError(
                f"{self.train_dir / 'property'}: says {self.num_classes} classes but the header record of "
                f"{self.reader.rec_path} (key 0) says {layout.num_identities} identities"
            )
        self.has_header = layout.has_header
        self.image_keys = layout.image_keys
        if self.image_keys.size == 0:
            raise DataFormatError(f"{self.reader.idx_path}: no image records")
        # One counter per process slot (workers by id, the main process in the last one): each process
        # writes only its own slot, so no lock is needed (a lock would tie the set to one start method).
        self._bad = multiprocessing.RawArray("q", _COUNTER_SLOTS)

    def __len__(self) -> int:
        return int(self.image_keys.size)

    @property
    def bad_samples(self) -> int:
        """How many samples were replaced so far, summed over all processes (workers included)."""
        return int(sum(self._bad))

    def _record(self, index: int) -> tuple[str, int, bytes]:
        """(where, label, encoded image) of sample `index`, with the label checked."""
        key = int(self.image_keys[index])
        where = f"{self.reader.rec_path} (key {key})"
        header, data = unpack(self.reader.read(key), where)
        label = header_label(header)
        if not math.isfinite(label) or label != int(label) or not 0 <= label < self.num_classes:
            raise DataFormatError(f"{where}: label {label} is not a class id in [0, {self.num_classes})")
        return where, int(label), data

    def _check_size(self, where: str, h: int, w: int) -> None:
        if (h, w) != (self.height, self.width):
            raise DataFormatError(
                f"{where}: image is {h}x{w} but {self.train_dir / 'property'} says {self.height}x{self.width}"
            )

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """Read and decode sample `index`; any problem raises DataFormatError naming file and key."""
        where, label, data = self._record(index)
        try:
            image = _DECODE[self.decoder](data)
        except (RuntimeError, ValueError) as exc:
            raise DataFormatError(f"{where}: image could not be decoded ({exc})") from None
        self._check_size(where, image.shape[1], image.shape[2])
        return image, label

    def _load_into(self, index: int, out: np.ndarray) -> int:
        """Decode sample `index` straight into `out` (uint8 (3,H,W) view of a batch); return the label.

        cv2.split writes the BGR planes into the batch in reversed order: one pass, no per-sample
        tensor and no second copy when the batch is stacked (about 10% of the decode cost).
        """
        if self.decoder != "cv2":
            image, label = self.load(index)
            out[...] = image.numpy()
            return label
        where, label, data = self._record(index)
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise DataFormatError(f"{where}: image could not be decoded (cv2.imdecode returned nothing)")
        self._check_size(where, img.shape[0], img.shape[1])
        planes = cv2.split(img, [out[2], out[1], out[0]])
        if not np.shares_memory(planes[0], out[2]):  # an OpenCV that did not write in place
            out[...] = img[:, :, ::-1].transpose(2, 0, 1)
        return label

    def _with_skip(self, fn, index: int, *args):
        if not self.skip_bad:
            return fn(index, *args)
        n = len(self)
        for step in range(n):
            try:
                return fn((index + step) % n, *args)
            except DataFormatError as exc:
                info = get_worker_info()
                self._bad[info.id % (_COUNTER_SLOTS - 1) if info is not None else _COUNTER_SLOTS - 1] += 1
                log.warning("skipping bad sample %d (pid %d): %s", (index + step) % n, os.getpid(), exc)
        raise DataFormatError(f"{self.reader.rec_path}: no readable sample at all")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._with_skip(self.load, index)

    def fill_batch(self, indices: list[int], out: np.ndarray) -> list[int]:
        """Decode samples `indices` into `out` (uint8 (len, 3, H, W)); return their labels."""
        return [self._with_skip(self._load_into, int(i), out[j]) for j, i in enumerate(indices)]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch at once (DataLoader calls this): samples are views of one (B,3,H,W) tensor,
        in shared memory inside a worker, which `collate_faces` then passes on without copying.
        """
        batch = torch.empty((len(indices), 3, self.height, self.width), dtype=torch.uint8)
        if get_worker_info() is not None:
            batch.share_memory_()
        labels = self.fill_batch(indices, batch.numpy())
        return [(batch[j], labels[j]) for j in range(len(indices))]


def collate_faces(samples):
    """Collate (image, label) samples into [images (B,3,H,W) uint8, labels (B,) int64].

    (A batch already in the shared ring of `build_train_loader` passes through unchanged.)

    Samples produced by `RecordFaceDataset.__getitems__` are consecutive views of one batch tensor,
    which is returned as is; anything else is stacked like default_collate does.
    """
    if isinstance(samples, _RingBatch):
        return samples  # already in the shared ring; TrainLoader copies it out
    images = [im for im, _ in samples]
    labels = torch.tensor([int(y) for _, y in samples], dtype=torch.int64)
    base = images[0]._base
    if (
        base is not None
        and base.shape[0] == len(images)
        and base.is_contiguous()
        and all(im._base is base and im.storage_offset() == j * im.numel() for j, im in enumerate(images))
    ):
        return [base, labels]
    return [torch.stack(images), labels]


# ---------------------------------------------------------------------------------------------------------
# sampler


def _epoch_seed(seed: int, epoch: int) -> int:
    # A fixed mixing of (seed, epoch) into one 63-bit generator seed.
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (1 << 63)


class ResumableDistributedSampler(Sampler[int]):
    """Deterministic per-epoch shuffling split over ranks, resumable at the exact next sample.

    Order: epoch e uses `torch.randperm(N)` from a generator seeded by (seed, e) (or 0..N-1 without
    shuffle). A pass over the epoch starts at global offset `start` (0 normally): the remaining order
    `perm[start:]` is padded by repeating its head (or cut, with drop_last) to a multiple of
    num_replicas, and rank r takes elements r, r+R, r+2R, ... Each rank yields the same count.

    Progress: the trainer calls `advance(batch_size)` after each consumed batch; `position` is the
    number of samples this rank consumed in the pass. Because ranks advance in lockstep, the GLOBAL
    number consumed is `start + position * num_replicas` (capped at N).

    Resume: `load_state_dict` with the same num_replicas restores (start, position), so iteration
    continues at exactly the next sample of this rank. With a different world size, the new pass
    starts at the global number consumed: no sample of the epoch is seen twice or skipped, but the
    assignment of the remaining samples to ranks and the end-of-epoch padding differ from an
    uninterrupted run (they depend on the world size).

    `set_epoch(e)` starts a fresh pass only when e differs from the current epoch, so calling it for the
    resumed epoch keeps the restored position.
    """

    def __init__(
        self,
        num_samples: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas {num_replicas}")
        self.num_samples = int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.start = 0
        self.position = 0

    # -- order ------------------------------------------------------------------------------------------
    def epoch_order(self, epoch: int | None = None) -> torch.Tensor:
        """The global order of all N samples for an epoch."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed(_epoch_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def _per_rank(self) -> int:
        remaining = self.num_samples - self.start
        if self.drop_last:
            return remaining // self.num_replicas
        return math.ceil(remaining / self.num_replicas)

    def rank_indices(self) -> torch.Tensor:
        """All indices of this rank for the current pass (including those already consumed)."""
        rest = self.epoch_order()[self.start :]
        per_rank = self._per_rank()
        total = per_rank * self.num_replicas
        if rest.numel() < total:
            reps = math.ceil(total / max(rest.numel(), 1))
            rest = torch.cat([rest, rest.repeat(reps)[: total - rest.numel()]])
        return rest[:total][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.position :].tolist())

    def __len__(self) -> int:
        return max(self._per_rank() - self.position, 0)

    # -- progress ---------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.start = 0
            self.position = 0

    def advance(self, n: int) -> None:
        """Record that this rank's trainer consumed `n` more samples of the current pass."""
        self.position += int(n)

    @property
    def global_position(self) -> int:
        """Samples of the epoch consumed by all ranks together."""
        return min(self.num_samples, self.start + self.position * self.num_replicas)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "start": self.start,
            "global_position": self.global_position,
            "num_replicas": self.num_replicas,
            "num_samples": self.num_samples,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_samples", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]!r} but this sampler has {getattr(self, key)!r}; "
                    "resuming would change the data order"
                )
        self.epoch = int(state["epoch"])
        if int(state.get("num_replicas", self.num_replicas)) == self.num_replicas:
            self.start = int(state.get("start", 0))
            self.position = int(state["position"])
        else:
            self.start = int(state["global_position"])
            self.position = 0


# ---------------------------------------------------------------------------------------------------------
# loader and batch preparation


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: seed Python/numpy from torch's per-worker seed; one decode thread."""
    seed = torch.initial_seed() % (1 << 32)
    random.seed(seed)
    np.random.seed(seed)
    # No cv2.setNumThreads here: in a forked child whose parent already started OpenCV's thread
    # pool it deadlocks (the pool's threads do not exist in the child). imdecode is single-threaded.


class _RingBatch:
    """What a worker sends for a batch decoded into the shared ring: where it is, and its labels."""

    __slots__ = ("worker", "slot", "size", "labels")

    def __init__(self, worker: int, slot: int, size: int, labels: torch.Tensor):
        self.worker, self.slot, self.size, self.labels = worker, slot, size, labels


class _RingDataset(Dataset):
    """Worker-side view of a RecordFaceDataset that decodes each batch into a slot of a shared ring.

    Why: sending a fresh shared-memory tensor per batch (what DataLoader workers normally do) costs a
    shared-memory allocation plus a page fault per 4 KiB page on both sides, about a fifth of the decode
    time for 112x112 images. Ring slots are allocated once and stay mapped. Worker w writes its k-th batch
    into slot k mod R of its own row. DataLoader assigns batches to workers round-robin and keeps at most
    prefetch_factor batches per worker not yet handed to the trainer, and `TrainLoader` copies each batch
    out of the ring before handing it over, so with R = prefetch_factor + 1 a slot is never rewritten
    while its batch is still needed.
    """

    def __init__(self, dataset: RecordFaceDataset, ring: torch.Tensor):
        self.dataset = dataset
        self.ring = ring  # (workers, slots, batch, 3, H, W) uint8 in shared memory
        self._count = 0  # batches this worker produced (each worker process has its own copy)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    def __getitems__(self, indices: list[int]):
        info = get_worker_info()
        if info is None or len(indices) > self.ring.shape[2]:
            return self.dataset.__getitems__(indices)
        slot = self._count % self.ring.shape[1]
        self._count += 1
        out = self.ring[info.id, slot, : len(indices)].numpy()
        labels = self.dataset.fill_batch(indices, out)
        return _RingBatch(info.id, slot, len(indices), torch.tensor(labels, dtype=torch.int64))


class TrainLoader:
    """Iterates [images uint8 (B,3,H,W), labels int64 (B,)] like a DataLoader (other attributes pass
    through to the wrapped DataLoader); batches from the shared ring are copied out (into pinned memory
    when pin_memory) before they are yielded, so the trainer may keep them as long as it likes.
    """

    def __init__(self, loader: DataLoader, ring: torch.Tensor | None, pin_memory: bool):
        self.loader = loader
        self.ring = ring
        self.pin = pin_memory

    def __iter__(self):
        for item in self.loader:
            if isinstance(item, _RingBatch):
                src = self.ring[item.worker, item.slot, : item.size]
                images = torch.empty(src.shape, dtype=torch.uint8, pin_memory=self.pin)
                images.copy_(src)
                labels = item.labels.pin_memory() if self.pin else item.labels
                yield [images, labels]
            else:
                yield item

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        if name in ("loader", "ring", "pin"):  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)


def build_train_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    num_workers: int,
    pin_memory: bool | None = None,
    drop_last: bool = True,
    seed: int = 0,
    prefetch_factor: int | None = None,
    use_ring: bool = True,
) -> TrainLoader:
    """The training loader: sampler-driven, persistent workers when there are any, full batches only
    (drop_last) by default, pinned memory when CUDA is present (auto), deterministic worker seeding.

    With workers and a RecordFaceDataset, batches travel through a shared-memory ring (see
    `_RingDataset`): it takes workers x (prefetch_factor + 1) x batch_size x 3 x H x W bytes of /dev/shm.
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    g = torch.Generator()
    g.manual_seed(int(seed))
    kwargs: dict[str, Any] = {}
    ring = None
    if num_workers > 0:
        prefetch = 2 if prefetch_factor is None else int(prefetch_factor)
        kwargs.update(persistent_workers=True, worker_init_fn=seed_worker, prefetch_factor=prefetch)
        if use_ring and isinstance(dataset, RecordFaceDataset):
            shape = (num_workers, prefetch + 1, batch_size, 3, dataset.height, dataset.width)
            ring = torch.zeros(shape, dtype=torch.uint8).share_memory_()
            dataset = _RingDataset(dataset, ring)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory and ring is None,
        drop_last=drop_last,
        generator=g,
        collate_fn=collate_faces,
        **kwargs,
    )
    return TrainLoader(loader, ring, pin_memory)


def flip_mask(batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Which samples of batch `step` are flipped: a pure function of (seed, step) (CPU generator)."""
    g = torch.Generator()
    g.manual_seed(_epoch_seed(seed, step) ^ 0x5DEECE66D)
    return torch.rand(batch_size, generator=g) < 0.5


def prepare_batch(
    images_uint8: torch.Tensor,
    device: torch.device | str,
    step: int,
    seed: int,
    random_flip: bool = True,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B,3,H,W) RGB -> float32 on `device`: horizontal flips per `flip_mask(B, step, seed)`,
    then `(x/255 - 0.5)/0.5`. Pass a rank-specific seed if ranks should flip differently.
    Under a float64 default dtype (`torch.set_default_dtype`, used by exactness tests) it gives float64.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise ValueError(f"expected a uint8 (B,3,H,W) batch, got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    device = torch.device(device)
    x = images_uint8.to(device, non_blocking=images_uint8.is_pinned())
    if random_flip:
        mask = flip_mask(x.shape[0], step, seed).to(device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    x = x.to(torch.promote_types(torch.get_default_dtype(), torch.float32)).div_(255.0).sub_(0.5).div_(0.5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x

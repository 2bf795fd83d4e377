"""Training dataset, resumable sampler, loader and batch preparation."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

from gbcosface.data.errors import DataFormatError
from gbcosface.data.recordio import IndexedRecordWriter, IRHeader, pack, write_property
from gbcosface.data.train_set import (
    RecordFaceDataset,
    ResumableDistributedSampler,
    build_train_loader,
    collate_faces,
    flip_mask,
    prepare_batch,
)

# ---------------------------------------------------------------------------------------------------------
# dataset


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
@pytest.mark.parametrize("decoder", ["torchvision", "cv2"])
def test_dataset_items_match_independent_decode(tmp_path, make_train_dir, make_jpeg, decoder):
    ds = RecordFaceDataset(make_train_dir(tmp_path), decoder=decoder)
    assert len(ds) == 9 and ds.num_classes == 3 and ds.has_header
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    for i in range(len(ds)):
        img, label = ds[i]
        bgr = cv2.imdecode(np.frombuffer(make_jpeg(i + 1), np.uint8), cv2.IMREAD_COLOR)
        assert img.dtype == torch.uint8 and img.shape == (3, 112, 112)
        assert torch.equal(img, torch.from_numpy(bgr[:, :, ::-1].transpose(2, 0, 1).copy()))
        assert label == labels[i]


def test_batched_fetch_equals_single_items_without_extra_copy(tmp_path, make_train_dir):
    ds = RecordFaceDataset(make_train_dir(tmp_path, bad_keys=(3,)), skip_bad=True)
    samples = ds.__getitems__([4, 0, 2, 8])  # index 2 (key 3) is bad: replaced by index 3
    batch, labels = collate_faces(samples)
    assert batch.shape == (4, 3, 112, 112) and batch.data_ptr() == samples[0][0].data_ptr()
    expected = [ds[4], ds[0], ds[3], ds[8]]
    assert torch.equal(batch, torch.stack([im for im, _ in expected]))
    assert labels.tolist() == [y for _, y in expected] and labels.dtype == torch.int64
    # samples that are not views of one batch are stacked
    plain = [ds[1], ds[5]]
    stacked, plain_labels = collate_faces(plain)
    assert torch.equal(stacked[1], plain[1][0]) and plain_labels.tolist() == [0, 2]


def test_undecodable_jpeg_names_file_and_key(tmp_path, make_train_dir):
    ds = RecordFaceDataset(make_train_dir(tmp_path, bad_keys=(4,)))
    with pytest.raises(DataFormatError, match=r"train\.rec \(key 4\): image could not be decoded"):
        ds[3]
    with pytest.raises(DataFormatError, match=r"train\.rec \(key 4\): image could not be decoded"):
        ds.__getitems__([0, 3])


def test_skip_bad_replaces_deterministically_and_counts(tmp_path, make_train_dir, caplog):
    ds = RecordFaceDataset(make_train_dir(tmp_path, bad_keys=(4, 5)), skip_bad=True)
    with caplog.at_level(logging.WARNING):
        img, label = ds[3]  # keys 4 and 5 are bad: key 6 (index 5) replaces it
    ref, ref_label = ds.load(5)
    assert torch.equal(img, ref) and label == ref_label == 2
    assert ds.bad_samples == 2
    assert "key 4" in caplog.text and "key 5" in caplog.text


def test_skip_bad_counter_is_shared_with_workers(tmp_path, make_train_dir):
    ds = RecordFaceDataset(make_train_dir(tmp_path, bad_keys=(2,)), skip_bad=True)
    sampler = ResumableDistributedSampler(len(ds), shuffle=False)
    loader = build_train_loader(ds, sampler, batch_size=3, num_workers=1)
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]  # index 1 replaced by index 2 (label 0)
    assert ds.bad_samples == 1


def test_wrong_image_size_and_label(tmp_path, make_train_dir):
    d = make_train_dir(tmp_path, size=96)
    write_property(d, 3, 112, 112)
    with pytest.raises(DataFormatError, match=r"key 1\): image is 96x96 but .*property says 112x112"):
        RecordFaceDataset(d)[0]


@pytest.mark.parametrize("label", [5.0, 1.5, float("nan")])
def test_bad_label_names_file_and_key(tmp_path, make_jpeg, label):
    with IndexedRecordWriter(tmp_path / "train.idx", tmp_path / "train.rec") as w:  # no header record
        w.write(0, pack(IRHeader(0, 0.0, 0, 0), make_jpeg(0)))
        w.write(1, pack(IRHeader(0, label, 1, 0), make_jpeg(1)))
    write_property(tmp_path, 3, 112, 112)
    ds = RecordFaceDataset(tmp_path)
    assert len(ds) == 2 and not ds.has_header and ds[0][1] == 0
    with pytest.raises(DataFormatError, match=r"train\.rec \(key 1\): label .* is not a class id in \[0, 3\)"):
        ds[1]


def test_property_disagreeing_with_header(tmp_path, make_train_dir):
    d = make_train_dir(tmp_path)
    write_property(d, 5, 112, 112)
    with pytest.raises(DataFormatError, match=r"property: says 5 classes but the header record .* says 3"):
        RecordFaceDataset(d)


def test_missing_property(tmp_path, make_train_dir):
    d = make_train_dir(tmp_path)
    (d / "property").unlink()
    with pytest.raises(DataFormatError, match="property file not found"):
        RecordFaceDataset(d)


# ---------------------------------------------------------------------------------------------------------
# sampler


def _epoch(sampler):
    return list(iter(sampler))


def test_sampler_partitions_the_permutation_of_the_epoch():
    n, reps = 10, 3
    samplers = [ResumableDistributedSampler(n, reps, r, seed=5) for r in range(reps)]
    for s in samplers:
        s.set_epoch(2)
    g = torch.Generator()
    from gbcosface.data.train_set import _epoch_seed

    g.manual_seed(_epoch_seed(5, 2))
    perm = torch.randperm(n, generator=g).tolist()
    padded = perm + perm[:2]  # 12 = 4 per rank
    for r, s in enumerate(samplers):
        assert _epoch(s) == padded[r::reps] and len(s) == 4
    # another epoch gives another order, the same epoch the same order
    other = ResumableDistributedSampler(n, reps, 0, seed=5)
    other.set_epoch(3)
    assert _epoch(other) != _epoch(samplers[0])
    again = ResumableDistributedSampler(n, reps, 0, seed=5)
    again.set_epoch(2)
    assert _epoch(again) == _epoch(samplers[0])


def test_sampler_drop_last_and_no_shuffle():
    s = ResumableDistributedSampler(10, 3, 1, shuffle=False, drop_last=True)
    assert _epoch(s) == [1, 4, 7] and len(s) == 3


def test_sampler_resume_exact_same_world_size():
    full = ResumableDistributedSampler(103, 4, 2, seed=1)
    full.set_epoch(1)
    reference = _epoch(full)
    s = ResumableDistributedSampler(103, 4, 2, seed=1)
    s.set_epoch(1)
    it = iter(s)
    fetched = [next(it) for _ in range(24)]  # the loader prefetched three batches of 8 ...
    s.advance(8)
    s.advance(8)  # ... but the trainer consumed only two before the checkpoint
    state = s.state_dict()
    assert state["epoch"] == 1 and state["position"] == 16 and state["seed"] == 1
    assert state["global_position"] == 64
    resumed = ResumableDistributedSampler(103, 4, 2, seed=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the trainer re-announces the epoch: position is kept
    assert fetched == reference[:24]
    assert _epoch(resumed) == reference[16:] and len(resumed) == len(reference) - 16
    resumed.set_epoch(2)
    assert resumed.position == 0 and len(resumed) == 26


def test_sampler_resume_with_other_world_size_continues_global_order():
    n = 50
    old = [ResumableDistributedSampler(n, 2, r, seed=9) for r in range(2)]
    seen = set()
    for s in old:
        seen.update(_epoch(s)[:6])
        s.advance(6)
    state = old[0].state_dict()
    assert state["global_position"] == 12
    new = [ResumableDistributedSampler(n, 3, r, seed=9) for r in range(3)]
    rest = []
    for s in new:
        s.load_state_dict(state)
        rest += _epoch(s)
    perm = old[0].epoch_order().tolist()
    assert set(rest) == set(perm[12:])  # the remaining samples, padded to 39 = 3 x 13
    assert len(rest) == 39 and len(new[0]) == 13
    assert seen == set(perm[:12]) and not seen & set(perm[12:])


def test_sampler_refuses_state_of_another_order():
    s = ResumableDistributedSampler(10, seed=1)
    with pytest.raises(ValueError, match="seed"):
        s.load_state_dict(ResumableDistributedSampler(10, seed=2).state_dict())


# ---------------------------------------------------------------------------------------------------------
# loader and batch preparation


def test_loader_with_workers_matches_no_workers(tmp_path, make_train_dir):
    ds = RecordFaceDataset(make_train_dir(tmp_path, images_per_class=(4, 4, 4)))
    out = {}
    for workers in (0, 2):
        s = ResumableDistributedSampler(len(ds), seed=3)
        loader = build_train_loader(ds, s, batch_size=4, num_workers=workers)
        assert loader.drop_last and loader.persistent_workers == (workers > 0)
        batches = list(loader)
        assert len(batches) == 3 and batches[0][0].shape == (4, 3, 112, 112)
        out[workers] = batches
    for (xa, ya), (xb, yb) in zip(out[0], out[2], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_ring_slots_are_reused_without_corrupting_kept_batches(tmp_path, make_train_dir):
    """Two workers, prefetch 1 (ring of 2 slots each), 2 epochs of 10 batches: every slot is rewritten
    many times while the test keeps every batch it got; each must still equal an independent decode.
    """
    ds = RecordFaceDataset(make_train_dir(tmp_path, images_per_class=(7, 6, 7)))
    sampler = ResumableDistributedSampler(len(ds), seed=4)
    loader = build_train_loader(ds, sampler, batch_size=2, num_workers=2, prefetch_factor=1)
    assert loader.ring is not None and tuple(loader.ring.shape[:3]) == (2, 2, 2)
    kept, expected = [], []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = list(iter(sampler))
        for b, (images, labels) in enumerate(loader):
            kept.append((images, labels))
            expected.append([ds[i] for i in order[2 * b : 2 * b + 2]])
    assert len(kept) == 20
    for (images, labels), ref in zip(kept, expected, strict=True):
        assert torch.equal(images, torch.stack([im for im, _ in ref]))
        assert labels.tolist() == [y for _, y in ref]


def test_prepare_batch_flip_and_normalisation():
    x = torch.randint(0, 256, (16, 3, 4, 5), dtype=torch.uint8)
    y = prepare_batch(x, "cpu", step=7, seed=11, random_flip=True, channels_last=True)
    mask = flip_mask(16, 7, 11)
    assert 0 < int(mask.sum()) < 16
    expected = x.clone().numpy().astype(np.float32)
    expected[mask.numpy()] = expected[mask.numpy()][..., ::-1]
    expected = (expected / 255.0 - 0.5) / 0.5
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=1e-6)
    # a pure function of (seed, step): the same call gives the same flips, another step others
    assert torch.equal(prepare_batch(x, "cpu", 7, 11, True, False), y)
    assert not torch.equal(flip_mask(16, 8, 11), mask)
    no_flip = prepare_batch(x, "cpu", 7, 11, random_flip=False, channels_last=False)
    np.testing.assert_allclose(no_flip.numpy(), (x.numpy() / 255.0 - 0.5) / 0.5, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        prepare_batch(x.float(), "cpu", 0, 0)

"""The synthetic face renderer: identities, nuisance, geometry of aligned images and loose crops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gbcosface.data.align import ARCFACE_TEMPLATE, align_face, similarity_transform
from gbcosface.data.synthetic.identity import NUM_PARAMS, PARAM_NAMES, drifted, make_identity
from gbcosface.data.synthetic.nuisance import PROFILES, Nuisance, sample_nuisance
from gbcosface.data.synthetic.render import (
    CANVAS,
    crop_transform,
    encode_jpeg,
    posed_landmarks,
    render_aligned,
    render_crop,
)

TEMPLATE = ARCFACE_TEMPLATE.astype(np.float64)


def test_identity_table_has_about_sixty_named_parameters():
    assert 55 <= NUM_PARAMS <= 70
    assert len(set(PARAM_NAMES)) == NUM_PARAMS


def test_identity_is_a_function_of_seed_and_index():
    a, b = make_identity(3, 17, 1.0), make_identity(3, 17, 1.0)
    assert np.array_equal(a.latent, b.latent) and a.texture_seed == b.texture_seed
    assert a.fingerprint() != make_identity(3, 18, 1.0).fingerprint()
    assert a.fingerprint() != make_identity(4, 17, 1.0).fingerprint()


def test_spread_pulls_identities_toward_the_average_face():
    def mean_distance(spread: float) -> float:
        lat = np.stack([make_identity(0, i, spread).latent for i in range(40)])
        return float(np.linalg.norm(lat[:, None] - lat[None], axis=-1).mean())

    assert mean_distance(0.3) == pytest.approx(0.3 * mean_distance(1.0), rel=1e-9)
    with pytest.raises(ValueError):
        make_identity(0, 0, 0.0)


def test_drift_keeps_texture_and_changes_appearance():
    ident = make_identity(0, 5, 1.0)
    d = drifted(ident, np.random.default_rng(1), 1.0)
    assert d.texture_seed == ident.texture_seed and d.index == ident.index
    assert not np.array_equal(d.latent, ident.latent)
    assert drifted(ident, np.random.default_rng(1), 0.0) is ident


def test_nuisance_scale_zero_is_a_studio_photo_and_larger_scales_are_harsher():
    calm = sample_nuisance(np.random.default_rng(0), PROFILES["train"], 0.0)
    assert calm.yaw == 0.0 and calm.blur == 0.0 and calm.noise == 0.0 and calm.occlusion == 0
    assert calm.jpeg == PROFILES["train"].jpeg[1]

    def mean_abs_yaw(scale: float) -> float:
        rng = np.random.default_rng(0)
        return float(np.mean([abs(sample_nuisance(rng, PROFILES["train"], scale).yaw) for _ in range(300)]))

    assert mean_abs_yaw(1.5) > 1.3 * mean_abs_yaw(0.7)


def test_profile_views_are_strongly_turned():
    rng = np.random.default_rng(0)
    yaws = [abs(sample_nuisance(rng, PROFILES["cfp_profile"], 1.0).yaw) for _ in range(50)]
    assert min(yaws) >= PROFILES["cfp_profile"].yaw_min


def test_rendering_is_deterministic_and_depends_on_identity_and_nuisance():
    ident = make_identity(0, 1, 1.0)
    nz = sample_nuisance(np.random.default_rng(7), PROFILES["train"], 1.0)
    a, lm_a = render_aligned(ident, nz)
    b, lm_b = render_aligned(ident, nz)
    assert a.shape == (112, 112, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(lm_a, lm_b)
    assert encode_jpeg(a, 80) == encode_jpeg(b, 80)
    other, _ = render_aligned(make_identity(0, 2, 1.0), nz)
    assert np.abs(other.astype(int) - a).mean() > 5
    nz2 = sample_nuisance(np.random.default_rng(8), PROFILES["train"], 1.0)
    assert not np.array_equal(render_aligned(ident, nz2)[0], a)


def test_aligned_landmarks_sit_near_the_template():
    """Aligned images carry the posed landmarks within alignment error and yaw distortion of the template."""
    ident = make_identity(0, 3, 1.0)
    img, lm = render_aligned(ident, Nuisance())
    assert np.abs(lm - TEMPLATE).max() < 3.5  # frontal: only identity shape moves the points
    turned = dataclasses.replace(Nuisance(), yaw=40.0)
    _, lm_turned = render_aligned(ident, turned)
    residual = np.abs(lm_turned - TEMPLATE).max()
    assert 2.0 < residual < 15.0  # yaw is not a similarity: alignment cannot undo it


def test_yaw_moves_the_nose_more_than_the_eyes():
    ident = make_identity(0, 4, 1.0)
    front = posed_landmarks(ident, Nuisance())
    turned = posed_landmarks(ident, dataclasses.replace(Nuisance(), yaw=30.0))
    # relative to the eye midpoint the nose tip shifts toward the turn, and the eyes come closer together
    nose_shift = (turned[2, 0] - turned[:2, 0].mean()) - (front[2, 0] - front[:2, 0].mean())
    assert nose_shift > 2.0
    assert (turned[1, 0] - turned[0, 0]) < 0.95 * (front[1, 0] - front[0, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_landmarks_align_the_face_onto_the_template(seed):
    """A loose crop aligned with its landmarks reproduces the aligned rendering of the same photo.

    This checks that the landmarks written for a crop are where the face really is: aligning with
    landmarks from another placement must fail the same comparison.
    """
    rng = np.random.default_rng(seed)
    ident = make_identity(seed, 10, 1.0)
    nz = Nuisance(yaw=float(rng.uniform(-20, 20)), background=(90.0, 120.0, 150.0))
    w, h = (int(v) for v in rng.integers(150, 251, 2))
    m, scale = crop_transform(rng, w, h, roll_deg=float(rng.uniform(-30, 30)), scale_range=(1.0, 1.8))
    crop, lm = render_crop(ident, nz, m, w, h)
    assert crop.shape == (h, w, 3)
    assert (lm >= 0).all() and (lm[:, 0] < w).all() and (lm[:, 1] < h).all()
    aligned_from_crop = align_face(crop, lm).astype(np.float64)  # RGB
    direct, _ = render_aligned(ident, nz)
    direct = direct[:, :, ::-1].astype(np.float64)
    inner = (slice(16, 112), slice(16, 96))  # the face
    err = np.abs(aligned_from_crop[inner] - direct[inner]).mean()
    assert err < 8.0
    # the landmarks of the crop go to the template (up to the yaw distortion that alignment cannot remove)
    s = similarity_transform(lm, TEMPLATE)
    assert np.abs(lm @ s[:, :2].T + s[:, 2] - TEMPLATE).max() < 6.0
    # negative control: landmarks shifted by 12 px do not reproduce the face
    wrong = align_face(crop, lm + [12.0, 0.0]).astype(np.float64)
    assert np.abs(wrong[inner] - direct[inner]).mean() > 2 * err


def test_crop_is_scene_not_border_even_when_the_face_is_small():
    ident = make_identity(0, 11, 1.0)
    nz = Nuisance(background=(200.0, 40.0, 40.0), background2=(200.0, 40.0, 40.0))
    rng = np.random.default_rng(0)
    m, scale = crop_transform(rng, 250, 250, roll_deg=20.0, scale_range=(0.75, 0.75))
    assert scale == 0.75
    crop, _ = render_crop(ident, nz, m, 250, 250)
    # the corners of a 250-px crop of a 0.75x face lie far outside the 144-px canvas: they show the scene
    assert CANVAS * 0.75 < 250
    assert np.abs(crop[:4, :4].astype(int) - [200, 40, 40]).max() < 30


@pytest.mark.parametrize("seed", range(6))
def test_the_aligned_face_square_fits_inside_every_crop(seed):
    """A loose crop contains the whole aligned face, so alignment never pads with black."""
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(150, 251, 2))
    roll = float(rng.uniform(-35, 35))
    m, scale = crop_transform(rng, w, h, roll)
    assert 0.05 < scale <= 1.9
    ident = make_identity(0, seed, 1.0)
    crop, lm = render_crop(ident, Nuisance(), m, w, h)
    s = similarity_transform(lm, TEMPLATE)
    inv = np.linalg.inv(np.vstack([s, [0, 0, 1]]))[:2]
    corners = np.array([[0, 0], [112, 0], [0, 112], [112, 112]], np.float64) @ inv[:, :2].T + inv[:, 2]
    assert (corners > -3).all() and (corners[:, 0] < w + 3).all() and (corners[:, 1] < h + 3).all()

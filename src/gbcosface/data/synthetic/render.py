"""Drawing a face-like image with cv2 around the 5 canonical landmarks.

Why this shape: the face is drawn once on a small canonical canvas (the ArcFace template plus a
margin), where every feature sits at its landmark, moved by a simple cylinder model of yaw and
pitch (so that a turned head changes the 5 landmarks the way a real one does, not by a similarity).
One affine warp then places the canvas anywhere: onto the template (the aligned training images and
.bin sets, with an alignment error) or at a random position, scale and rotation inside a loose crop
(the IJB-like images), whose landmarks are the warped canvas landmarks. Photometric nuisance
(light, colour cast, occlusion, blur, noise, JPEG) is applied after the warp, in image coordinates.
Every random choice comes from the identity and the Nuisance record: rendering is deterministic.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from gbcosface.data.synthetic.identity import Identity
from gbcosface.data.synthetic.nuisance import Nuisance

CANVAS = 144  # canonical canvas side, px: room for the side of a turned head
OFFSET = 16.0  # the 112-px template sits at this offset inside the canvas
CX = OFFSET + 56.0  # the face's vertical axis on the canvas
_SHIFT = 4  # cv2 fractional bits: sub-pixel drawing
_ONE = float(1 << _SHIFT)


def template() -> np.ndarray:
    """The ArcFace 112x112 5-point template (float64, (5, 2)), from the project's align module."""
    from gbcosface.data.align import ARCFACE_TEMPLATE

    return np.asarray(ARCFACE_TEMPLATE, dtype=np.float64).reshape(5, 2)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    from gbcosface.data.align import similarity_transform

    return np.asarray(similarity_transform(src, dst), dtype=np.float64)


# ----------------------------------------------------------------------------- colours
def _lerp_palette(palette: np.ndarray, t: float) -> np.ndarray:
    t = min(max(t, 0.0), 1.0) * (len(palette) - 1)
    i = min(int(t), len(palette) - 2)
    f = t - i
    return palette[i] * (1 - f) + palette[i + 1] * f


_SKIN = np.array([[45, 62, 95], [70, 100, 150], [105, 145, 195], [140, 180, 225], [175, 205, 240]], float)
_HAIR = np.array([[18, 18, 22], [28, 40, 62], [40, 68, 110], [38, 62, 150], [95, 155, 205],
                  [150, 150, 155]], float)
_IRIS = np.array([[25, 50, 85], [45, 100, 115], [70, 125, 80], [160, 115, 65], [125, 125, 118]], float)
_FRAME = np.array([[20, 20, 20], [40, 60, 110], [50, 120, 170], [170, 170, 175], [60, 30, 120]], float)


def _col(c) -> tuple[float, float, float]:
    r, g, b = (min(255.0, max(0.0, float(v))) for v in c)
    return (r, g, b)


class _Colours:
    """Colours of one identity (BGR floats)."""

    def __init__(self, ident: Identity):
        skin = _lerp_palette(_SKIN, ident["skin_l"]) + ident["skin_hue"] * np.array([-14.0, 3.0, 9.0])
        gray = skin.mean()
        self.skin = np.clip(gray + ident["skin_sat"] * (skin - gray), 0, 255)
        age = ident["age"]
        hair = _lerp_palette(_HAIR, ident["hair_hue"]) * (0.75 + 0.5 * ident["hair_l"])
        grey = np.array([165.0, 165.0, 170.0])
        self.hair = hair + (grey - hair) * max(0.0, age - 0.6) * 1.6
        self.brow = self.hair * (1.0 - 0.55 * ident["brow_dark"]) + 8
        self.beard = self.hair * (0.6 + 0.6 * ident["beard_l"])
        self.iris = _lerp_palette(_IRIS, ident["iris_hue"]) * (0.6 + 0.8 * ident["iris_l"])
        lip_target = np.array([70.0, 60.0, 165.0]) + ident["lip_hue"] * np.array([20.0, -25.0, 30.0])
        self.lip = self.skin * (0.55 + 0.2 * ident["lip_l"]) + lip_target * (0.35 - 0.1 * ident["lip_l"])
        self.frame = _lerp_palette(_FRAME, ident["frame_hue"]) * (0.7 + 0.6 * ident["frame_l"])
        self.mark = np.array([40.0, 60.0, 95.0]) * (0.6 + 0.5 * ident["mark_hue"])


# ----------------------------------------------------------------------------- geometry
class _Pose:
    """A cylinder model of head rotation on the canvas.

    A point at horizontal offset x from the head axis lies at angle asin(x / R) on a cylinder;
    yaw adds to that angle, and a feature standing out by dz (the nose tip) moves by dz * sin(yaw).
    Pitch works the same way vertically. Points past the limb stay on it.
    """

    def __init__(self, yaw_deg: float, pitch_deg: float, cx: float = CX, cy: float = OFFSET + 72.0):
        self.yaw = math.radians(yaw_deg)
        self.pitch = math.radians(pitch_deg)
        self.cx, self.cy = cx, cy
        self.r, self.rp = 46.0, 64.0
        self.tx = self.ty = 0.0  # output shift that keeps the landmarks centred on the canvas

    def centred(self, lm_canonical: np.ndarray) -> _Pose:
        """Shift the output so that the posed landmarks keep their canonical centroid.

        Why: alignment centres the features, so a turned head moves sideways in the image instead
        of its features leaving the canvas.
        """
        posed = _posed(self, lm_canonical)
        self.tx, self.ty = lm_canonical.mean(axis=0) - posed.mean(axis=0)
        return self

    def copy(self, r: float) -> _Pose:
        other = _Pose(math.degrees(self.yaw), math.degrees(self.pitch), self.cx, self.cy)
        other.r, other.tx, other.ty = r, self.tx, self.ty
        return other

    def __call__(self, pts: np.ndarray, dz: float = 0.0) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        q = (pts - (self.cx, self.cy)) / (self.r, self.rp)
        ang = np.arcsin(np.minimum(np.maximum(q, -1.0), 1.0)) + (self.yaw, self.pitch)
        ang = np.minimum(np.maximum(ang, -math.pi / 2), math.pi / 2)
        return (np.sin(ang) * (self.r, self.rp) + (self.cx + self.tx + dz * math.sin(self.yaw),
                                                  self.cy + self.ty + dz * math.sin(self.pitch)))

    def sx(self, x: float) -> float:
        """Horizontal foreshortening of a small feature at canonical canvas x."""
        a = math.asin(min(max((x - self.cx) / self.r, -0.99), 0.99))
        return max(0.08, math.cos(a + self.yaw) / math.cos(a))

    def visible(self, x: float, margin: float = 0.0) -> bool:
        """Whether canonical canvas x is on the visible side of the head."""
        a = math.asin(min(max((x - self.cx) / self.r, -1.0), 1.0)) + self.yaw
        return abs(a) < math.pi / 2 - margin


def _posed(pose: _Pose, lm: np.ndarray) -> np.ndarray:
    out = np.empty_like(lm)
    out[0:2] = pose(lm[0:2], dz=0.0)
    out[2] = pose(lm[2:3], dz=14.0)
    out[3:5] = pose(lm[3:5], dz=4.0)
    return out


# Where canvas (0, 0) lies in the image being drawn: draw_canvas may draw a region larger than the
# canvas (a loose crop needs the scene around the face), and every point goes through _fx.
_ORIGIN = np.zeros(2)


def _fx(p: np.ndarray) -> np.ndarray:
    return np.round((np.asarray(p, dtype=np.float64).reshape(-1, 2) + _ORIGIN) * _ONE).astype(np.int32)


def _poly(img: np.ndarray, pts: np.ndarray, color, aa: bool = True) -> None:
    cv2.fillPoly(img, [_fx(pts)], _col(np.asarray(color)), cv2.LINE_AA if aa else cv2.LINE_8, _SHIFT)


def _line(img: np.ndarray, pts: np.ndarray, color, thickness: int = 1) -> None:
    cv2.polylines(img, [_fx(pts)], False, _col(np.asarray(color)), max(1, int(thickness)), cv2.LINE_AA,
                  _SHIFT)


def _ellipse(img, center, axes, angle, color, thickness: int = -1) -> None:
    c = _fx(center)[0]
    ax = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(img, (int(c[0]), int(c[1])), ax, float(angle), 0.0, 360.0, _col(np.asarray(color)),
                thickness, cv2.LINE_AA, _SHIFT)


def _blend(img: np.ndarray, overlay: np.ndarray, alpha: float) -> None:
    cv2.addWeighted(overlay, float(alpha), img, 1.0 - float(alpha), 0.0, dst=img)


def _arc(cx: float, cy: float, ax: float, ay: float, t0: float, t1: float, n: int) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


# ----------------------------------------------------------------------------- identity assets
@lru_cache(maxsize=64)
def _skin_image(size: int, texture_seed: int, skin: tuple, tex_strength: float, freckles: float, moles: int,
                mark: tuple) -> np.ndarray:
    """The identity's textured skin (canvas-sized, uint8): low-frequency blotches, pores, freckles, moles.

    Why per identity: marks and texture are stable cues of who someone is, as in real faces.
    """
    rng = np.random.default_rng(texture_seed)
    d = OFFSET - 8.0  # marks were laid out for a 128-px canvas
    low = cv2.resize(rng.normal(0.0, 1.0, (6, 6)).astype(np.float32), (size, size),
                     interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), 0.8)
    shade = 1.0 + (0.07 * low + 0.05 * fine) * tex_strength
    img = np.clip(np.asarray(skin, np.float32)[None, None, :] * shade[:, :, None], 0, 255).astype(np.uint8)
    dark = np.asarray(skin) * 0.72
    for _ in range(int(30 * freckles * freckles)):
        x, y = rng.uniform(36, 92) + d, rng.uniform(64, 96) + d
        _ellipse(img, (x, y), (0.6, 0.6), 0.0, dark)
    mark_pos = rng.uniform([34, 50], [94, 118], (3, 2)) + d
    for i in range(moles):
        r = rng.uniform(0.8, 1.8)
        _ellipse(img, mark_pos[i], (r, r), 0.0, mark)
    return img


@lru_cache(maxsize=64)
def _speckle(texture_seed: int) -> np.ndarray:
    """A fixed pattern of dots (stubble), uint8 0/1 (CANVAS, CANVAS)."""
    rng = np.random.default_rng(texture_seed + 17)
    return (rng.random((CANVAS, CANVAS)) < 0.35).astype(np.uint8)


def _pad_to(img: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """A canvas-sized array extended (edge-replicated) to `region` (x0, y0, x1, y1) in canvas coords."""
    x0, y0, x1, y1 = region
    if (x0, y0, x1, y1) == (0, 0, CANVAS, CANVAS):
        return img
    return cv2.copyMakeBorder(img, -y0, y1 - CANVAS, -x0, x1 - CANVAS, cv2.BORDER_REPLICATE)


# ----------------------------------------------------------------------------- landmarks
def canonical_landmarks(ident: Identity, nz: Nuisance) -> np.ndarray:
    """The 5 landmarks on the canvas before pose: the template moved by identity shape and expression."""
    lm = template() + OFFSET
    eye_dx = 1.5 * ident["eye_dx"]
    lm[0, 0] -= eye_dx
    lm[1, 0] += eye_dx
    lm[2, 1] += 2.0 * ident["nose_dy"]
    mouth_c = lm[3:5].mean(axis=0)
    half_w = 0.5 * (lm[4, 0] - lm[3, 0]) * ident["lip_w"] * (1.0 + 0.08 * nz.smile)
    mouth_y = mouth_c[1] + 2.0 * ident["mouth_dy"] + 0.8 * nz.mouth_open
    lm[3] = (mouth_c[0] - half_w, mouth_y - 1.5 * nz.smile)
    lm[4] = (mouth_c[0] + half_w, mouth_y - 1.5 * nz.smile)
    return lm


def posed_landmarks(ident: Identity, nz: Nuisance) -> np.ndarray:
    """The 5 landmarks on the canvas as drawn (after yaw and pitch)."""
    lm = canonical_landmarks(ident, nz)
    return _posed(_Pose(nz.yaw, nz.pitch).centred(lm), lm)


# ----------------------------------------------------------------------------- drawing
def draw_canvas(ident: Identity, nz: Nuisance, region: tuple[int, int, int, int] | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Draw the face on the canonical canvas; returns (BGR uint8 image, landmarks (5, 2) in canvas coords).

    `region` (x0, y0, x1, y1), canvas coordinates containing the canvas, is the part of the scene to
    draw (default: the canvas); image pixel (0, 0) is canvas (x0, y0).
    """
    global _ORIGIN
    region = region or (0, 0, CANVAS, CANVAS)
    if region[0] > 0 or region[1] > 0 or region[2] < CANVAS or region[3] < CANVAS:
        raise ValueError(f"region {region} must contain the canvas (0, 0, {CANVAS}, {CANVAS})")
    _ORIGIN = np.array([-region[0], -region[1]], np.float64)
    try:
        return _draw(ident, nz, region)
    finally:
        _ORIGIN = np.zeros(2)


def _draw(ident: Identity, nz: Nuisance, region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    col = _Colours(ident)
    rng = np.random.default_rng(nz.detail_seed)
    img = _background(nz, rng, region)
    bottom = region[3] + 4.0
    lm_c = canonical_landmarks(ident, nz)
    pose = _Pose(nz.yaw, nz.pitch).centred(lm_c)
    lm = _posed(pose, lm_c)

    age = ident["age"]
    # head-fixed parts (silhouette, neck, hair) follow the centring shift; facial parts go through pose
    fcx, fcy = CX + pose.tx, OFFSET + 62.0 + ident["face_dy"] + pose.ty
    fa = 37.0 * ident["face_w"] * (1.0 + 0.03 * age)
    fb_top = 44.0 * ident["forehead_h"]
    fb_bot = 48.0 * ident["face_h"]
    style = int(ident["hair_style"])
    sy = math.sin(pose.yaw)

    # long hair falls behind the head and shoulders
    if style == 4:
        hl = 30.0 + 70.0 * ident["hair_length"]
        w = fa + 8.0 + 10.0 * ident["hair_volume"]
        pts = np.array([[fcx - w, fcy - 10], [fcx - w - 4, fcy + hl], [fcx + w + 4, fcy + hl],
                        [fcx + w, fcy - 10]]) + [-8.0 * sy, 0]
        _poly(img, pts, col.hair * 0.85)

    # neck and clothes
    nw = fa * ident["neck_w"]
    _poly(img, np.array([[fcx - nw, fcy + 20], [fcx + nw, fcy + 20], [fcx + nw + 2, bottom],
                         [fcx - nw - 2, bottom]]) + [-6.0 * sy, 0], col.skin * 0.72)
    _poly(img, np.array([[fcx - 90, bottom], [fcx - 55, fcy + fb_bot + 4], [fcx - nw, fcy + fb_bot + 2],
                         [fcx, fcy + fb_bot + 10], [fcx + nw, fcy + fb_bot + 2],
                         [fcx + 55, fcy + fb_bot + 4], [fcx + 90, bottom]]), np.asarray(nz.clothing))

    # head silhouette (side of the head shows when turned), then the visible ear(s)
    _ellipse(img, (fcx - 7.0 * sy, fcy - 2.0), (fa * 1.03, fb_top + 2.0), 0.0, col.skin * 0.82)
    ear_y = 0.5 * (lm_c[0, 1] + lm_c[2, 1]) + 3.0 * ident["ear_dy"]
    for side in (-1.0, 1.0):
        ang = side * math.radians(80.0) + pose.yaw
        if abs(ang) > math.radians(96.0):
            continue
        ex = fcx + (fa * 1.05) * math.sin(min(max(ang, -math.pi / 2), math.pi / 2))
        ew = 5.0 * ident["ear_size"] * (0.55 + 1.1 * max(0.0, -side * sy))
        eh = 11.0 * ident["ear_size"]
        _ellipse(img, (ex, ear_y), (ew, eh), side * 8.0, col.skin * 0.78)
        _ellipse(img, (ex, ear_y), (ew * 0.45, eh * 0.6), side * 8.0, col.skin * 0.6)

    # the face: a superellipse lower half, elliptic upper half, projected by pose
    n = ident["chin_sharp"]
    t_up = np.linspace(math.pi, 2 * math.pi, 15)[:-1]
    up = np.stack([fcx + fa * np.cos(t_up), fcy + fb_top * np.sin(t_up)], axis=1)
    t_lo = np.linspace(0.0, math.pi, 17)[:-1]
    c, s = np.cos(t_lo), np.sin(t_lo)
    jaw = ident["jaw_w"]
    narrow = jaw + (1.0 - jaw) * (1.0 - s**1.5)
    cheek = 1.0 + 0.05 * (ident["cheek"] + age) * np.sin(np.pi * s)
    lo = np.stack([fcx + fa * np.sign(c) * np.abs(c) ** (2.0 / n) * narrow * cheek,
                   fcy + fb_bot * s ** (2.0 / n)], axis=1)
    outline = np.concatenate([lo, up], axis=0)
    outline[:, 0] -= pose.tx
    outline[:, 1] -= pose.ty
    outline_p = pose.copy(r=fa * 1.12)(outline)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_fx(outline_p)], 255, cv2.LINE_8, _SHIFT)
    skin_img = _skin_image(CANVAS, ident.texture_seed, tuple(np.round(col.skin, 3)), round(ident["tex_strength"], 4),
                           round(ident["freckles"], 4), int(ident["moles"]), tuple(col.mark))
    cv2.copyTo(_pad_to(skin_img, region), mask, img)

    _blush_and_wrinkles(img, ident, col, pose, lm, lm_c)
    _beard(img, ident, col, lm, outline_p, region)
    _nose(img, ident, col, pose, lm, lm_c)
    _mouth(img, ident, nz, col, lm)
    _eyes(img, ident, nz, col, pose, lm)
    _brows(img, ident, nz, col, pose, lm_c)
    _hair(img, ident, col, pose, fcx, fcy, fa, fb_top, lm_c, style, rng)
    if int(ident["glasses"]) >= 4 and not nz.glasses_off:
        _glasses(img, ident, col, pose, lm)
    if nz.occlusion:
        _occlude(img, nz)
    return img, lm


def _background(nz: Nuisance, rng: np.random.Generator, region: tuple[int, int, int, int]) -> np.ndarray:
    """A vertical two-colour gradient with a little clutter, covering `region`."""
    x0, y0, x1, y1 = region
    ends = np.array([[nz.background], [nz.background2]], np.float32)  # (2, 1, 3)
    img = cv2.resize(ends, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    bg = np.asarray(nz.background)
    for _ in range(int(rng.integers(0, 4))):  # clutter
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        w, h = rng.uniform(6, 40, 2)
        colour = np.clip(bg + rng.normal(0, 35, 3), 0, 255)
        if rng.random() < 0.5:
            _poly(img, np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]), colour, aa=False)
        else:
            _ellipse(img, (x, y), (w / 2, h / 2), 0.0, colour)
    return img


def _blush_and_wrinkles(img, ident, col, pose, lm, lm_c) -> None:
    blush = ident["blush"]
    if blush > 0.35:
        over = img.copy()
        for i, side in ((0, -1.0), (1, 1.0)):
            cx = lm_c[i, 0] + side * 4.0
            if pose.visible(cx):
                p = pose(np.array([[cx, lm_c[2, 1] + 2.0]]))[0]
                _ellipse(over, p, (7.0 * pose.sx(cx), 5.0), 0.0, col.skin * 0.8 + np.array([10, 10, 60]))
        _blend(img, over, 0.35 * (blush - 0.35))
    w = ident["wrinkles"] * (0.4 + ident["age"])
    if w > 0.5:
        dark = col.skin * 0.78
        for k in range(1 + int(2 * (w - 0.5))):
            y = lm_c[0, 1] - 24.0 - 3.0 * k
            _line(img, pose(_arc(CX, y + 8, 13.0, 8.0, math.pi * 1.2, math.pi * 1.8, 7)), dark)
        for i, side in ((3, -1.0), (4, 1.0)):  # nasolabial folds
            a = lm_c[2] + [side * 8.0, 2.0]
            b = lm_c[i] + [side * 3.0, -2.0]
            if pose.visible(a[0]):
                _line(img, pose(np.stack([a, (a + b) / 2 + [side * 2.5, 0], b])), dark)


def _beard(img, ident, col, lm, outline_p, area) -> None:
    kind = int(ident["beard"])
    if kind not in (2, 3, 4, 5):
        return
    density = ident["beard_density"]
    length = ident["beard_len"]
    mouth = lm[3:5]
    over = img.copy()
    colour = col.beard
    if kind in (2, 5):  # stubble or full: the lower face below the cheekbones
        lower = outline_p[outline_p[:, 1] > lm[2, 1] - 2.0]
        chin_ext = np.array([[lower[:, 0].mean(), lower[:, 1].max() + 4.0 * length * (kind == 5)]])
        pts = np.concatenate([lower[lower[:, 0].argsort()], chin_ext])
        pts = pts[np.argsort(np.arctan2(pts[:, 1] - lm[2, 1], pts[:, 0] - lm[2, 0]))]
        region = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(region, [_fx(pts)], 255, cv2.LINE_8, _SHIFT)  # the beard's area
        # keep the lips and a band under the nose free of hair for full beards only at the lips
        if kind == 2:
            mask = cv2.bitwise_and(region, _pad_to(_speckle(ident.texture_seed), area) * 255)
            over[mask > 0] = _col(colour)
            _blend(img, over, 0.25 + 0.3 * density)
            return
        over[region > 0] = _col(colour)
    if kind in (3, 5):  # moustache
        nose = lm[2]
        pts = np.array([mouth[0] + [-2.0, -1.0], nose + [-6.0, 5.0], nose + [6.0, 5.0], mouth[1] + [2.0, -1.0],
                        (mouth[0] + mouth[1]) / 2 + [0.0, -1.5]])
        _poly(over, pts, colour)
    if kind == 4:  # goatee around the mouth and chin
        mc = mouth.mean(axis=0)
        pts = np.array([mouth[0] + [-2.0, -2.0], mouth[0] + [-1.0, 8.0 + 6 * length], mc + [0.0, 16.0 + 6 * length],
                        mouth[1] + [1.0, 8.0 + 6 * length], mouth[1] + [2.0, -2.0], mc + [0.0, -5.0]])
        _poly(over, pts, colour)
    _blend(img, over, 0.45 + 0.5 * density)


def _nose(img, ident, col, pose, lm, lm_c) -> None:
    tip = lm[2]
    nw = 4.5 * ident["nose_w"]
    top = lm_c[2] + [0.0, -16.0 * ident["nose_len"]]
    bridge = pose(np.stack([top, lm_c[2] + [0.0, -6.0]]), dz=8.0)
    shade = col.skin * (0.9 - 0.2 * ident["bridge"])
    _line(img, np.concatenate([bridge, tip[None] + [0.0, -1.0]]), shade)
    sx = pose.sx(tip[0])
    for side in (-1.0, 1.0):
        wing = tip + [side * nw * sx, 1.0]
        _ellipse(img, wing + [0.0, -0.5], (2.2 * sx, 2.6), 0.0, col.skin * 0.84, 1)
        r = 0.8 + 1.2 * ident["nostril"]
        _ellipse(img, tip + [side * (nw - 2.0) * sx, 1.6], (r * sx, 0.8), side * 15.0, col.skin * 0.45)
    _ellipse(img, tip + [0.0, -1.5], (2.0 * sx, 1.6), 0.0, np.minimum(col.skin * 1.1, 255))


def _mouth(img, ident, nz, col, lm) -> None:
    ml, mr = lm[3], lm[4]
    mc = (ml + mr) / 2
    hu = 2.4 * ident["lip_upper"]
    hl = 3.0 * ident["lip_lower"]
    gap = 4.0 * nz.mouth_open
    bow = 1.5 * nz.smile  # the mouth line curves up at the corners when smiling
    w = mr - ml
    mid = mc + [0.0, bow]
    upper = np.array([ml, ml + w * 0.3 + [0.0, -hu + bow * 0.5], mc + [0.0, -hu * 0.7 + bow],
                      ml + w * 0.7 + [0.0, -hu + bow * 0.5], mr, mid + [0.0, -gap * 0.3]])
    lower = np.array([ml, mid + [0.0, gap * 0.7], mr, mr - w * 0.25 + [0.0, hl + gap + bow * 0.4],
                      mc + [0.0, hl * 1.15 + gap + bow], ml + w * 0.25 + [0.0, hl + gap + bow * 0.4]])
    if gap > 0.5:
        inner = np.array([ml, mid + [0.0, -gap * 0.3], mr, mid + [0.0, gap * 0.7]])
        _poly(img, inner, (35, 30, 60))
        teeth = np.array([ml + w * 0.2 + [0.0, bow * 0.6 - gap * 0.25], mr - w * 0.2 + [0.0, bow * 0.6 - gap * 0.25],
                          mr - w * 0.22 + [0.0, bow * 0.6 + gap * 0.15], ml + w * 0.22 + [0.0, bow * 0.6 + gap * 0.15]])
        _poly(img, teeth, (215, 225, 230))
    _poly(img, upper, col.lip * 0.9)
    _poly(img, lower, col.lip)
    _line(img, np.array([ml, mid + [0.0, -gap * 0.3], mr]), col.lip * 0.55)


def _eyes(img, ident, nz, col, pose, lm) -> None:
    close = nz.eye_close
    for i, side in ((0, -1.0), (1, 1.0)):
        e = lm[i]
        if not pose.visible(e[0] + side * 6.0, margin=0.05):
            continue
        sx = pose.sx(e[0])
        w = 9.5 * ident["eye_w"] * sx
        h = 3.7 * ident["eye_h"] * (1.0 - 0.9 * close)
        tilt = -side * 6.0 * ident["eye_tilt"]
        lid = col.skin * 0.55
        if h > 0.9:
            _ellipse(img, e, (w, h), tilt, (228, 232, 236))
            gaze = np.array([3.0 * math.sin(pose.yaw) * sx, 0.0])
            r = 3.3 * ident["iris_size"]
            _ellipse(img, e + gaze, (r * min(1.0, sx + 0.2), min(r, h)), 0.0, col.iris)
            _ellipse(img, e + gaze, (1.2 * sx + 0.2, min(1.2, h)), 0.0, (15, 15, 18))
        th = 1 + int(ident["eyelid"] > 0.6)
        upper = _arc(e[0], e[1], w, h + 0.4, math.pi, 2 * math.pi, 9)
        _line(img, upper, lid * 0.6, th)
        if ident["age"] > 0.7:  # bags under the eyes
            _line(img, _arc(e[0], e[1] + 2.0, w * 0.8, h + 1.5, 0.2, math.pi - 0.2, 7), col.skin * 0.8)


def _brows(img, ident, nz, col, pose, lm_c) -> None:
    for i, side in ((0, -1.0), (1, 1.0)):
        e = lm_c[i]
        length = 22.0 * ident["brow_len"]
        inner = e[0] - side * 8.0
        outer = inner + side * length
        if not pose.visible(0.5 * (inner + outer)):
            continue
        y0 = e[1] - 9.5 * ident["brow_h"] - 2.0 * nz.brow_raise
        t = np.linspace(0.0, 1.0, 7)
        xs = inner + (outer - inner) * t
        arch = 3.0 * ident["brow_arch"] * np.sin(np.pi * t**0.8)
        tilt = 3.0 * ident["brow_tilt"] * t
        thick = 1.0 + 1.6 * ident["brow_thick"] * (1.0 - 0.6 * t)
        top = np.stack([xs, y0 - arch - tilt - thick / 2], axis=1)
        bot = np.stack([xs, y0 - arch - tilt + thick / 2], axis=1)
        pts = pose(np.concatenate([top, bot[::-1]]), dz=2.0)
        _poly(img, pts, col.brow)


def _hair(img, ident, col, pose, fcx, fcy, fa, fb_top, lm_c, style, rng) -> None:
    cx0 = fcx - pose.tx  # canonical axis (pose adds the shift back)
    if style == 0:  # bald: a little hair at the sides
        if ident["hair_volume"] > 0.5:
            for side in (-1.0, 1.0):
                x = cx0 + side * fa * 0.95
                if pose.visible(x):
                    p = pose(np.array([[x, lm_c[0, 1] - 8.0]]))[0]
                    _ellipse(img, p, (3.0, 9.0), 0.0, col.hair)
        return
    vol = 1.0 + 0.12 * ident["hair_volume"] * (style != 1)
    hairline = lm_c[0, 1] - 30.0 + 6.0 * ident["hairline"] + 8.0 * max(0.0, ident["age"] - 0.7)
    side_y = lm_c[0, 1] - 4.0 + 6.0 * (style == 4)
    sy = math.sin(pose.yaw)
    hx = fcx - 7.0 * sy
    # outer arc of the head (drawn as-is: the silhouette barely moves with yaw) ...
    t_out = np.linspace(math.pi * 0.97, math.pi * 2.03, 19)
    outer = np.stack([hx + fa * 1.06 * vol * np.cos(t_out), fcy - 2.0 + (fb_top + 3.0) * vol * np.sin(t_out)],
                     axis=1)
    outer[:, 1] = np.minimum(outer[:, 1], side_y)
    # ... and the hairline across the forehead, which turns with the face
    part = ident["hair_part"] if style == 3 else 0.0
    fringe = ident["fringe"] if style in (2, 3, 5, 6) else 0.0
    xs = np.linspace(cx0 + fa * 0.95, cx0 - fa * 0.95, 11)
    rel = (xs - cx0) / fa
    ys = hairline + 9.0 * rel**2 + 7.0 * part * rel + fringe * 14.0 * (1.0 - rel**2) * (0.6 + 0.4 * rel * np.sign(part + 1e-9))
    ys = np.minimum(ys, lm_c[0, 1] - 12.0)
    inner = pose(np.stack([xs, ys], axis=1), dz=2.0)
    inner = np.concatenate([[[outer[-1, 0], side_y]], inner, [[outer[0, 0], side_y]]])
    cap = np.concatenate([outer, inner])
    colour = col.hair
    if style == 1:  # buzz cut: thin, skin shows through
        over = img.copy()
        _poly(over, cap, colour)
        _blend(img, over, 0.55)
        return
    _poly(img, cap, colour)
    srng = np.random.default_rng(ident.texture_seed + 5)
    for _ in range(6):  # strands
        t = srng.uniform(math.pi * 1.1, math.pi * 1.9)
        p0 = np.array([hx + fa * 0.9 * math.cos(t), fcy - 2.0 + fb_top * 0.95 * math.sin(t)])
        p1 = p0 + srng.normal(0, 6, 2) + [0.0, 8.0]
        _line(img, np.stack([p0, p1]), colour * srng.uniform(0.7, 1.3))
    if style == 5:  # curls along the outline
        for t in np.linspace(math.pi * 1.0, math.pi * 2.0, 12):
            p = [hx + fa * 1.1 * vol * math.cos(t), fcy - 2.0 + (fb_top + 2.0) * vol * math.sin(t)]
            _ellipse(img, p, (5.5, 5.5), 0.0, colour * 0.9)
    if style == 6:  # a bun on top
        _ellipse(img, (hx, fcy - fb_top - 8.0), (10.0, 8.0), 0.0, colour * 0.95)


def _glasses(img, ident, col, pose, lm) -> None:
    kind = int(ident["glasses"])
    size = ident["lens_size"]
    th = 2 if kind == 5 else 1
    centres = []
    for i in (0, 1):
        e = lm[i]
        if not pose.visible(e[0], margin=0.1):
            continue
        sx = pose.sx(e[0])
        w, h = 11.0 * size * sx, 7.5 * size
        c = e + [0.0, 1.0]
        if kind == 6:
            _ellipse(img, c, (w, h * 1.15), 0.0, col.frame, th)
        else:
            box = np.array([c + [-w, -h], c + [w, -h], c + [w * 0.9, h], c + [-w * 0.9, h]])
            cv2.polylines(img, [_fx(box)], True, _col(col.frame), th, cv2.LINE_AA, _SHIFT)
        centres.append((c, w))
    if len(centres) == 2:
        (c0, w0), (c1, w1) = centres
        _line(img, np.stack([c0 + [w0, -2.0], (c0 + c1) / 2 + [0.0, -3.0], c1 + [-w1, -2.0]]), col.frame, th)


# ----------------------------------------------------------------------------- finishing
@lru_cache(maxsize=16)
def _grids(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return (x - w / 2) / (w / 2), (y - h / 2) / (h / 2)


_NOISE_SIDE = 320


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed field of unit gaussian noise; images take windows of it at seeded offsets.

    Why: drawing fresh normals for every pixel was the largest cost per image; a window at a random
    offset (and sign) is as good for a CNN and stays deterministic.
    """
    return np.random.default_rng(20261128).standard_normal((_NOISE_SIDE, _NOISE_SIDE, 3), dtype=np.float32)


def _noise(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if h > _NOISE_SIDE or w > _NOISE_SIDE:
        return rng.standard_normal((h, w, 3), dtype=np.float32)
    y, x = int(rng.integers(0, _NOISE_SIDE - h + 1)), int(rng.integers(0, _NOISE_SIDE - w + 1))
    return _noise_bank()[y:y + h, x:x + w]


def finish(img: np.ndarray, nz: Nuisance, face_scale: float = 1.0) -> np.ndarray:
    """Photometric nuisance in image coordinates: light, colour cast, blur, noise (BGR uint8).

    `face_scale` is the face's size relative to a 112-px aligned face, so that blur is in face units.
    """
    h, w = img.shape[:2]
    gx, gy = _grids(w, h)
    a = math.radians(nz.light_angle)
    gain = (nz.brightness * nz.light * math.cos(a)) * gx + (nz.brightness * nz.light * math.sin(a)) * gy
    gain += np.float32(nz.brightness)
    out = cv2.multiply(img, cv2.merge([gain * np.float32(c) for c in nz.cast]), dtype=cv2.CV_32F)
    if nz.blur > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), nz.blur * face_scale)
    if nz.noise > 0.05:
        out = cv2.scaleAdd(_noise(nz.detail_seed ^ 0x5EED, h, w), float(nz.noise), out)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _occlude(img: np.ndarray, nz: Nuisance) -> None:
    """Draw the occluder on the canvas, in face coordinates (relative to the 112-px template square)."""
    x, y, bw, bh = (OFFSET + 112.0 * v for v in nz.occ_box)
    colour = nz.occ_color
    if nz.occlusion == 1:  # a patch
        _poly(img, np.array([[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]]), colour, aa=False)
    elif nz.occlusion == 2:  # a bar across the face
        h = max(2.0, 0.45 * bh)
        _poly(img, np.array([[OFFSET - 20, y], [OFFSET + 132, y], [OFFSET + 132, y + h], [OFFSET - 20, y + h]]),
              colour, aa=False)
    elif nz.occlusion == 3:  # a mask over the lower face
        pts = np.array([[0.2, 0.72], [0.5, 0.66], [0.8, 0.72], [0.78, 0.98], [0.5, 1.05], [0.22, 0.98]])
        _poly(img, OFFSET + 112.0 * pts, colour)
    else:  # a round blob (a hand, a microphone)
        _ellipse(img, (x + bw / 2, y + bh / 2), (bw / 2, bh / 2), 0.0, colour)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


# ----------------------------------------------------------------------------- placements
def render_aligned(ident: Identity, nz: Nuisance, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """An aligned face, as a dataset's alignment step would have produced it from noisy landmarks.

    Returns (BGR uint8 (size, size, 3), the true landmarks (5, 2) in the output).
    """
    canvas, lm = draw_canvas(ident, nz)
    detected = lm + np.asarray(nz.landmark_noise, np.float64).reshape(5, 2)
    m = _similarity(detected, template() * (size / 112.0))
    out = cv2.warpAffine(canvas, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lm_out = lm @ m[:, :2].T + m[:, 2]
    return finish(out, nz), lm_out


def crop_transform(rng: np.random.Generator, width: int, height: int, roll_deg: float,
                   scale_range: tuple[float, float] = (0.7, 1.9)) -> tuple[np.ndarray, float]:
    """A random canvas -> crop similarity (2, 3) and its scale.

    The face is rolled by `roll_deg`, scaled by a factor drawn from `scale_range` (relative to its
    aligned size) but no larger than lets the whole aligned 112-px face square fit in the crop, and
    placed at random with that square inside the crop, as a detector's loose crop would contain it.
    """
    a = math.radians(roll_deg)
    fit = (min(width, height) - 4.0) / (112.0 * (abs(math.cos(a)) + abs(math.sin(a))))
    hi = max(min(scale_range[1], fit), 0.05)
    lo = min(scale_range[0], hi)
    scale = float(rng.uniform(lo, hi))
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    square = OFFSET + 112.0 * np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float64)
    centre = square.mean(axis=0)
    pts = (square - centre) @ r.T
    low = -pts.min(axis=0) + 1.0
    high = np.maximum(np.array([width, height], float) - pts.max(axis=0) - 1.0, low)
    target = rng.uniform(low, high)
    return np.concatenate([r, (target - centre @ r.T)[:, None]], axis=1), scale


def render_crop(ident: Identity, nz: Nuisance, m_canvas_to_crop: np.ndarray, width: int, height: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    """A loose crop (BGR uint8 (height, width, 3)) and its true 5 landmarks in crop coordinates.

    The scene is drawn over the whole part of the canvas plane that the crop sees, so that the crop
    shows background, body and hair around the face rather than borders of a small canvas.
    """
    m = np.asarray(m_canvas_to_crop, np.float64)
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64) @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.minimum(np.floor(corners.min(axis=0)) - 2, 0).astype(int)
    x1, y1 = np.maximum(np.ceil(corners.max(axis=0)) + 2, CANVAS).astype(int)
    scene, lm = draw_canvas(ident, nz, (int(x0), int(y0), int(x1), int(y1)))
    scale = float(math.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.95:  # shrinking: smooth first, as a camera's optics would
        scene = cv2.GaussianBlur(scene, (0, 0), 0.45 / scale)
    shifted = m.copy()
    shifted[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)  # image pixel (0, 0) is canvas (x0, y0)
    out = cv2.warpAffine(scene, shifted, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lm_out = lm @ m[:, :2].T + m[:, 2]
    return finish(out, nz, face_scale=scale), lm_out

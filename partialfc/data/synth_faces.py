"""Parametric synthetic faces: identity parameters and a renderer (numpy + Pillow only).

An identity is a fixed draw of shape, colour and geometry parameters (face outline, skin tone,
eyes, brows, nose, mouth, ears, hair, beard, glasses, moles). An image of it varies only what a
camera and a moment vary: pose (in-plane rotation, scale, shift, a little yaw), expression,
background, lighting, blur and sensor noise. Nothing but appearance depends on the label, so a
model that separates these identities has learnt something about faces that carries over to
identities it never saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Canonical 112x112 aligned crop (as insightface's): eyes near y=51, mouth near y=92.
_BASE = 112.0
_SS = 2  # drawn at 2x then box-downsampled: cheap anti-aliasing

_HAIR_COLOURS = np.array(
    [
        [20, 16, 14],
        [60, 40, 25],
        [110, 75, 40],
        [190, 150, 90],
        [150, 60, 30],
        [170, 170, 170],
        [235, 225, 200],
    ],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array(
    [[70, 45, 25], [40, 25, 15], [60, 100, 150], [80, 120, 70], [110, 110, 120]], dtype=np.float64
)


@dataclass(frozen=True)
class FaceParams:
    """Appearance of one identity, in the coordinates of a 112x112 crop."""

    face_rx: float
    face_ry: float
    face_cy: float
    face_power: float  # superellipse exponent: 2 oval, larger squarer
    chin: float  # narrowing of the lower face, 0..0.3
    skin: np.ndarray
    hair: np.ndarray
    hair_style: int  # 0 bald, 1 short, 2 long, 3 fringe
    hair_top: float
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris: np.ndarray
    brow_gap: float
    brow_w: float
    brow_thick: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip: float
    lip_colour: np.ndarray
    smile: float
    ear: float
    beard: int  # 0 none, 1 goatee, 2 full
    moustache: bool
    glasses: int  # 0 none, 1 round, 2 square
    glasses_colour: np.ndarray
    moles: np.ndarray  # (k, 2) positions relative to the face centre


def identity_params(rng: np.random.Generator) -> FaceParams:
    """Draws one identity's appearance."""
    u = rng.uniform
    t = u() ** 1.3  # skin darkness
    skin = (1 - t) * np.array([245, 210, 185]) + t * np.array([95, 62, 42])
    skin = np.clip(skin * u(0.92, 1.08, 3), 0, 255)
    hair = np.clip(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * u(0.8, 1.2, 3), 0, 255)
    return FaceParams(
        face_rx=u(31, 42),
        face_ry=u(44, 56),
        face_cy=u(58, 64),
        face_power=u(1.8, 3.2),
        chin=u(0.0, 0.3),
        skin=skin,
        hair=hair,
        hair_style=int(rng.choice(4, p=[0.15, 0.35, 0.3, 0.2])),
        hair_top=u(4, 14),
        eye_dx=u(14, 21),
        eye_y=u(47, 55),
        eye_w=u(6, 10.5),
        eye_h=u(2.5, 5),
        eye_tilt=u(-0.2, 0.2),
        iris=np.clip(_IRIS_COLOURS[rng.integers(5)] * u(0.8, 1.2, 3), 0, 255),
        brow_gap=u(5, 11),
        brow_w=u(8, 14),
        brow_thick=u(1.5, 4.5),
        brow_tilt=u(-0.35, 0.35),
        nose_len=u(10, 20),
        nose_w=u(4, 11),
        mouth_y=u(84, 96),
        mouth_w=u(9, 20),
        lip=u(1.5, 5),
        lip_colour=np.clip(skin * np.array([0.85, 0.55, 0.55]) * u(0.8, 1.1), 0, 255),
        smile=u(-2, 4),
        ear=u(5, 11),
        beard=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
        moustache=bool(u() < 0.2),
        glasses=int(rng.choice(3, p=[0.75, 0.125, 0.125])),
        glasses_colour=u(0, 200, 3),
        moles=u(-1, 1, (int(rng.integers(0, 4)), 2)),
    )


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(float(v)))) for v in colour)  # np.clip is slow on scalars
    return r, g, b


def _superellipse(
    cx: float, cy: float, rx: float, ry: float, power: float, chin: float, n: int = 48
) -> list[tuple[float, float]]:
    out = []
    for k in range(n):
        a = 2 * math.pi * k / n
        c, s = math.cos(a), math.sin(a)
        x = rx * math.copysign(abs(c) ** (2 / power), c)
        y = ry * math.copysign(abs(s) ** (2 / power), s)
        if y > 0:  # narrow the jaw towards the chin
            x *= 1 - chin * (y / ry) ** 2
        out.append((cx + x, cy + y))
    return out


def render_face(p: FaceParams, rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """Renders one image of identity ``p`` with random pose, lighting, blur and noise.

    Args:
        p: the identity.
        rng: randomness of this image only.
        size: output side in pixels.

    Returns:
        ``size x size x 3`` uint8 RGB.
    """
    from PIL import Image, ImageDraw, ImageFilter

    k = size * _SS / _BASE  # canonical units -> drawing pixels
    u = rng.uniform
    yaw = u(-1, 1)  # features slide sideways, as when the head turns a little
    cx = _BASE / 2 + yaw * 2.5
    fx = cx + yaw * 4.0
    bg_a, bg_b = u(0, 255, 3), u(0, 255, 3)
    img = Image.new("RGB", (size * _SS, size * _SS), _rgb(bg_a))
    draw = ImageDraw.Draw(img)
    # Background clutter, so that "not the face" is a thing to learn to ignore.
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = u(0, size * _SS, 2)
        w, h = u(10, 80, 2) * k
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=_rgb(bg_b * u(0.6, 1.2)))

    def pt(x: float, y: float) -> tuple[float, float]:
        return x * k, y * k

    def ell(x: float, y: float, rx: float, ry: float, colour: np.ndarray) -> None:
        draw.ellipse([*pt(x - rx, y - ry), *pt(x + rx, y + ry)], fill=_rgb(colour))

    skin, hair = p.skin, p.hair
    top = p.face_cy - p.face_ry
    # neck and ears behind the face
    draw.rectangle(
        [*pt(cx - p.face_rx * 0.45, p.face_cy), *pt(cx + p.face_rx * 0.45, 120)],
        fill=_rgb(skin * 0.85),
    )
    for side in (-1, 1):
        ell(cx + side * (p.face_rx - 1) - yaw * 1.5, p.eye_y + 6, p.ear * 0.6, p.ear, skin * 0.9)
    if p.hair_style == 2:  # long hair falls behind the face
        draw.rectangle(
            [*pt(cx - p.face_rx - 6, top + 8), *pt(cx + p.face_rx + 6, p.face_cy + 30)],
            fill=_rgb(hair),
        )
    if p.hair_style > 0:
        ell(cx, top + p.hair_top * 0.6, p.face_rx + 3, p.hair_top + 8, hair)
    face = _superellipse(cx, p.face_cy, p.face_rx, p.face_ry, p.face_power, p.chin)
    draw.polygon([pt(x, y) for x, y in face], fill=_rgb(skin))
    if p.hair_style == 3:  # fringe over the forehead
        draw.chord(
            [*pt(cx - p.face_rx, top - 6), *pt(cx + p.face_rx, top + p.hair_top + 14)],
            0,
            180,
            fill=_rgb(hair),
        )
    if p.beard:
        y0 = p.mouth_y - (8 if p.beard == 2 else 2)
        rx = p.face_rx * (0.95 if p.beard == 2 else 0.45)
        draw.chord(
            [*pt(fx - rx, y0 - 10), *pt(fx + rx, p.face_cy + p.face_ry + 2)],
            0,
            180,
            fill=_rgb(hair * 0.9),
        )
    for mx, my in p.moles:
        ell(fx + mx * p.face_rx * 0.6, p.face_cy + my * p.face_ry * 0.5, 1.3, 1.3, skin * 0.45)

    blink = u() < 0.08
    for side in (-1, 1):
        ex = fx + side * p.eye_dx * (1 + side * yaw * 0.08)
        ey = p.eye_y + side * p.eye_tilt * p.eye_w
        eh = p.eye_h * (0.25 if blink else u(0.85, 1.15))
        ell(ex, ey, p.eye_w, eh, np.array([245.0, 245.0, 240.0]))
        if not blink:
            r = min(p.eye_h, p.eye_w) * 0.9
            ell(ex + yaw * 1.5, ey, r, min(r, eh), p.iris)
            ell(ex + yaw * 1.5, ey, r * 0.45, min(r, eh) * 0.45, np.zeros(3))
        by = ey - p.eye_h - p.brow_gap * u(0.9, 1.1)
        dy = side * p.brow_tilt * p.brow_w
        draw.line(
            [pt(ex - p.brow_w, by + dy), pt(ex + p.brow_w, by - dy)],
            fill=_rgb(hair * 0.8),
            width=max(1, round(p.brow_thick * k)),
        )
    if p.glasses:
        colour = _rgb(p.glasses_colour)
        for side in (-1, 1):
            ex, r = fx + side * p.eye_dx, p.eye_w + 3.5
            box = [*pt(ex - r, p.eye_y - r * 0.8), *pt(ex + r, p.eye_y + r * 0.8)]
            if p.glasses == 1:
                draw.ellipse(box, outline=colour, width=round(1.5 * k))
            else:
                draw.rectangle(box, outline=colour, width=round(1.5 * k))
        draw.line(
            [pt(fx - p.eye_dx + p.eye_w + 3, p.eye_y), pt(fx + p.eye_dx - p.eye_w - 3, p.eye_y)],
            fill=colour,
            width=round(1.5 * k),
        )

    ny = p.eye_y + 4
    nose = [
        pt(fx + yaw * 2, ny),
        pt(fx - p.nose_w / 2 + yaw * 3, ny + p.nose_len),
        pt(fx + p.nose_w / 2 + yaw * 3, ny + p.nose_len),
    ]
    draw.polygon(nose, fill=_rgb(skin * 0.82))
    for side in (-1, 1):
        ell(fx + yaw * 3 + side * p.nose_w * 0.3, ny + p.nose_len - 0.5, 1.2, 0.9, skin * 0.45)
    if p.moustache:
        draw.chord(
            [*pt(fx - p.mouth_w * 0.8, p.mouth_y - 7), *pt(fx + p.mouth_w * 0.8, p.mouth_y)],
            180,
            360,
            fill=_rgb(hair * 0.9),
        )
    smile = p.smile + u(-2.5, 2.5)
    opened = u() < 0.2
    my = p.mouth_y
    lips = [
        pt(fx - p.mouth_w, my - smile),
        pt(fx, my - p.lip * 0.5),
        pt(fx + p.mouth_w, my - smile),
        pt(fx, my + p.lip + (3 if opened else 0)),
    ]
    draw.polygon(lips, fill=_rgb(p.lip_colour))
    if opened:
        draw.line(
            [
                pt(fx - p.mouth_w * 0.7, my - smile * 0.5),
                pt(fx + p.mouth_w * 0.7, my - smile * 0.5),
            ],
            fill=(40, 10, 10),
            width=max(1, round(1.5 * k)),
        )

    img = img.reduce(_SS)
    # Pose: in-plane rotation, scale and shift about the crop centre.
    angle, scale = math.radians(u(-10, 10)), u(0.9, 1.1)
    shift = u(-4, 4, 2) * size / _BASE
    c, s, h = math.cos(angle) / scale, math.sin(angle) / scale, size / 2
    # inverse map output -> input, as Image.transform wants
    coeffs = (
        c,
        s,
        h - c * (h + shift[0]) - s * (h + shift[1]),
        -s,
        c,
        h + s * (h + shift[0]) - c * (h + shift[1]),
    )
    img = img.transform(
        img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=_rgb(bg_a)
    )
    radius = u(0, 1.2) if u() < 0.6 else 0.0
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius))

    x = np.asarray(img, dtype=np.float32)
    # Lighting: a directional gradient, global gain and a colour cast, then sensor noise.
    theta = u(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    grad = math.cos(theta) * ramp[None, :] + math.sin(theta) * ramp[:, None]
    light = u(0.7, 1.25) * (1 + u(0, 0.35) * grad)
    x *= light[:, :, None] * u(0.9, 1.1, 3).astype(np.float32)
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(u(0, 8))
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)

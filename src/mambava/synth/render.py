"""Drawing: a face of an identity with one frame's expression, composited into a frame with its background,
occluders and the back of the head; the 5 landmarks of the drawn face, and the aligned crop cut with them.

Faces are drawn with OpenCV (anti-aliased, sub-pixel) on a 160x160 canvas whose central 112x112 is the ArcFace
template frame, then warped into the video frame. They are shaded (rim, eye sockets, nose and chin shadows) so
that the faces stage's MTCNN, trained on photographs, finds them in the raw videos: with its thresholds relaxed
to 0.5 it finds a face in about 95% of the frames where one is drawn.

Crops are cut from the rendered (lit, noisy) video frame with the similarity transform that maps the face's
five landmarks (eye centres, nose tip, mouth corners), plus the aligner's error, onto the 112x112 ArcFace
template, which is exactly what a face aligner does.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from mambava.synth.identity import Identity

# The 5-point ArcFace template for 112x112 crops (left eye, right eye, nose tip, left/right mouth corner): the
# values of mambava.faces.align.ARCFACE_TEMPLATE_112, kept here because importing mambava.faces pulls torch
# into every generator worker.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

# landmark error of the aligner that cuts the crops (pixels, per coordinate): per person, per frame
LANDMARK_BIAS, LANDMARK_JITTER = 0.6, 0.5

CANVAS = 160  # the face is drawn on a 160x160 canvas whose central 112x112 is the template frame
_OFF = (CANVAS - 112) / 2
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel drawing
_ONE = 1 << _SHIFT


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _poly(points) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def face_base(ident: Identity) -> tuple[np.ndarray, np.ndarray]:
    """The parts of a face that do not change with expression, drawn once per identity: clothes, neck, hair,
    face and ears, with soft shading (darker rim, eye sockets, a nose-side and a chin shadow, lit cheeks) so
    that the face reads as a face to a detector trained on photographs. Returns (BGR uint8, uint8 mask)."""

    img = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    mask = np.zeros((CANVAS, CANVAS), np.uint8)
    o = _OFF
    aa = cv2.LINE_AA
    fx = 56.0 + o
    fy = 62.0 + o + ident.face_dy

    def both(draw):  # draw on the image and the mask alike
        draw(img, None)
        draw(mask, 255)

    both(
        lambda im, c: cv2.ellipse(
            im, _pt(fx, fy + 98), (int(62 * _ONE), int(34 * _ONE)), 0, 0, 360, c or ident.shirt, -1, aa, _SHIFT
        )
    )
    neck = tuple(0.8 * x for x in ident.skin)
    both(
        lambda im, c: cv2.rectangle(
            im,
            (int((fx - 15) * _ONE), int((fy + 35) * _ONE)),
            (int((fx + 15) * _ONE), int((fy + 72) * _ONE)),
            c or neck,
            -1,
            aa,
            _SHIFT,
        )
    )
    if ident.hair_style == 1:  # long hair behind the face
        both(
            lambda im, c: cv2.ellipse(
                im,
                _pt(fx, fy + 8),
                (int((ident.face_w + 9) * _ONE), int((ident.face_h + 16) * _ONE)),
                0,
                0,
                360,
                c or ident.hair,
                -1,
                aa,
                _SHIFT,
            )
        )
    if ident.hair_style == 3:  # a bun
        both(
            lambda im, c: cv2.circle(
                im, _pt(fx, fy - ident.face_h - 4), int(15 * _ONE), c or ident.hair, -1, aa, _SHIFT
            )
        )
    for side in (-1, 1):  # ears
        both(
            lambda im, c: cv2.ellipse(
                im,
                _pt(fx + side * (ident.face_w - 1), fy + 4),
                (int(5 * _ONE), int(9 * _ONE)),
                0,
                0,
                360,
                c or tuple(0.9 * x for x in ident.skin),
                -1,
                aa,
                _SHIFT,
            )
        )
    both(
        lambda im, c: cv2.ellipse(
            im,
            _pt(fx, fy),
            (int(ident.face_w * _ONE), int(ident.face_h * _ONE)),
            0,
            0,
            360,
            c or ident.skin,
            -1,
            aa,
            _SHIFT,
        )
    )
    if ident.beard:  # a chin beard below the mouth, a shade between skin and hair
        beard = tuple(0.55 * a + 0.36 * b for a, b in zip(ident.skin, ident.hair))
        cv2.ellipse(
            img,
            _pt(fx, fy + 0.68 * ident.face_h),
            (int(0.6 * ident.face_w * _ONE), int(0.32 * ident.face_h * _ONE)),
            0,
            0,
            180,
            beard,
            -1,
            aa,
            _SHIFT,
        )
    _shade(img, ident, fx, fy)
    if ident.hair_style != 2:  # hair on top, over the forehead
        for im, c in ((img, ident.hair), (mask, 255)):
            cv2.ellipse(
                im,
                _pt(fx, fy - 0.3 * ident.face_h),
                (int((ident.face_w + 3) * _ONE), int(0.75 * ident.face_h * _ONE)),
                0,
                180,
                360,
                c,
                -1,
                aa,
                _SHIFT,
            )
    return img, mask


def _shade(img: np.ndarray, ident: Identity, fx: float, fy: float) -> None:
    """Multiply the face (centred at fx, fy on the canvas) by a shading map, in place: a darker rim, eye sockets,
    shadows beside the nose and under the lower lip, lit cheeks and forehead."""
    o = _OFF
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    r = np.sqrt(((xx - fx) / ident.face_w) ** 2 + ((yy - fy) / ident.face_h) ** 2)
    shade = 1.0 - 0.28 * np.clip(r, 0, 1) ** 3

    def blob(cx, cy, sx, sy, amount):
        return amount * np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))

    for x in (38.3 + o, 73.5 + o):
        shade -= blob(x, 50.0 + o, 10.0, 6.5, 0.22)  # eye sockets
        shade += blob(x, 66.0 + o, 8.0, 6.0, 0.07)  # cheeks
    shade -= blob(61.0 + o, 68.0 + o, 3.0, 7.0, 0.14)  # beside the nose
    shade -= blob(56.0 + o, 101.0 + o, 9.0, 3.0, 0.12)  # under the lower lip
    shade += blob(52.0 + o, 30.0 + o, 14.0, 8.0, 0.08)  # forehead highlight
    inside = r <= 1.02
    img[inside] = np.clip(img[inside].astype(np.float32) * shade[inside, None], 0, 255).astype(np.uint8)


def render_face(
    ident: Identity, p: dict, base: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the expression of one frame (`expression.frame_params`) over the identity's base (`face_base`).
    Returns (BGR uint8 canvas, uint8 mask, 5 landmarks in canvas pixels)."""
    img = base[0].copy()
    dx = 9.0 * p["yaw"]  # inner features shift with yaw/pitch (a cheap 3-D turn)
    dy = 7.0 * p["pitch"]
    ex, ey = _draw_eyes(img, ident, p["eye_open"], dx, dy)
    _draw_brows(img, ident, p, ex, ey)
    nx, ny = _draw_nose(img, ident, dx, dy)
    mouth_left, mouth_right = _draw_mouth(img, ident, p, dx, dy)
    landmarks = np.array([[ex[0], ey], [ex[1], ey], [nx, ny], mouth_left, mouth_right], dtype=np.float64)
    return img, base[1], landmarks


def _draw_eyes(img: np.ndarray, ident: Identity, eye_open: float, dx: float, dy: float):
    """Eyes at the template positions + the yaw/pitch shift, opened by `eye_open`; glasses. Returns the eye
    centres ((x_left, x_right), y)."""

    o = _OFF
    aa = cv2.LINE_AA
    ex = (38.3 + o + dx, 73.5 + o + dx)
    ey = 51.6 + o + dy
    open_h = max(ident.eye_h * eye_open, 0.0)
    for x in ex:
        if open_h > 0.6:
            cv2.ellipse(
                img,
                _pt(x, ey),
                (int(ident.eye_w * _ONE), int(open_h * _ONE)),
                0,
                0,
                360,
                (245, 245, 245),
                -1,
                aa,
                _SHIFT,
            )
            r = min(3.2, open_h)
            cv2.ellipse(
                img,
                _pt(x + 0.6 * dx / 9.0 * 3, ey),
                (int(3.2 * _ONE), int(r * _ONE)),
                0,
                0,
                360,
                ident.iris,
                -1,
                aa,
                _SHIFT,
            )
            cv2.ellipse(
                img,
                _pt(x + 0.6 * dx / 9.0 * 3, ey),
                (int(1.4 * _ONE), int(min(1.4, r) * _ONE)),
                0,
                0,
                360,
                (10, 10, 10),
                -1,
                aa,
                _SHIFT,
            )
        # upper lid
        cv2.ellipse(
            img,
            _pt(x, ey),
            (int(ident.eye_w * _ONE), int(max(open_h, 0.8) * _ONE)),
            0,
            180,
            360,
            (40, 40, 50),
            1,
            aa,
            _SHIFT,
        )
        if ident.glasses:
            cv2.circle(img, _pt(x, ey + 1), int(11 * _ONE), (30, 30, 30), 2, aa, _SHIFT)
    if ident.glasses:
        cv2.line(img, _pt(ex[0] + 11, ey), _pt(ex[1] - 11, ey), (30, 30, 30), 2, aa, _SHIFT)
    return ex, ey


def _draw_brows(img: np.ndarray, ident: Identity, p: dict, ex: tuple[float, float], ey: float) -> None:
    """Brows: height with arousal (`brow_raise`), inner ends with valence (`brow_inner`)."""

    aa = cv2.LINE_AA
    brow_colour = tuple(0.7 * x for x in ident.hair) if ident.hair_style != 2 else (50, 50, 60)
    for side, x in ((-1, ex[0]), (1, ex[1])):
        base = ey - ident.brow_gap - p["brow_raise"]
        inner = (x - side * 8.5, base - p["brow_inner"])
        mid = (x, base - 1.5)
        outer = (x + side * 8.5, base + 1.0)
        cv2.polylines(img, [_poly([inner, mid, outer])], False, brow_colour, ident.brow_thick, aa, _SHIFT)


def _draw_nose(img: np.ndarray, ident: Identity, dx: float, dy: float) -> tuple[float, float]:
    """The nose (a line and nostrils); returns the nose tip."""

    o = _OFF
    aa = cv2.LINE_AA
    nx, ny = 56.0 + o + 1.4 * dx, 71.7 + o + dy
    cv2.polylines(
        img,
        [_poly([(nx - 0.5 * dx - 1, ny - 14), (nx - 1.5, ny - 2), (nx, ny + 1), (nx + 4, ny)])],
        False,
        tuple(0.7 * x for x in ident.skin),
        1,
        aa,
        _SHIFT,
    )
    for side in (-1, 1):
        cv2.ellipse(
            img,
            _pt(nx + side * 3.5, ny + 0.5),
            (int(1.6 * _ONE), int(1.0 * _ONE)),
            0,
            0,
            360,
            tuple(0.5 * x for x in ident.skin),
            -1,
            aa,
            _SHIFT,
        )
    return nx, ny


def _draw_mouth(img: np.ndarray, ident: Identity, p: dict, dx: float, dy: float):
    """Lips whose corners rise with `smile`, opened by `mouth_open` (talking, laughing: the inside, then teeth).
    Returns the two mouth corners."""

    o = _OFF
    aa = cv2.LINE_AA
    mx, my = 56.0 + o + dx, 92.3 + o + dy
    mw = 14.6 * ident.mouth_w * (1.0 + 0.12 * max(p["smile"], 0.0))
    curv = 7.5 * p["smile"]
    gap = 14.0 * p["mouth_open"]
    u = np.linspace(-1.0, 1.0, 17)
    bulge = 1.0 - u**2
    mid_y = my + curv * (0.5 - u**2)  # corners at my - curv/2, centre at my + curv/2
    xs = mx + mw * u
    top_in = mid_y - 0.5 * gap * bulge
    bot_in = mid_y + 0.5 * gap * bulge
    top_out = top_in - ident.lip_thick * np.sqrt(bulge)
    bot_out = bot_in + 1.3 * ident.lip_thick * np.sqrt(bulge)
    outer = np.concatenate([np.stack([xs, top_out], 1), np.stack([xs[::-1], bot_out[::-1]], 1)])
    cv2.fillPoly(img, [_poly(outer)], ident.lips, aa, _SHIFT)
    if gap > 0.8:
        inner = np.concatenate([np.stack([xs, top_in], 1), np.stack([xs[::-1], bot_in[::-1]], 1)])
        cv2.fillPoly(img, [_poly(inner)], (35, 25, 60), aa, _SHIFT)
        if gap > 3.0:
            teeth = np.concatenate(
                [
                    np.stack([xs[3:-3], top_in[3:-3]], 1),
                    np.stack([xs[3:-3][::-1], np.minimum(top_in + 2.2, bot_in)[3:-3][::-1]], 1),
                ]
            )
            cv2.fillPoly(img, [_poly(teeth)], (235, 240, 240), aa, _SHIFT)
    else:
        cv2.polylines(img, [_poly(np.stack([xs, mid_y], 1))], False, (40, 30, 70), 1, aa, _SHIFT)
    return [mx - mw, my - curv / 2], [mx + mw, my - curv / 2]


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation; Umeyama without reflection)
    mapping src points onto dst, as a 2x3 matrix. Closed form with the points as complex numbers."""
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    ms, md = zs.mean(), zd.mean()
    a = np.vdot(zs - ms, zd - md) / np.vdot(zs - ms, zs - ms).real  # scale * e^{i angle}
    b = md - a * ms
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A w x h BGR room: a colour ramp with blurred rectangles and discs (furniture, pictures, windows)."""

    c1, c2 = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    ramp = np.linspace(0.0, 1.0, h)[:, None, None] if rng.random() < 0.5 else np.linspace(0.0, 1.0, w)[None, :, None]
    bg = np.broadcast_to(c1 * (1 - ramp) + c2 * ramp, (h, w, 3)).astype(np.uint8).copy()
    for _ in range(int(rng.integers(2, 6))):  # furniture, pictures, windows
        colour = tuple(float(x) for x in rng.uniform(20, 240, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.6:
            cv2.rectangle(bg, (x0, y0), (x0 + int(rng.integers(20, 90)), y0 + int(rng.integers(20, 90))), colour, -1)
        else:
            cv2.circle(bg, (x0, y0), int(rng.integers(8, 40)), colour, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(bg, (0, 0), 1.2)


def composite(frame: np.ndarray, canvas: np.ndarray, mask: np.ndarray, m: np.ndarray) -> None:
    """Warp the canvas by m (canvas -> frame) and alpha-blend it into frame, in place, inside its bounding box."""

    h, w = frame.shape[:2]
    corners = np.array([[0, 0, 1], [CANVAS, 0, 1], [0, CANVAS, 1], [CANVAS, CANVAS, 1]], np.float64) @ m.T
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    local = m.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(canvas, local, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(mask, local, size, flags=cv2.INTER_LINEAR).astype(np.float32)[..., None] * (1 / 255)
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = (roi + (face.astype(np.float32) - roi) * alpha + 0.5).astype(np.uint8)


def draw_occluder(frame: np.ndarray, lm: np.ndarray, scale: float, occ: tuple, t: int) -> None:
    """Draw an occluder (`Track.occluder`) at frame t over the face with frame landmarks lm, in place: a hand
    over the mouth, an object over one eye or over the lower face, wobbling slowly."""

    start, length, kind, colour, _drops, ox, oy = occ
    wobble = math.sin((t - start) / 7.0)
    aa = cv2.LINE_AA
    if kind == 0:  # a hand over the mouth
        c = lm[3:5].mean(0) + (ox + 2 * wobble, oy + 3)
        cv2.ellipse(
            frame,
            _pt(*c),
            (int(22 * scale * _ONE), int(15 * scale * _ONE)),
            10 * wobble,
            0,
            360,
            colour,
            -1,
            aa,
            _SHIFT,
        )
        for k in range(4):  # fingers
            fx = c[0] - 15 * scale + 10 * scale * k
            cv2.ellipse(
                frame,
                _pt(fx, c[1] - 14 * scale),
                (int(4 * scale * _ONE), int(10 * scale * _ONE)),
                0,
                0,
                360,
                colour,
                -1,
                aa,
                _SHIFT,
            )
    elif kind == 1:  # an object over one eye
        c = lm[0 if ox < 0 else 1] + (ox, oy + wobble)
        cv2.rectangle(
            frame,
            _pt(c[0] - 14 * scale, c[1] - 12 * scale),
            _pt(c[0] + 14 * scale, c[1] + 12 * scale),
            colour,
            -1,
            aa,
            _SHIFT,
        )
    else:  # an object (cup, microphone) over the lower face
        c = lm[2:5].mean(0) + (ox + 3 * wobble, oy + 6 * scale)
        cv2.rectangle(
            frame,
            _pt(c[0] - 16 * scale, c[1] - 10 * scale),
            _pt(c[0] + 16 * scale, c[1] + 40 * scale),
            colour,
            -1,
            aa,
            _SHIFT,
        )


def face_placement(scale: float, angle: float, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rotation-scale 2x2, canvas -> frame 2x3 matrix) that puts the canvas point (80, 88), the face's centre,
    at `centre`, scaled by `scale` and rotated by `angle` (radians)."""
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    m = np.zeros((2, 3))
    m[:, :2] = rot
    m[:, 2] = centre - rot @ np.array([CANVAS / 2, CANVAS / 2 + 8])
    return rot, m


def to_frame(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Canvas points (N, 2) into the frame through the 2x3 matrix m."""
    return points @ m[:, :2].T + m[:, 2]


def draw_back_of_head(
    frame: np.ndarray, ident: Identity, centre: np.ndarray, rot: np.ndarray, scale: float, angle: float
) -> None:
    """The person turned away: the back of the head (hair, or skin when bald) where the face would be."""

    c = centre + rot @ np.array([0.0, -8.0])
    cv2.ellipse(
        frame,
        _pt(*c),
        (int(ident.face_w * 1.05 * scale * _ONE), int(ident.face_h * scale * _ONE)),
        math.degrees(angle),
        0,
        360,
        ident.hair if ident.hair_style != 2 else ident.skin,
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )


def align_crop(frame: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The size x size crop whose 5 landmarks land on the ArcFace template (edges replicated), as an aligner
    cuts it."""

    align = similarity(landmarks, ARCFACE_TEMPLATE_112 * (size / 112.0))
    return cv2.warpAffine(frame, align, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

"""viic-synth scenes: what a synthetic picture can show and how it is drawn with Pillow.

Five sports on their own grounds, one to three players in one shirt colour, and a
ball in the left, middle or right third, with mild jitter and noise so the set is
learnable but not trivially memorised. `vicap_jobs.data.synth` writes the data set.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SPORTS: tuple[str, ...] = ("bóng đá", "quần vợt", "bóng rổ", "bóng chày", "bóng chuyền")
SHIRTS: tuple[str, ...] = ("đỏ", "xanh", "vàng", "trắng", "đen")
PLAYER_COUNTS: tuple[int, ...] = (1, 2, 3)
BALL_POSITIONS: tuple[str, ...] = ("bên trái", "ở giữa", "bên phải")
ATTRIBUTE_VALUES: dict[str, tuple[object, ...]] = {
    "sport": SPORTS,
    "players": PLAYER_COUNTS,
    "shirt": SHIRTS,
    "ball": BALL_POSITIONS,
}
_SUPERSAMPLE = 2  # draw at 2× and box-downsample: smooth edges without antialiased drawing


@dataclass(frozen=True)
class SceneAttributes:
    """What one image shows; every caption of the image is true to these."""

    sport: str
    players: int
    shirt: str
    ball: str

    def as_json(self) -> dict[str, object]:
        return {"sport": self.sport, "players": self.players, "shirt": self.shirt, "ball": self.ball}


# --------------------------------------------------------------------------- drawing

RGB = tuple[int, int, int]

_SHIRT_RGB: dict[str, RGB] = {
    "đỏ": (205, 30, 35),
    "xanh": (30, 75, 205),  # "xanh" as a shirt is blue here: green would vanish on grass
    "vàng": (245, 205, 20),
    "trắng": (245, 245, 245),
    "đen": (25, 25, 28),
}
_SKIN_RGB: tuple[RGB, ...] = ((241, 194, 160), (224, 172, 125), (198, 134, 92), (141, 85, 54))


class _Painter:
    """ImageDraw in unit coordinates (0..1 across the canvas) with a shared jitter RNG."""

    def __init__(self, image: Image.Image, rng: random.Random) -> None:
        self.draw = ImageDraw.Draw(image)
        self.side = image.width
        self.rng = rng

    def px(self, value: float) -> int:
        return round(value * self.side)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[int]:
        return [self.px(x0), self.px(y0), self.px(x1), self.px(y1)]

    def width(self, value: float) -> int:
        return max(1, self.px(value))

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB, outline: RGB | None = None) -> None:
        self.draw.rectangle(self.box(x0, y0, x1, y1), fill=fill, outline=outline, width=self.width(0.004))

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: RGB | None, outline: RGB | None = None,
                width: float = 0.004) -> None:  # fmt: skip
        box = self.box(cx - rx, cy - ry, cx + rx, cy + ry)
        self.draw.ellipse(box, fill=fill, outline=outline, width=self.width(width))

    def line(self, points: Sequence[tuple[float, float]], fill: RGB, width: float) -> None:
        self.draw.line([(self.px(x), self.px(y)) for x, y in points], fill=fill, width=self.width(width))

    def polygon(self, points: Sequence[tuple[float, float]], fill: RGB, outline: RGB | None = None) -> None:
        self.draw.polygon([(self.px(x), self.px(y)) for x, y in points], fill=fill, outline=outline)

    def jitter(self, colour: RGB, amount: int = 12) -> RGB:
        """The colour shifted by up to ±amount per channel: no two backgrounds are identical."""
        return _clip_rgb(tuple(c + self.rng.randint(-amount, amount) for c in colour))

    def u(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high)


def render_scene(attrs: SceneAttributes, *, size: int, seed: int) -> Image.Image:
    """Draw one size×size RGB scene for `attrs`: field, players, ball, then tint and noise."""
    rng = random.Random(seed)
    canvas = Image.new("RGB", (size * _SUPERSAMPLE, size * _SUPERSAMPLE))
    painter = _Painter(canvas, rng)
    _BACKGROUNDS[attrs.sport](painter)
    bodies = _draw_players(painter, attrs)
    _draw_ball(painter, attrs, bodies)
    small = canvas.reduce(_SUPERSAMPLE)
    return _add_noise(small, np.random.default_rng(seed))


def _add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A whole-image tint and brightness shift plus Gaussian pixel noise (float32, in place)."""
    tint = rng.uniform(-10.0, 10.0, size=3).astype(np.float32)
    gain = np.float32(rng.uniform(0.9, 1.1))
    sigma = np.float32(rng.uniform(3.0, 8.0))
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    noisy = rng.standard_normal(pixels.shape, dtype=np.float32)
    noisy *= sigma
    noisy += pixels * gain + tint
    np.clip(noisy, 0.0, 255.0, out=noisy)
    return Image.fromarray(np.rint(noisy).astype(np.uint8))


def _draw_stands(p: _Painter, bottom: float) -> None:
    """Spectator stands: a dark band dotted with the crowd's colours."""
    p.rect(0, 0, 1, bottom, p.jitter((70, 70, 80)))
    for _ in range(60):
        x, y = p.u(0, 1), p.u(0.02, bottom - 0.02)
        colour = p.jitter((p.rng.randint(60, 230), p.rng.randint(60, 230), p.rng.randint(60, 230)), 0)
        p.ellipse(x, y, 0.008, 0.008, colour)


def _draw_football(p: _Painter) -> None:
    """Striped grass with a touchline, halfway line and centre circle; stands behind."""
    horizon = p.u(0.18, 0.26)
    _draw_stands(p, horizon)
    light, dark = p.jitter((70, 160, 60)), p.jitter((55, 135, 50))
    stripes = p.rng.randint(6, 9)
    for k in range(stripes):
        p.rect(k / stripes, horizon, (k + 1) / stripes, 1, light if k % 2 else dark)
    white = (240, 240, 240)
    touch = horizon + p.u(0.03, 0.06)
    cx = p.u(0.4, 0.6)
    p.line([(0, touch), (1, touch)], white, 0.008)
    p.line([(cx, touch), (cx, 1)], white, 0.008)
    p.ellipse(cx, p.u(0.62, 0.72), p.u(0.16, 0.22), p.u(0.07, 0.1), None, white, 0.008)


def _draw_tennis(p: _Painter) -> None:
    """A clay or blue hard court with white lines and a net across it; a dark wall behind."""
    horizon = p.u(0.2, 0.3)
    p.rect(0, 0, 1, horizon, p.jitter((35, 85, 60)))
    court = p.jitter((190, 100, 60) if p.rng.random() < 0.5 else (45, 95, 170))
    p.rect(0, horizon, 1, 1, court)
    white = (240, 240, 240)
    service = p.u(0.7, 0.78)
    p.line([(0, horizon + 0.04), (1, horizon + 0.04)], white, 0.008)
    p.line([(0.05, service), (0.95, service)], white, 0.008)
    p.line([(0.5, service), (0.5, 1)], white, 0.008)
    top, bottom = p.u(0.5, 0.56), p.u(0.62, 0.66)
    _draw_net(p, top, bottom, (0, 1))
    p.rect(0.0, top - 0.02, 0.025, 0.84, (60, 60, 60))
    p.rect(0.975, top - 0.02, 1.0, 0.84, (60, 60, 60))


def _draw_net(p: _Painter, top: float, bottom: float, span: tuple[float, float]) -> None:
    """A dark mesh band with a white tape along the top."""
    left, right = span
    mesh = (45, 45, 45)
    step = 0.02
    for k in range(int((right - left) / step) + 1):
        x = left + k * step
        p.line([(x, top), (x, bottom)], mesh, 0.003)
    for k in range(int((bottom - top) / step) + 1):
        y = top + k * step
        p.line([(left, y), (right, y)], mesh, 0.003)
    p.line([(left, bottom), (right, bottom)], mesh, 0.006)
    p.line([(left, top), (right, top)], (245, 245, 245), 0.014)


def _draw_basketball(p: _Painter) -> None:
    """A wooden floor of planks, a plain wall and a hoop with backboard on one side."""
    horizon = p.u(0.3, 0.38)
    p.rect(0, 0, 1, horizon, p.jitter((175, 170, 160)))
    base = p.jitter((205, 150, 90))
    y = horizon
    while y < 1:
        plank = p.jitter(base, 10)
        p.rect(0, y, 1, y + 0.045, plank)
        p.line([(0, y), (1, y)], (150, 100, 55), 0.003)
        y += 0.045
    p.line([(0, horizon + 0.05), (1, horizon + 0.05)], (245, 245, 245), 0.008)
    _draw_hoop(p, hx=p.u(0.15, 0.25) if p.rng.random() < 0.5 else p.u(0.75, 0.85))


def _draw_hoop(p: _Painter, hx: float) -> None:
    """Backboard, orange rim and a white net hanging below it."""
    p.line([(hx, 0), (hx, 0.05)], (90, 90, 90), 0.012)
    p.rect(hx - 0.1, 0.05, hx + 0.1, 0.2, (250, 250, 250), (20, 20, 20))
    p.rect(hx - 0.04, 0.11, hx + 0.04, 0.19, (250, 250, 250), (200, 40, 30))
    rim_y = 0.2
    for k in range(5):
        x_top = hx - 0.05 + k * 0.025
        x_bottom = hx - 0.03 + k * 0.015
        p.line([(x_top, rim_y), (x_bottom, rim_y + 0.08)], (235, 235, 235), 0.004)
    p.ellipse(hx, rim_y, 0.055, 0.012, None, (235, 90, 20), 0.008)


def _draw_baseball(p: _Painter) -> None:
    """Grass outfield, a dirt diamond with an inner grass square, bases and a mound."""
    horizon = p.u(0.14, 0.2)
    p.rect(0, 0, 1, horizon, p.jitter((135, 190, 230)))
    p.rect(0, horizon, 1, horizon + 0.06, p.jitter((30, 90, 50)))
    p.rect(0, horizon + 0.06, 1, 1, p.jitter((75, 150, 65)))
    cx, cy = p.u(0.45, 0.55), p.u(0.66, 0.72)
    rx, ry = p.u(0.4, 0.46), p.u(0.24, 0.28)
    dirt = p.jitter((180, 125, 80))
    p.polygon(_diamond(cx, cy, rx, ry), dirt)
    p.polygon(_diamond(cx, cy, rx * 0.62, ry * 0.62), p.jitter((80, 155, 70)))
    p.ellipse(cx, cy, 0.04, 0.02, dirt)
    white = (245, 245, 245)
    for bx, by in _diamond(cx, cy, rx * 0.85, ry * 0.85):
        p.polygon(_diamond(bx, by, 0.022, 0.012), white)


def _diamond(cx: float, cy: float, rx: float, ry: float) -> list[tuple[float, float]]:
    return [(cx, cy - ry), (cx + rx, cy), (cx, cy + ry), (cx - rx, cy)]


def _draw_volleyball(p: _Painter) -> None:
    """Beach: sky, sea, speckled sand and a high net between two posts."""
    sky_bottom = p.u(0.16, 0.22)
    sea_bottom = sky_bottom + p.u(0.08, 0.12)
    p.rect(0, 0, 1, sky_bottom, p.jitter((150, 205, 240)))
    p.rect(0, sky_bottom, 1, sea_bottom, p.jitter((40, 110, 175)))
    sand = p.jitter((228, 206, 150))
    p.rect(0, sea_bottom, 1, 1, sand)
    for _ in range(150):
        p.ellipse(p.u(0, 1), p.u(sea_bottom, 1), 0.004, 0.003, _clip_rgb(tuple(c - 40 for c in sand)))
    top = p.u(0.3, 0.34)
    for x in (0.03, 0.97):
        p.line([(x, top - 0.03), (x, 0.86)], (90, 90, 95), 0.014)
    _draw_net(p, top, top + 0.1, (0.03, 0.97))


_BACKGROUNDS: dict[str, Callable[[_Painter], None]] = {
    "bóng đá": _draw_football,
    "quần vợt": _draw_tennis,
    "bóng rổ": _draw_basketball,
    "bóng chày": _draw_baseball,
    "bóng chuyền": _draw_volleyball,
}


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in unit coordinates


def _draw_players(p: _Painter, attrs: SceneAttributes) -> list[Box]:
    """1–3 players in evenly spaced slots (jittered), never overlapping, so counting is easy.

    Returns each player's head-and-torso box, which the ball then avoids.
    """
    shirt = p.jitter(_SHIRT_RGB[attrs.shirt], 10)
    shorts = (35, 35, 45) if attrs.shirt in ("trắng", "vàng") or p.rng.random() < 0.5 else (235, 235, 235)
    slot = 1.0 / attrs.players
    bodies = []
    for k in range(attrs.players):
        height = p.u(0.44, 0.56)
        cx = slot * (k + 0.5) + p.u(-0.2, 0.2) * slot
        cx = min(max(cx, 0.12), 0.88)
        foot = p.u(0.86, 0.97)
        bodies.append(_draw_player(p, cx, foot, height, shirt, shorts, p.rng.choice(_SKIN_RGB), attrs.sport))
    return bodies


def _draw_player(p: _Painter, cx: float, foot: float, h: float, shirt: RGB, shorts: RGB, skin: RGB,
                 sport: str) -> Box:  # fmt: skip
    """A simple figure: legs, shorts, arms, a broad torso in the shirt colour, a head with hair.

    Returns the head-and-torso box (x0, y0, x1, y1).
    """
    head_r = 0.085 * h
    head_y = foot - h + head_r
    neck = head_y + head_r
    hip = foot - 0.42 * h
    half = 0.16 * h
    stride = p.u(0.04, 0.1) * h
    shoe = (30, 30, 30)
    for side in (-1, 1):
        knee_x = cx + side * 0.07 * h
        p.line([(knee_x, hip + 0.1 * h), (cx + side * (0.05 * h + stride), foot - 0.02 * h)], skin, 0.085 * h)
        p.ellipse(cx + side * (0.05 * h + stride), foot - 0.015 * h, 0.05 * h, 0.022 * h, shoe)
    p.rect(cx - half, hip - 0.02 * h, cx + half, hip + 0.16 * h, shorts)
    hands = []
    for side in (-1, 1):
        shoulder = (cx + side * half * 0.9, neck + 0.05 * h)
        elbow = (shoulder[0] + side * p.u(0.05, 0.12) * h, shoulder[1] + p.u(0.06, 0.16) * h)
        hand = (elbow[0] + side * p.u(0.0, 0.08) * h, elbow[1] + p.u(-0.12, 0.14) * h)
        p.line([shoulder, elbow], shirt, 0.09 * h)
        p.line([elbow, hand], skin, 0.07 * h)
        hands.append(hand)
    outline = _clip_rgb(tuple(int(c * 0.55) for c in shirt))
    p.draw.rounded_rectangle(p.box(cx - half, neck, cx + half, hip), radius=p.px(0.04 * h), fill=shirt,
                             outline=outline, width=p.width(0.012 * h))  # fmt: skip
    p.ellipse(cx, head_y, head_r, head_r, skin)
    p.draw.chord(p.box(cx - head_r, head_y - head_r, cx + head_r, head_y + head_r), 180, 360, fill=(40, 28, 20))
    _draw_gear(p, sport, hands[1], h)
    return (cx - half, head_y - head_r, cx + half, hip)


def _draw_gear(p: _Painter, sport: str, hand: tuple[float, float], h: float) -> None:
    """A tennis racket or a baseball bat in the right hand; other sports play bare-handed."""
    x, y = hand
    if sport == "quần vợt":
        tip = (x + 0.1 * h, y - 0.12 * h)
        p.line([hand, tip], (30, 30, 30), 0.025 * h)
        p.ellipse(tip[0] + 0.04 * h, tip[1] - 0.06 * h, 0.055 * h, 0.075 * h, None, (30, 30, 30), 0.018 * h)
    elif sport == "bóng chày":
        p.line([hand, (x + 0.16 * h, y - 0.2 * h)], (150, 100, 50), 0.035 * h)


def _draw_ball(p: _Painter, attrs: SceneAttributes, bodies: Sequence[Box]) -> None:
    """The sport's ball inside the left, middle or right third named by attrs.ball.

    Of a few random spots in that third, the first that covers no player's head or
    torso is used (else the least covering one), so shirts and counts stay visible.
    """
    radius = _BALL_RADIUS[attrs.sport] * p.u(0.9, 1.1)
    third = BALL_POSITIONS.index(attrs.ball)
    margin = radius + 0.03
    best: tuple[float, float, float] | None = None
    for _ in range(_BALL_TRIES):
        cx, cy = p.u(third / 3 + margin, (third + 1) / 3 - margin), p.u(0.3, 0.93)
        covered = sum(_overlap((cx - radius, cy - radius, cx + radius, cy + radius), body) for body in bodies)
        if best is None or covered < best[0]:
            best = (covered, cx, cy)
        if covered == 0.0:
            break
    assert best is not None
    _BALL_DRAWERS[attrs.sport](p, best[1], best[2], radius)


def _overlap(a: Box, b: Box) -> float:
    """Area shared by two boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def _ball_football(p: _Painter, cx: float, cy: float, r: float) -> None:
    p.ellipse(cx, cy, r, r, (250, 250, 250), (30, 30, 30), 0.005)
    p.draw.regular_polygon((p.px(cx), p.px(cy), p.px(r * 0.42)), 5, rotation=p.u(0, 72), fill=(20, 20, 20))
    for k in range(5):
        angle = math.radians(90 + 72 * k)
        p.ellipse(cx + 0.82 * r * math.cos(angle), cy - 0.82 * r * math.sin(angle), 0.2 * r, 0.2 * r, (20, 20, 20))


def _ball_tennis(p: _Painter, cx: float, cy: float, r: float) -> None:
    p.ellipse(cx, cy, r, r, (215, 235, 55), (120, 140, 20), 0.003)
    p.draw.arc(p.box(cx - 1.6 * r, cy - r, cx + 0.2 * r, cy + r), 300, 60, fill=(250, 250, 250), width=p.width(0.3 * r))


def _ball_basketball(p: _Painter, cx: float, cy: float, r: float) -> None:
    black = (25, 20, 20)
    p.ellipse(cx, cy, r, r, (230, 110, 30), black, 0.004)
    p.line([(cx - r, cy), (cx + r, cy)], black, 0.12 * r)
    p.line([(cx, cy - r), (cx, cy + r)], black, 0.12 * r)
    p.draw.arc(p.box(cx - 1.7 * r, cy - r, cx + 0.3 * r, cy + r), 300, 60, fill=black, width=p.width(0.12 * r))
    p.draw.arc(p.box(cx - 0.3 * r, cy - r, cx + 1.7 * r, cy + r), 120, 240, fill=black, width=p.width(0.12 * r))


def _ball_baseball(p: _Painter, cx: float, cy: float, r: float) -> None:
    p.ellipse(cx, cy, r, r, (250, 250, 245), (120, 120, 120), 0.003)
    red = (210, 30, 30)
    p.draw.arc(p.box(cx - 1.5 * r, cy - r, cx + 0.3 * r, cy + r), 300, 60, fill=red, width=p.width(0.18 * r))
    p.draw.arc(p.box(cx - 0.3 * r, cy - r, cx + 1.5 * r, cy + r), 120, 240, fill=red, width=p.width(0.18 * r))


def _ball_volleyball(p: _Painter, cx: float, cy: float, r: float) -> None:
    box = p.box(cx - r, cy - r, cx + r, cy + r)
    start = p.u(0, 120)
    p.ellipse(cx, cy, r, r, (250, 250, 250))
    p.draw.pieslice(box, start, start + 120, fill=(250, 210, 30))
    p.draw.pieslice(box, start + 120, start + 240, fill=(30, 80, 190))
    p.ellipse(cx, cy, r, r, None, (40, 40, 40), 0.004)


_BALL_TRIES = 24
_BALL_RADIUS: dict[str, float] = {
    "bóng đá": 0.06,
    "quần vợt": 0.04,
    "bóng rổ": 0.065,
    "bóng chày": 0.038,
    "bóng chuyền": 0.062,
}
_BALL_DRAWERS: dict[str, Callable[[_Painter, float, float, float], None]] = {
    "bóng đá": _ball_football,
    "quần vợt": _ball_tennis,
    "bóng rổ": _ball_basketball,
    "bóng chày": _ball_baseball,
    "bóng chuyền": _ball_volleyball,
}


def _clip_rgb(values: Sequence[int]) -> RGB:
    r, g, b = (min(255, max(0, int(v))) for v in values)
    return (r, g, b)

"""The proxy preset: a hard SSv2-format set where labels are scarce, events are short and order matters.

Every class is a real SSv2 template. A video is a scene (a textured background wider than the frame,
one to three distractor shapes, sometimes an occluding pole, a slow lighting ramp, camera jitter)
with a main object (shape and colour from a palette: the "something" the placeholders name) and,
for most classes, a second object (a box). A class is what happens to the main object, the box or
the camera inside one event window of the video; before and after it the scene is still.

- Time-reversed twins (left/right, up/down, towards/away, covering/uncovering, the four camera
  turns, closer/away from each other) are rendered as the forward class played backwards, and the
  event window is drawn symmetrically in time, so a twin's frames have exactly the forward class's
  distribution: a model blind to order is at chance between them.
- Several classes differ only in a short event (a drop at the end of a lift, a squeeze, a half
  flip, a step back): a few frames of a 2-4 s video, often missed by a 4-frame sample.
- `captions()` describes a single frame as an image-text corpus would (what is where, next to,
  behind or in front of what, upside down or stretched), never what happens over time: the
  teacher's pretraining text (pipeline/teacher/pretrain.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HEIGHT = 128
FPS = 12
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "cyan": (40, 200, 210),
}
SHAPES = ("square", "ball", "triangle", "diamond")
BOX_COLOURS = ("brown", "grey", "pink")
BOX_RGB = {"brown": (120, 80, 45), "grey": (105, 105, 115), "pink": (230, 150, 170)}


@dataclass
class Obj:
    """One object's per-frame state: centre, half-size, scale per axis (sy < 0: upside down), shown or not."""

    cx: np.ndarray
    cy: np.ndarray
    s: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    show: np.ndarray

    @classmethod
    def still(cls, t: int, cx: float, cy: float, s: float) -> Obj:
        """An object that stays where it is."""
        full = lambda v: np.full(t, float(v))
        return cls(full(cx), full(cy), full(s), full(1), full(1), np.ones(t, bool))


@dataclass
class Scene:
    """Everything a video's frames are drawn from; arrays are per frame."""

    t: int
    width: int
    main: Obj
    box: Obj | None
    box_front: np.ndarray  # the box is drawn over the main object
    cam_x: np.ndarray
    cam_y: np.ndarray
    light: np.ndarray
    shape: str
    colour: str
    box_colour: str
    distractors: list[tuple[str, str, float, float, float, float, float]] = field(default_factory=list)
    pole: tuple[float, float] | None = None  # x centre in the stage, half-width
    background_seed: int = 0


def _smooth(e: np.ndarray) -> np.ndarray:
    return e * e * (3 - 2 * e)


def _window(rng: np.random.Generator, t: int, short: bool) -> np.ndarray:
    """Event progress per frame in [0, 1]; the window's start is symmetric under time reversal."""
    dur = rng.uniform(0.08, 0.18) if short else rng.uniform(0.3, 0.55)
    start = rng.uniform(0.05, 0.95 - dur)
    u = np.linspace(0.0, 1.0, t)
    return np.clip((u - start) / dur, 0.0, 1.0)


# The stage is the centred HEIGHT x HEIGHT square (what a centre crop sees); coordinates are in it.
LO, HI = 22.0, HEIGHT - 22.0


def _pos(rng: np.random.Generator, lo: float = LO, hi: float = HI) -> float:
    return float(rng.uniform(lo, hi))


def _horizontal(rng, t, e, forward):
    x0 = _pos(rng, LO, HEIGHT / 2 - 20)
    return _main(rng, t, cx=x0 + 0.45 * HEIGHT * _smooth(e), cy=_pos(rng)), None


def _vertical(rng, t, e, forward):
    y0 = _pos(rng, HEIGHT / 2 + 20, HI)
    return _main(rng, t, cx=_pos(rng), cy=y0 - 0.45 * HEIGHT * _smooth(e)), None


def _depth(rng, t, e, forward):
    m = _main(rng, t, cx=_pos(rng, 40, HEIGHT - 40), cy=_pos(rng, 40, HEIGHT - 40))
    m.s = m.s * (0.55 + 1.1 * _smooth(e))
    return m, None


def _main(rng, t, *, cx, cy, s=None) -> Obj:
    s = float(rng.uniform(8, 13)) if s is None else s
    o = Obj.still(t, 0, 0, s)
    o.cx, o.cy = np.broadcast_to(np.asarray(cx, float), (t,)).copy(), np.broadcast_to(np.asarray(cy, float), (t,)).copy()
    return o


def _box(rng, t, *, cx=None, cy=None, s=None) -> Obj:
    s = float(rng.uniform(15, 20)) if s is None else s
    return Obj.still(t, _pos(rng, 30, HEIGHT - 30) if cx is None else cx, _pos(rng, 45, HEIGHT - 30) if cy is None else cy, s)


def _drop_onto(rng, t, e, forward):
    box = _box(rng, t, cy=_pos(rng, 85, 100))
    top = box.cy[0] - box.s[0]
    m = _main(rng, t, cx=box.cx[0], cy=0)
    m.cy = (top - 50) + 50 * e**2 - m.s  # held high, then a fast fall onto the box
    return m, box


def _lift(rng, t, e, drop: bool):
    floor = _pos(rng, 95, HI)
    m = _main(rng, t, cx=_pos(rng), cy=floor)
    up = np.clip(e / (0.75 if drop else 1.0), 0, 1)
    height = 50 * _smooth(up)
    if drop:  # the last quarter of the window: down again, fast
        fall = np.clip((e - 0.75) / 0.25, 0, 1)
        height = height * (1 - fall**2)
    m.cy = floor - height
    return m, None


def _cover(rng, t, e, forward):
    m = _main(rng, t, cx=_pos(rng, 40, HEIGHT - 40), cy=_pos(rng, 40, HEIGHT - 40))
    side = rng.choice([-1, 1])
    box = _box(rng, t, cx=m.cx[0], cy=m.cy[0])
    box.cx = m.cx[0] + side * 55 * (1 - _smooth(e))
    return m, box


def _put_by_box(rng, t, e, end_offset: float, back: bool = False):
    box = _box(rng, t, cx=_pos(rng, 50, HEIGHT - 50), cy=_pos(rng, 50, HEIGHT - 40))
    side = rng.choice([-1, 1])
    start = box.cx[0] + side * 50
    end = box.cx[0] + side * end_offset
    p = _smooth(e)
    if back:  # towards the box, then back where it started
        p = _smooth(np.clip(e / 0.6, 0, 1)) * (1 - _smooth(np.clip((e - 0.6) / 0.4, 0, 1)))
        end = box.cx[0] + side * (box.s[0] + 12)
    m = _main(rng, t, cx=start + (end - start) * p, cy=box.cy[0] + rng.uniform(-3, 3))
    return m, box


def _flip(rng, t, e, full: bool):
    m = _main(rng, t, cx=_pos(rng), cy=_pos(rng))
    angle = np.pi * e if full else np.pi * 0.45 * np.sin(np.pi * e)
    m.sy = np.cos(angle)
    return m, None


def _squeeze(rng, t, e, forward):
    m = _main(rng, t, cx=_pos(rng), cy=_pos(rng))
    bump = np.sin(np.pi * e)
    m.sx, m.sy = 1 - 0.5 * bump, 1 + 0.25 * bump
    return m, None


def _stretch(rng, t, e, forward):
    m = _main(rng, t, cx=_pos(rng, 40, HEIGHT - 40), cy=_pos(rng))
    m.sx, m.sy = 1 + 0.9 * _smooth(e), 1 - 0.3 * _smooth(e)
    return m, None


def _slightly(rng, t, e, forward):
    m = _main(rng, t, cx=_pos(rng, 35, HEIGHT - 35), cy=_pos(rng))
    m.cx = m.cx + rng.choice([-1, 1]) * rng.uniform(7, 11) * _smooth(e)
    return m, None


def _camera(axis: str):
    def make(rng, t, e, forward):
        return _main(rng, t, cx=_pos(rng, 40, HEIGHT - 40), cy=_pos(rng, 40, HEIGHT - 40)), ("cam", axis, 45 * _smooth(e))

    return make


def _closer(rng, t, e, forward):
    y = _pos(rng, 40, HEIGHT - 40)
    centre, gap = HEIGHT / 2 + rng.uniform(-8, 8), 48 * (1 - _smooth(e)) + 22
    m = _main(rng, t, cx=centre - gap, cy=y)
    box = _box(rng, t, cx=0, cy=y + rng.uniform(-4, 4), s=float(rng.uniform(10, 14)))
    box.cx = centre + gap
    return m, box


def _fall(rng, t, e, like_rock: bool):
    m = _main(rng, t, cx=_pos(rng, 35, HEIGHT - 35), cy=0)
    if like_rock:
        m.cy = LO + (HI - LO) * e**2
    else:
        m.cy = LO + (HI - LO) * e
        m.cx = m.cx + 12 * np.sin(2 * np.pi * 1.5 * e) * (e > 0) * (e < 1)
    return m, None


# (SSv2 template, render function, short event, forward class of a time-reversed twin or None)
CLASSES: list[tuple[str, object, bool, str | None]] = [
    ("Pushing something from left to right", _horizontal, False, None),
    ("Pushing something from right to left", _horizontal, False, "Pushing something from left to right"),
    ("Moving something up", _vertical, False, None),
    ("Moving something down", _vertical, False, "Moving something up"),
    ("Moving something towards the camera", _depth, False, None),
    ("Moving something away from the camera", _depth, False, "Moving something towards the camera"),
    ("Covering something with something", _cover, False, None),
    ("Uncovering something", _cover, False, "Covering something with something"),
    ("Turning the camera left while filming something", _camera("x+"), False, None),
    ("Turning the camera right while filming something", _camera("x+"), False, "Turning the camera left while filming something"),
    ("Turning the camera upwards while filming something", _camera("y+"), False, None),
    (
        "Turning the camera downwards while filming something",
        _camera("y+"),
        False,
        "Turning the camera upwards while filming something",
    ),
    ("Moving something and something closer to each other", _closer, False, None),
    (
        "Moving something and something away from each other",
        _closer,
        False,
        "Moving something and something closer to each other",
    ),
    ("Dropping something onto something", _drop_onto, True, None),
    ("Lifting something up completely, then letting it drop down", lambda r, t, e, f: _lift(r, t, e, True), False, None),
    ("Lifting something up completely without letting it drop down", lambda r, t, e, f: _lift(r, t, e, False), False, None),
    ("Putting something behind something", lambda r, t, e, f: _put_by_box(r, t, e, 0.0), False, None),
    ("Putting something in front of something", lambda r, t, e, f: _put_by_box(r, t, e, 0.0), False, None),
    ("Putting something next to something", lambda r, t, e, f: _put_by_box(r, t, e, 30.0), False, None),
    ("Pretending to put something next to something", lambda r, t, e, f: _put_by_box(r, t, e, 0.0, back=True), False, None),
    ("Turning something upside down", lambda r, t, e, f: _flip(r, t, e, True), True, None),
    ("Pretending to turn something upside down", lambda r, t, e, f: _flip(r, t, e, False), True, None),
    ("Squeezing something", _squeeze, True, None),
    ("Pulling two ends of something so that it gets stretched", _stretch, True, None),
    ("Pushing something so that it slightly moves", _slightly, True, None),
    ("Something falling like a rock", lambda r, t, e, f: _fall(r, t, e, True), True, None),
    ("Something falling like a feather or paper", lambda r, t, e, f: _fall(r, t, e, False), False, None),
]
TEMPLATES = [c[0] for c in CLASSES]
TWINS = {name: twin for name, _, _, twin in CLASSES if twin}
BOX_IN_FRONT = {"Putting something behind something", "Covering something with something", "Uncovering something"}


def scene(template: str, seed: int, min_frames: int, max_frames: int) -> Scene:
    """The scene of one video of `template`: every random choice is drawn from `seed`, independent of the class."""
    rng = np.random.default_rng(seed)
    t = int(rng.integers(min_frames, max_frames + 1))
    width = int(rng.integers(HEIGHT * 5 // 4, HEIGHT * 7 // 4))
    forward = TWINS.get(template, template)
    _, make, short, _ = next(c for c in CLASSES if c[0] == forward)
    e = _window(rng, t, short)
    main, box = make(rng, t, e, True)
    cam_x, cam_y = rng.normal(0, 1.2, t), rng.normal(0, 1.2, t)
    if isinstance(box, tuple):  # a camera turn: the scene moves the other way, box-less
        _, axis, shift = box
        box = None
        if axis == "x+":
            cam_x = cam_x - shift + 22
        else:
            cam_y = cam_y - shift + 22
    light = np.linspace(*rng.uniform(0.75, 1.15, 2), t)
    s = Scene(
        t=t,
        width=width,
        main=main,
        box=box,
        box_front=np.full(t, template in BOX_IN_FRONT),
        cam_x=cam_x,
        cam_y=cam_y,
        light=light,
        shape=str(rng.choice(SHAPES)),
        colour=str(rng.choice(list(COLOURS))),
        box_colour=str(rng.choice(BOX_COLOURS)),
    )
    s.distractors = [_distractor(rng, width) for _ in range(int(rng.integers(1, 4)))]
    if rng.random() < 0.3:
        s.pole = (float(rng.uniform(10, HEIGHT - 10)), float(rng.uniform(3, 6)))
    s.background_seed = int(rng.integers(2**31))
    if template in TWINS:
        _reverse(s)
    return s


def _distractor(rng, width) -> tuple:
    # Small, drifting either way; anywhere in the frame, also outside the stage.
    return (
        str(rng.choice(SHAPES)),
        str(rng.choice(list(COLOURS))),
        float(rng.uniform(-(width - HEIGHT) / 2 + 6, HEIGHT + (width - HEIGHT) / 2 - 6)),
        float(rng.uniform(8, HEIGHT - 8)),
        float(rng.uniform(4, 6)),
        float(rng.normal(0, 4)),
        float(rng.normal(0, 4)),
    )


def _reverse(s: Scene) -> None:
    """The scene played backwards: every per-frame array reversed, distractors drifting the other way."""
    for o in (s.main, s.box):
        if o is not None:
            for name in ("cx", "cy", "s", "sx", "sy", "show"):
                setattr(o, name, getattr(o, name)[::-1].copy())
    s.box_front, s.cam_x, s.cam_y, s.light = (a[::-1].copy() for a in (s.box_front, s.cam_x, s.cam_y, s.light))
    s.distractors = [(a, b, x + dx, y + dy, r, -dx, -dy) for a, b, x, y, r, dx, dy in s.distractors]


def _background(seed: int, h: int, w: int) -> np.ndarray:
    """A muted texture: blocks, stripes or a blotchy gradient, 40 px wider and taller than the frame."""
    rng = np.random.default_rng(seed)
    h, w = h + 80, w + 80
    kind = rng.integers(3)
    base = rng.integers(80, 150, size=3)
    if kind == 0:
        cell = int(rng.integers(10, 24))
        g = rng.integers(-25, 26, size=(h // cell + 1, w // cell + 1, 1))
        img = np.kron(g, np.ones((cell, cell, 1)))[:h, :w] + base
    elif kind == 1:
        period = rng.uniform(10, 30)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        img = base + 18 * np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))[..., None]
    else:
        coarse = rng.normal(0, 18, size=(h // 16 + 2, w // 16 + 2, 3))
        img = base + np.kron(coarse, np.ones((16, 16, 1)))[:h, :w]
    img = img + rng.normal(0, 4, size=(h, w, 1))
    return np.clip(img, 0, 255).astype(np.float32)


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if shape == "square":
        return (np.abs(x) <= 1) & (np.abs(y) <= 1)
    if shape == "ball":
        return x * x + y * y <= 1
    if shape == "triangle":  # apex up (image rows grow downwards)
        return (y <= 1) & (y >= -1) & (np.abs(x) <= (y + 1) / 2)
    return np.abs(x) + np.abs(y) <= 1


def _draw(img, shape, rgb, cx, cy, s, sx=1.0, sy=1.0, band=False) -> None:
    """Paint one shape into img [H, W, 3] (float) at (cx, cy) in frame pixels; band: a dark top third."""
    hx, hy = abs(s * sx) + 1, abs(s * sy) + 1
    x0, x1 = int(max(cx - hx, 0)), int(min(cx + hx + 1, img.shape[1]))
    y0, y1 = int(max(cy - hy, 0)), int(min(cy + hy + 1, img.shape[0]))
    if x1 <= x0 or y1 <= y0 or abs(sy) < 0.02:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    lx, ly = (xx + 0.5 - cx) / (s * sx), (yy + 0.5 - cy) / (s * sy)
    mask = _shape_mask(shape, lx, ly)
    colour = np.broadcast_to(np.asarray(rgb, np.float32), mask.shape + (3,)).copy()
    if band:  # marks the object's top, so upside down shows
        colour[ly < -0.35] *= 0.45
    region = img[y0:y1, x0:x1]
    region[mask] = colour[mask]


def render_scene(s: Scene, frames: list[int] | None = None) -> np.ndarray:
    """The RGB frames [T, HEIGHT, width, 3] of a scene (or only `frames`, in that order)."""
    bg = _background(s.background_seed, HEIGHT, s.width)
    left = (s.width - HEIGHT) / 2  # the stage's left edge in the frame
    frames = list(range(s.t)) if frames is None else frames
    out = np.empty((len(frames), HEIGHT, s.width, 3), np.uint8)
    for i, k in enumerate(frames):
        ox, oy = int(round(40 + s.cam_x[k])), int(round(40 + s.cam_y[k]))
        ox, oy = min(max(ox, 0), 80), min(max(oy, 0), 80)
        img = bg[oy : oy + HEIGHT, ox : ox + s.width].copy()
        dx, dy = left + 40 - ox, 40 - oy  # scene -> frame: the camera moves, the scene stays
        u = k / max(s.t - 1, 1)
        for shape, colour, x, y, r, vx, vy in s.distractors:
            _draw(img, shape, COLOURS[colour], x + vx * u + dx, y + vy * u + dy, r)
        layers = [("main", s.main), ("box", s.box)]
        if s.box is not None and not s.box_front[k]:
            layers.reverse()
        for name, o in layers:
            if o is None or not o.show[k]:
                continue
            if name == "box":
                _draw(img, "square", BOX_RGB[s.box_colour], o.cx[k] + dx, o.cy[k] + dy, o.s[k], o.sx[k], o.sy[k])
            else:
                _draw(img, s.shape, COLOURS[s.colour], o.cx[k] + dx, o.cy[k] + dy, o.s[k], o.sx[k], o.sy[k], band=True)
        if s.pole is not None:
            x, half = s.pole
            a, b = int(max(x - half + dx, 0)), int(min(x + half + dx, s.width))
            img[:, a:b] = (70, 60, 55)
        out[i] = np.clip(img * s.light[k], 0, 255).astype(np.uint8)
    return out


def placeholders(s: Scene, template: str) -> list[str]:
    """What fills each [something] of the template, as SSv2's annotators would name it."""
    names = [f"{_a(s.colour)} {s.colour} {s.shape}", f"a {s.box_colour} box"]
    return names[: max(template.lower().count("something"), 1)]


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def corpus_video(seed: int, frames: int, min_frames: int, max_frames: int) -> tuple[np.ndarray, list[str]]:
    """`frames` random frames [F, H, W, 3] of a random video of a random class and their captions:
    the teacher corpus' video `seed` (its seeds never meet the student's videos')."""
    rng = np.random.default_rng([seed, 11])
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    s = scene(template, int(rng.integers(2**31)), min_frames, max_frames)
    ks = sorted(int(k) for k in rng.choice(s.t, size=min(frames, s.t), replace=False))
    return render_scene(s, ks), [captions(s, k, rng) for k in ks]


def captions(s: Scene, k: int, rng: np.random.Generator) -> str:
    """A one-line description of frame k alone (no time): the object, where it is, next to what."""
    m = s.main
    obj = f"{s.colour} {s.shape}"
    if abs(m.sy[k]) > 0.02 and m.sy[k] < -0.3:
        obj = f"upside down {obj}"
    if m.sx[k] > 1.4:
        obj = f"stretched {obj}"
    elif m.sx[k] < 0.7:
        obj = f"squashed {obj}"
    big = " big" if m.s[k] > 15 else (" small" if m.s[k] < 7 else "")
    cx, cy = m.cx[k] - s.cam_x[k], m.cy[k] - s.cam_y[k]  # where the frame shows it
    where = "on the left" if cx < HEIGHT / 3 else ("on the right" if cx > 2 * HEIGHT / 3 else "in the middle")
    height = "at the top" if cy < HEIGHT / 3 else ("at the bottom" if cy > 2 * HEIGHT / 3 else "")
    parts = [f"{_a((big or obj).strip())}{big} {obj}", where, height]
    if s.box is not None:
        b = s.box
        gap = abs(m.cx[k] - b.cx[k]) - b.s[k]
        hidden = s.box_front[k] and abs(m.cx[k] - b.cx[k]) < b.s[k] and abs(m.cy[k] - b.cy[k]) < b.s[k]
        box = f"a {s.box_colour} box"
        if hidden:
            parts = [f"{box} hiding {_a(s.colour)} {s.colour} {s.shape}"]
        elif gap < 0 and abs(m.cy[k] - b.cy[k]) < b.s[k]:
            parts.append(f"in front of {box}")
        elif m.cy[k] < b.cy[k] - b.s[k]:
            parts.append(f"above {box}")
        else:
            parts.append(f"next to {box}" if gap < 25 else f"and {box}")
    text = " ".join(p for p in parts if p)
    lead = ("a photo of ", "", "a picture of ", "there is ")[int(rng.integers(4))]
    return f"{lead}{text}"

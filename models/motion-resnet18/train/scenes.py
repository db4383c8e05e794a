"""Synthetic camera-motion clips: layered scenes filmed by a moving pinhole camera.

A scene is a background plane and one to three foreground planes, each facing the camera at its
own depth, textured from real photographs (the sample images scikit-image ships inside its
wheel) or procedural textures (fractal noise, stripes, checks, dead leaves), the foreground cut
into shapes by soft masks. The camera turns (pan, tilt, roll), changes focal length (zoom) or
moves (truck, pedestal, dolly); each plane is drawn through the exact homography the motion
gives it, so rotations and zoom move every depth alike while a moving camera makes near planes
slide and grow faster than far ones: the parallax that tells a pan from a truck, a tilt from a
pedestal and a zoom from a dolly.

Directions name the camera's own motion, seen from behind it (the model contract): in
`pan_left` the camera turns left and the picture slides right; in `roll_clockwise` the camera
turns clockwise and the picture turns counter-clockwise.

Real footage's nuisances (`Nuisances`: objects moving by themselves, burned-in overlays,
letterbox and pillarbox bars, heavy compression, motion blur, rolling shutter, exposure changes,
small moves, a move in only part of the clip) are each drawn with their own chance, from a
random stream of their own: a clip's scene, camera path and look are the same with or without
them, and with every chance at 0 (the default recipe) a clip renders exactly as it did before
they existed.

Everything random is drawn from one seed: `Clip.draw(seed, label, photos)` makes the same clip
on every machine with the same numpy and torch; `clip.render(frames)` draws any of its frames.
Image coordinates are pixels from the frame's centre, x to the right and y down; camera
coordinates are the same with z forward.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

LABELS = (
    "static",
    "pan_left",
    "pan_right",
    "tilt_up",
    "tilt_down",
    "zoom_in",
    "zoom_out",
    "roll_clockwise",
    "roll_counterclockwise",
    "truck_left",
    "truck_right",
    "pedestal_up",
    "pedestal_down",
    "dolly_in",
    "dolly_out",
    "shake",
)

# Photographs from scikit-image's wheel, split so that evaluation sees none that training saw.
TRAIN_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coins",
    "grass",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "stereo_motorcycle",
    "page",
    "retina",
    "rocket",
)
HELDOUT_PHOTOS = ("coffee", "gravel", "text", "cell", "clock")

LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclasses.dataclass(frozen=True)
class Nuisances:
    """The chance of each of real footage's nuisances in one clip, drawn independently; none at
    all in `clean_chance` of the clips, whatever the others say. All 0: clean clips."""

    clean_chance: float = 0.0
    movers: float = 0.0  # 1-2 objects moving by themselves, rigid or deforming, up to 1/3 of the frame
    overlay: float = 0.0  # a burned-in logo, caption, subtitles, timecode or scoreboard
    bars: float = 0.0  # letterbox or pillarbox bars
    compression: float = 0.0  # JPEG or H.264 at low quality
    motion_blur: float = 0.0  # the shutter open over part of the frame interval, along the motion
    rolling_shutter: float = 0.0  # rows read out one after another: skew under motion
    exposure: float = 0.0  # an exposure ramp, a step or strong flicker
    small_motion: float = 0.0  # the move at 35-60 % of its size
    partial_motion: float = 0.0  # the move (or shake) during only 25-60 % of a clip of 8 frames or more

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(Nuisances) if f.name != "clean_chance")

    @staticmethod
    def only(name: str) -> Nuisances:
        """Every clip with nuisance `name` and no other."""
        return Nuisances(**{name: 1.0})


# What the model is trained on after its clean cycles (train.py's robust cycle).
REAL_FOOTAGE = Nuisances(
    clean_chance=0.25,
    movers=0.35,
    overlay=0.3,
    bars=0.25,
    compression=0.3,
    motion_blur=0.25,
    rolling_shutter=0.2,
    exposure=0.25,
    small_motion=0.2,
    partial_motion=0.2,
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The ranges clips are drawn from. Displacements are fractions of the frame's width (x) or
    height (y) over the whole clip, measured on the nearest plane for truck and pedestal."""

    frames: tuple[int, int] = (8, 48)
    short_clip_chance: float = 0.1  # a clip of 2..7 frames, which the sampler repeats
    long_side: tuple[int, int] = (96, 320)
    aspects: tuple[float, ...] = (4 / 3, 16 / 9, 1.0, 3 / 2, 9 / 16, 3 / 4)
    field_of_view_deg: tuple[float, float] = (40.0, 75.0)
    shift: tuple[float, float] = (0.06, 0.45)  # pan, tilt, truck, pedestal
    off_axis: float = 0.15  # the other axis, as a fraction of the main one
    scale: tuple[float, float] = (1.12, 1.8)  # zoom; dolly on the nearest plane
    roll_deg: tuple[float, float] = (6.0, 35.0)
    shake: tuple[float, float] = (0.008, 0.03)  # per-frame jitter, standard deviation
    shake_roll_deg: tuple[float, float] = (0.2, 1.2)
    handheld_chance: float = 0.3  # a little jitter on top of a deliberate move
    handheld: float = 0.005
    background_depth: tuple[float, float] = (5.0, 30.0)
    foreground_depth: tuple[float, float] = (1.0, 2.5)
    foreground_planes: tuple[int, int] = (1, 3)
    objects_per_plane: tuple[int, int] = (1, 3)
    photo_chance: float = 0.6
    gain: tuple[float, float] = (0.6, 1.25)
    offset: tuple[float, float] = (-0.1, 0.1)
    gamma: tuple[float, float] = (0.7, 1.4)
    noise: tuple[float, float] = (0.0, 0.04)
    blur: tuple[float, float] = (0.0, 1.2)  # Gaussian sigma in pixels, half the clips
    flicker: float = 0.03  # per-frame gain jitter, a third of the clips
    nuisances: Nuisances = Nuisances()


RECIPE = Recipe()


@functools.lru_cache(maxsize=None)
def photo(name: str) -> torch.Tensor:
    """One of scikit-image's bundled photographs as RGB [3, H, W] in [0, 1]."""
    import skimage.data

    image = getattr(skimage.data, name)()
    image = np.asarray(image[0] if isinstance(image, tuple) else image)  # a stereo pair: the left
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    tensor = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float()
    return tensor / (65535.0 if image.dtype == np.uint16 else 255.0)


def _channels(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 3:
        return rgb
    return torch.einsum("c,chw->hw", LUMA, rgb)[None]


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres, from the frame's centre: (x [H, W], y [H, W])."""
    ys = torch.arange(height, dtype=torch.float32) + 0.5 - height / 2
    xs = torch.arange(width, dtype=torch.float32) + 0.5 - width / 2
    return torch.meshgrid(xs, ys, indexing="xy")


def _texture(rng: np.random.Generator, height: int, width: int, photos: tuple[str, ...]) -> torch.Tensor:
    """An RGB texture [3, height, width]: a crop of a photograph or a procedural pattern."""
    if rng.random() < RECIPE.photo_chance:
        source = photo(photos[rng.integers(len(photos))])
        _, ph, pw = source.shape
        zoom = rng.uniform(0.35, 1.0)
        ch = max(8, min(ph, int(ph * zoom)))
        cw = max(8, min(pw, int(ch * width / height)))
        top, left = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
        crop = source[:, top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            crop = crop.flip(2)
        return _resize(crop, height, width).clamp(0, 1)
    # Procedural patterns are drawn at half the canvas's resolution, then enlarged: the canvas is
    # twice the screen, so they still hold detail at the screen's scale.
    full = (height, width)
    height, width = (height + 1) // 2, (width + 1) // 2
    kind = rng.integers(4)
    x, y = _grid(height, width)
    if kind == 0:  # fractal noise
        base = torch.zeros(height, width)
        for octave in range(6):
            cells = 3 * 2**octave
            coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
            base += 0.6**octave * F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0, 0]
    elif kind == 1:  # stripes, sine or square
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 40)
        wave = torch.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period + rng.uniform(0, 6.3))
        base = torch.sign(wave) if rng.random() < 0.5 else wave
        base = base + 0.3 * torch.from_numpy(rng.standard_normal((height, width)).astype(np.float32))
    elif kind == 2:  # checks, turned
        angle = rng.uniform(0, math.pi / 2)
        size = rng.uniform(3, 15)
        u = x * math.cos(angle) + y * math.sin(angle)
        v = -x * math.sin(angle) + y * math.cos(angle)
        base = (torch.floor(u / size) + torch.floor(v / size)) % 2
    else:  # dead leaves: overlapping discs of random grey, sizes by a power law
        base = torch.full((height, width), float(rng.random()))
        for _ in range(int(rng.integers(30, 80))):
            radius = min(height, width) * 0.3 * rng.random() ** 2 + 2
            cx, cy = rng.uniform(-width / 2, width / 2), rng.uniform(-height / 2, height / 2)
            base[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = float(rng.random())
    base = (base - base.min()) / (base.max() - base.min() + 1e-6)
    tint = torch.from_numpy(rng.uniform(0.3, 1.0, (3, 1, 1)).astype(np.float32))
    pattern = base[None] * tint + (1 - tint) * float(rng.random()) * 0.5
    return F.interpolate(pattern[None], size=full, mode="bilinear", align_corners=False)[0].clamp(0, 1)


def _mask(rng: np.random.Generator, height: int, width: int, screen: tuple[int, int]) -> torch.Tensor:
    """Soft alpha [height, width] for one to three shapes placed where the first frame sees them
    (the canvas spans twice the screen, centred on it)."""
    sh, sw = screen
    x, y = _grid(height, width)
    alpha = torch.zeros(height, width)
    for _ in range(int(rng.integers(RECIPE.objects_per_plane[0], RECIPE.objects_per_plane[1] + 1))):
        cx, cy = rng.uniform(-0.45, 0.45) * sw, rng.uniform(-0.45, 0.45) * sh
        rx, ry = rng.uniform(0.1, 0.3, 2) * min(sw, sh) * np.array([rng.uniform(0.6, 1.6), 1.0])
        angle = rng.uniform(0, math.pi)
        u = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
        v = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
        shape = rng.integers(3)
        if shape == 0:  # ellipse: signed distance, roughly, in pixels
            inside = (1 - torch.sqrt((u / rx) ** 2 + (v / ry) ** 2)) * min(rx, ry)
        elif shape == 1:  # rectangle
            inside = torch.minimum(rx - u.abs(), ry - v.abs())
        else:  # star-ish polygon: radius varying with the angle
            theta = torch.atan2(v, u)
            points = int(rng.integers(3, 7))
            wobble = 1 + rng.uniform(0.1, 0.4) * torch.cos(points * theta + rng.uniform(0, 6.3))
            inside = (1 - torch.sqrt((u / rx) ** 2 + (v / ry) ** 2) / wobble) * min(rx, ry)
        alpha = torch.maximum(alpha, (inside + 0.5).clamp(0, 1))
    return alpha


def _rotation(pan: float, tilt: float, roll: float) -> torch.Tensor:
    """Camera-to-world rotation after turning by these angles (radians; positive pan turns right,
    positive tilt turns up, positive roll turns clockwise as seen from behind the camera)."""
    cy, sy = math.cos(pan), math.sin(pan)
    cx, sx = math.cos(tilt), math.sin(tilt)
    cz, sz = math.cos(roll), math.sin(roll)
    # y points down: turning right carries the forward axis towards +x, turning up towards -y,
    # and a clockwise roll carries the right axis towards +y (down on screen).
    yaw = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    pitch = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    spin = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return yaw @ pitch @ spin


@dataclasses.dataclass
class Pose:
    """The camera at one frame: turned by (pan, tilt, roll) radians, moved to `centre` (in units
    of the first frame's depth scale), focal length multiplied by `zoom`."""

    pan: float = 0.0
    tilt: float = 0.0
    roll: float = 0.0
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    zoom: float = 1.0

    def homography(self, focal: float, depth: float) -> torch.Tensor:
        """Maps a plane's first-frame image point (x, y, 1) at `depth` to this frame's image:
        H = K_t R^T (K_0^-1 - c e3^T / depth)."""
        k0_inv = torch.diag(torch.tensor([1 / focal, 1 / focal, 1.0], dtype=torch.float64))
        shift = torch.zeros(3, 3, dtype=torch.float64)
        shift[:, 2] = torch.tensor(self.centre, dtype=torch.float64) / depth
        kt = torch.diag(torch.tensor([focal * self.zoom, focal * self.zoom, 1.0], dtype=torch.float64))
        return kt @ _rotation(self.pan, self.tilt, self.roll).T @ (k0_inv - shift)


    @staticmethod
    def between(a: Pose, b: Pose, w: float) -> Pose:
        """The pose a fraction `w` of the way from `a` to `b`."""
        if w == 0.0:
            return a
        mix = lambda p, q: p + w * (q - p)  # noqa: E731
        return Pose(
            pan=mix(a.pan, b.pan),
            tilt=mix(a.tilt, b.tilt),
            roll=mix(a.roll, b.roll),
            centre=tuple(mix(p, q) for p, q in zip(a.centre, b.centre)),
            zoom=mix(a.zoom, b.zoom),
        )


@dataclasses.dataclass
class Mover:
    """An object moving by itself (a car, a person, a ball) on a plane facing the camera at
    `depth`: a texture cut by a soft shape, both in the object's own pixels centred on 0, carried
    to the plane's first-frame image coordinates by `transform(t)` (t in frames)."""

    depth: float
    texture: torch.Tensor  # [3, side, side]
    radii: tuple[float, float]
    shape: int  # 0 ellipse, 1 rectangle, 2 star
    points: int
    wobble: float
    phase: float
    start: tuple[float, float]
    travel: tuple[float, float]  # over the whole clip
    growth: float  # scale at the clip's end: approaching (> 1) or leaving (< 1)
    spin: float  # radians over the clip
    deform: float  # 0: rigid; else the amplitude of its squash and stretch
    cycles: float  # squash-and-stretch cycles over the clip (a stride, a wingbeat)
    frames: int

    def _progress(self, t: float) -> float:
        return t / max(self.frames - 1, 1)

    def transform(self, t: float) -> torch.Tensor:
        u = self._progress(t)
        scale = self.growth**u
        squash = 1 + self.deform * math.sin(2 * math.pi * self.cycles * u + self.phase)
        sx, sy = scale * squash, scale / squash
        c, s = math.cos(self.spin * u), math.sin(self.spin * u)
        return torch.tensor(
            [
                [c * sx, -s * sy, self.start[0] + u * self.travel[0]],
                [s * sx, c * sy, self.start[1] + u * self.travel[1]],
                [0.0, 0.0, 1.0],
            ],
            dtype=torch.float64,
        )

    def alpha(self, u: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        """Soft coverage at the object's own pixel coordinates (u, v) at time t: a deforming
        object also changes its outline."""
        rx, ry = self.radii
        if self.shape == 0:
            inside = (1 - torch.sqrt((u / rx) ** 2 + (v / ry) ** 2)) * min(rx, ry)
        elif self.shape == 1:
            inside = torch.minimum(rx - u.abs(), ry - v.abs())
        else:
            turn = self.phase + (2 * math.pi * self.cycles * self._progress(t) if self.deform else 0.0)
            wobble = 1 + self.wobble * torch.cos(self.points * torch.atan2(v, u) + turn)
            inside = (1 - torch.sqrt((u / rx) ** 2 + (v / ry) ** 2) / wobble) * min(rx, ry)
        return (inside + 0.5).clamp(0, 1)


OVERLAYS = ("logo", "caption", "subtitles", "timecode", "scoreboard")


@dataclasses.dataclass
class Overlay:
    """Graphics burned into the picture after filming, in screen space: they stay put (or change
    on their own, as a timecode does) whatever the camera does."""

    kind: str
    seed: int

    def draw(self, index: int, height: int, width: int) -> np.ndarray:
        """Frame `index`'s overlay as RGBA [H, W, 4] in [0, 1]."""
        from PIL import Image, ImageDraw, ImageFont

        rng = np.random.default_rng([self.seed, 11])  # the same layout in every frame
        image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        pen = ImageDraw.Draw(image)
        size = max(8, int(height * rng.uniform(0.05, 0.1)))
        font = ImageFont.load_default(size=size)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        ink = (255, 255, 255) if sum(colour) < 384 else (0, 0, 0)
        opacity = int(255 * rng.uniform(0.5, 1.0))
        corner = int(rng.integers(4))
        margin = max(2, int(0.04 * min(width, height)))

        def place(w: int, h: int) -> tuple[int, int]:
            x = margin if corner % 2 == 0 else width - margin - w
            y = margin if corner < 2 else height - margin - h
            return x, y

        def words(n: int, stream: int) -> str:
            r = np.random.default_rng([self.seed, 12, stream])
            letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            return " ".join("".join(r.choice(list(letters), int(r.integers(2, 8)))).capitalize() for _ in range(n))

        if self.kind == "logo":
            w = int(width * rng.uniform(0.08, 0.18))
            h = int(w * rng.uniform(0.4, 1.0))
            x, y = place(w, h)
            box = (x, y, x + w, y + h)
            if rng.random() < 0.5:
                pen.ellipse(box, fill=colour + (opacity,))
            else:
                pen.rounded_rectangle(box, radius=max(1, h // 4), fill=colour + (opacity,))
            label = words(1, 0)[: int(rng.integers(1, 5))].upper()
            logo_font = ImageFont.load_default(size=max(6, int(h * 0.5)))
            pen.text((x + w / 2, y + h / 2), label, font=logo_font, fill=ink + (opacity,), anchor="mm")
        elif self.kind == "caption":
            top = int(height * rng.uniform(0.68, 0.82))
            left = int(width * rng.uniform(0.0, 0.1))
            right = width - int(width * rng.uniform(0.0, 0.3))
            lines = int(rng.integers(1, 3))
            pen.rectangle((left, top, right, top + lines * int(size * 1.3) + 4), fill=colour + (opacity,))
            for line in range(lines):
                pen.text((left + 4, top + 2 + line * int(size * 1.3)), words(3, line), font=font, fill=ink + (255,))
        elif self.kind == "subtitles":
            # A line that changes once in the clip, white or yellow with a black outline, and
            # sometimes absent for a while.
            change = int(rng.integers(1, 40))
            gap = rng.random() < 0.3
            if not (gap and change <= index < change + 4):
                text = words(int(rng.integers(2, 6)), index >= change)
                fill = (255, 255, 255, 255) if rng.random() < 0.7 else (255, 230, 0, 255)
                pen.text(
                    (width / 2, height * rng.uniform(0.8, 0.93)),
                    text,
                    font=font,
                    fill=fill,
                    anchor="mm",
                    stroke_width=max(1, size // 10),
                    stroke_fill=(0, 0, 0, 255),
                )
        elif self.kind == "timecode":
            start = int(rng.integers(0, 90_000))
            frame = start + index
            text = f"{frame // 90000 % 24:02d}:{frame // 1500 % 60:02d}:{frame // 25 % 60:02d}:{frame % 25:02d}"
            w, h = int(pen.textlength(text, font=font)) + 6, size + 6
            x, y = place(w, h)
            if rng.random() < 0.6:
                pen.rectangle((x, y, x + w, y + h), fill=(0, 0, 0, opacity))
            pen.text((x + 3, y + 3), text, font=font, fill=(255, 255, 255, 255))
        else:  # scoreboard: teams, score and a clock that ticks once a second
            clock = int(rng.integers(0, 5400)) + index // 25
            text = f"{words(1, 0)[:3].upper()} {rng.integers(0, 5)}-{rng.integers(0, 5)} {words(1, 1)[:3].upper()}  {clock // 60:02d}:{clock % 60:02d}"
            w, h = int(pen.textlength(text, font=font)) + 8, size + 8
            x, y = place(w, h)
            pen.rectangle((x, y, x + w, y + h), fill=colour + (opacity,))
            pen.text((x + 4, y + 4), text, font=font, fill=ink + (255,))
        return np.asarray(image, dtype=np.float32) / 255.0


@dataclasses.dataclass
class Clip:
    """One drawn clip: its scene, its camera path and its look; `render` draws its frames."""

    label: int
    frames: int
    height: int
    width: int
    focal: float
    depths: list[float]  # background first, then foreground planes far to near
    textures: list[torch.Tensor]  # [3, 2H, 2W] each
    masks: list[torch.Tensor]  # [2H, 2W] per foreground plane
    poses: list[Pose]
    gain: float
    offset: float
    gamma: float
    noise: float
    blur: float
    flicker: list[float]
    seed: int
    # Real footage's nuisances (see `Nuisances`); these defaults are a clean clip.
    nuisances: tuple[str, ...] = ()
    movers: list[Mover] = dataclasses.field(default_factory=list)
    overlay: Overlay | None = None
    bars: tuple[int, int] = (0, 0)  # rows at the top and bottom, columns at the left and right
    bar_level: float = 0.0
    compression: tuple[str, int] | None = None  # ("jpeg", quality) or ("h264", crf)
    shutter: float = 0.0  # motion blur: the shutter open over this fraction of a frame interval
    readout: float = 0.0  # rolling shutter: rows read out over this fraction of a frame interval
    exposure: list[float] | None = None  # per-frame exposure multiplier

    @staticmethod
    def draw(seed: int, label: int, photos: tuple[str, ...] = TRAIN_PHOTOS, recipe: Recipe = RECIPE) -> Clip:
        rng = np.random.default_rng(seed)
        if rng.random() < recipe.short_clip_chance:
            frames = int(rng.integers(2, 8))
        else:
            frames = int(rng.integers(recipe.frames[0], recipe.frames[1] + 1))
        side = int(rng.integers(recipe.long_side[0], recipe.long_side[1] + 1))
        aspect = recipe.aspects[rng.integers(len(recipe.aspects))]
        width, height = (side, round(side / aspect)) if aspect >= 1 else (round(side * aspect), side)
        fov = math.radians(rng.uniform(*recipe.field_of_view_deg))
        focal = width / 2 / math.tan(fov / 2)

        planes = int(rng.integers(recipe.foreground_planes[0], recipe.foreground_planes[1] + 1))
        near = sorted(rng.uniform(*recipe.foreground_depth, planes), reverse=True)
        depths = [float(rng.uniform(*recipe.background_depth))] + [float(d) for d in near]
        textures = [_texture(rng, 2 * height, 2 * width, photos) for _ in depths]
        masks = [_mask(rng, 2 * height, 2 * width, (height, width)) for _ in near]

        # The nuisances come from a stream of their own, so that the clip is otherwise the same.
        nrng = np.random.default_rng([seed, 1])
        on = _nuisances(nrng, recipe.nuisances)
        warp, still = _warp(nrng, on, frames)
        if still is None:
            on.discard("partial_motion")  # too short a clip to move in only part of it
        poses = _path(rng, LABELS[label], frames, width, height, focal, min(depths), recipe, warp, still)
        clip = Clip(
            label=label,
            frames=frames,
            height=height,
            width=width,
            focal=focal,
            depths=depths,
            textures=textures,
            masks=masks,
            poses=poses,
            gain=float(rng.uniform(*recipe.gain)),
            offset=float(rng.uniform(*recipe.offset)),
            gamma=float(rng.uniform(*recipe.gamma)),
            noise=float(rng.uniform(*recipe.noise)),
            blur=float(rng.uniform(*recipe.blur)) if rng.random() < 0.5 else 0.0,
            flicker=list(rng.normal(0, recipe.flicker, frames)) if rng.random() < 1 / 3 else [0.0] * frames,
            seed=seed,
            nuisances=tuple(n for n in Nuisances.names() if n in on),
        )
        _dress(clip, nrng, on, photos)
        return clip

    def render(self, indices: list[int] | None = None, channels: int = 1) -> torch.Tensor:
        """Frames `indices` (all by default) as [T, channels, H, W] in [0, 1], quantised to 8 bits
        as decoded media would be. channels=1 gives BT.601 luma, 3 gives RGB."""
        indices = list(range(self.frames)) if indices is None else indices
        if self.movers or self.shutter or self.readout:
            drawn = self._film(indices, channels)
        else:
            drawn = self._layers(indices, channels)
        return self._post(self._look(drawn, indices), indices, channels)

    def _layers(self, indices: list[int], channels: int) -> torch.Tensor:
        """The planes through each frame's homography (no nuisance that changes the drawing)."""
        x, y = _grid(self.height, self.width)
        screen = torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(-1, 3)  # [HW, 3]
        out = None
        for plane, depth in enumerate(self.depths):
            texture = _channels(self.textures[plane], channels)
            if plane > 0:
                texture = torch.cat([texture, self.masks[plane - 1][None]])
            inverse = torch.linalg.inv(torch.stack([self.poses[i].homography(self.focal, depth) for i in indices]))
            source = torch.einsum("pk,tjk->tpj", screen, inverse.float())
            source = source[..., :2] / source[..., 2:].clamp(min=1e-6)
            # The canvas spans [-W, W] x [-H, H] of first-frame image coordinates.
            grid = (source / torch.tensor([self.width, self.height])).reshape(len(indices), self.height, self.width, 2)
            drawn = F.grid_sample(
                texture[None].expand(len(indices), -1, -1, -1),
                grid,
                mode="bilinear",
                padding_mode="reflection" if plane == 0 else "zeros",
                align_corners=False,
            )
            if out is None:
                out = drawn
            else:
                alpha = drawn[:, -1:]
                out = out * (1 - alpha) + drawn[:, :-1] * alpha
        return out

    def pose_at(self, t: float) -> Pose:
        """The camera at time t in frames (between frames, on the straight line between them)."""
        t = min(max(t, 0.0), self.frames - 1.0)
        i = min(int(t), self.frames - 1)
        return Pose.between(self.poses[i], self.poses[min(i + 1, self.frames - 1)], t - i)

    def exposures(self) -> list[float]:
        """The times within a frame the shutter sees, as offsets in frames (motion blur)."""
        if not self.shutter:
            return [0.0]
        return [self.shutter * (k / 4 - 0.5) for k in range(5)]

    def bands(self) -> list[tuple[int, int, float]]:
        """(first row, end row, time offset in frames) of each band of rows read out together:
        one band, or twelve under a rolling shutter, top first."""
        if not self.readout:
            return [(0, self.height, 0.0)]
        n = min(12, self.height)
        edges = [round(b * self.height / n) for b in range(n + 1)]
        return [(edges[b], edges[b + 1], self.readout * ((b + 0.5) / n - 0.5)) for b in range(n)]

    def _film(self, indices: list[int], channels: int) -> torch.Tensor:
        """The scene with objects moving in it, through a shutter open for a while (motion blur)
        and read out row by row (rolling shutter): each (frame, instant, band of rows) drawn
        through the camera's pose at its own time, the instants averaged."""
        x, y = _grid(self.height, self.width)
        screen = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [H, W, 3]
        instants = [(i, o) for i in indices for o in self.exposures()]
        layers = [(depth, plane, None) for plane, depth in enumerate(self.depths)]
        layers += [(mover.depth, -1, mover) for mover in self.movers]
        # Far to near; the background first whatever its depth.
        layers.sort(key=lambda layer: (layer[1] != 0, -layer[0]))
        out = None
        for depth, plane, mover in layers:
            sources = []
            for i, offset in instants:
                rows = []
                for first, end, lag in self.bands():
                    homography = self.pose_at(i + offset + lag).homography(self.focal, depth)
                    if mover is not None:
                        homography = homography @ mover.transform(i + offset + lag)
                    inverse = torch.linalg.inv(homography).float()
                    source = screen[first:end] @ inverse.T
                    rows.append(source[..., :2] / source[..., 2:].clamp(min=1e-6))
                sources.append(torch.cat(rows))
            source = torch.stack(sources)  # [instants, H, W, 2]
            if mover is None:
                texture = _channels(self.textures[plane], channels)
                if plane > 0:
                    texture = torch.cat([texture, self.masks[plane - 1][None]])
                grid = source / torch.tensor([self.width, self.height])
                padding = "reflection" if plane == 0 else "zeros"
            else:
                side = mover.texture.shape[-1]
                alpha = torch.stack([mover.alpha(s[..., 0], s[..., 1], i + o) for s, (i, o) in zip(source, instants)])
                texture = _channels(mover.texture, channels)
                grid, padding = source / (side / 2), "border"
            drawn = F.grid_sample(
                texture[None].expand(len(instants), -1, -1, -1), grid, mode="bilinear", padding_mode=padding, align_corners=False
            )
            if mover is not None:
                drawn = torch.cat([drawn, alpha[:, None]], dim=1)
            if out is None:
                out = drawn
            else:
                alpha = drawn[:, -1:]
                out = out * (1 - alpha) + drawn[:, :-1] * alpha
        return out.reshape(len(indices), len(self.exposures()), *out.shape[1:]).mean(1)

    def _look(self, frames: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """Exposure, gamma, lens blur, sensor noise and 8-bit quantisation."""
        if self.blur > 0.05:
            radius = max(1, int(math.ceil(3 * self.blur)))
            taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / self.blur) ** 2)
            taps = (taps / taps.sum()).to(frames.dtype)
            c = frames.shape[1]
            frames = F.pad(frames, (radius, radius, radius, radius), mode="replicate")
            frames = F.conv2d(frames, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
            frames = F.conv2d(frames, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        if self.exposure is None:
            gain = torch.tensor([self.gain * (1 + self.flicker[i]) for i in indices]).view(-1, 1, 1, 1)
        else:
            gain = torch.tensor([self.gain * (1 + self.flicker[i]) * self.exposure[i] for i in indices]).view(-1, 1, 1, 1)
        frames = frames.clamp(0, 1) ** self.gamma * gain + self.offset
        if self.noise > 0:
            # Each frame's noise comes from its own stream, so a frame looks the same whichever
            # others are drawn with it.
            noise = np.stack(
                [np.random.default_rng([self.seed, i]).standard_normal(frames.shape[1:], dtype=np.float32) for i in indices]
            )
            frames = frames + self.noise * torch.from_numpy(noise)
        return torch.round(frames.clamp(0, 1) * 255) / 255

    def _post(self, frames: torch.Tensor, indices: list[int], channels: int) -> torch.Tensor:
        """What happens after filming: bars, burned-in graphics, lossy compression."""
        rows, columns = self.bars
        if rows:
            frames[:, :, :rows] = self.bar_level
            frames[:, :, self.height - rows :] = self.bar_level
        if columns:
            frames[:, :, :, :columns] = self.bar_level
            frames[:, :, :, self.width - columns :] = self.bar_level
        if self.overlay is not None:
            drawn = torch.from_numpy(np.stack([self.overlay.draw(i, self.height, self.width) for i in indices]))
            colour = drawn[..., :3].permute(0, 3, 1, 2)
            alpha = drawn[..., 3][:, None]
            frames = frames * (1 - alpha) + _channels_batch(colour, channels) * alpha
            frames = torch.round(frames.clamp(0, 1) * 255) / 255
        if self.compression is not None:
            frames = compress(frames, *self.compression)
        return frames


def _channels_batch(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """[T, 3, H, W] RGB to [T, channels, H, W]."""
    return rgb if channels == 3 else torch.einsum("c,tchw->thw", LUMA, rgb)[:, None]


def compress(frames: torch.Tensor, codec: str, quality: int) -> torch.Tensor:
    """Frames [T, C, H, W] in [0, 1] through a lossy codec and back: each frame as a JPEG of
    `quality`, or all of them in order as one H.264 stream at constant rate factor `quality`."""
    import io

    from PIL import Image

    pixels = torch.round(frames * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    t, h, w, c = pixels.shape
    if codec == "jpeg":
        out = []
        for frame in pixels:
            buffer = io.BytesIO()
            Image.fromarray(frame[..., 0] if c == 1 else frame).save(buffer, "JPEG", quality=quality)
            decoded = np.asarray(Image.open(buffer).convert("L" if c == 1 else "RGB"))
            out.append(decoded.reshape(h, w, c))
        pixels = np.stack(out)
    else:
        pixels = _h264(pixels, quality)
    return torch.from_numpy(pixels.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()


def _h264(pixels: np.ndarray, crf: int) -> np.ndarray:
    """[T, H, W, C] uint8 through libx264 (one thread, so the same on every machine) and back."""
    import subprocess

    import imageio_ffmpeg

    t, h, w, c = pixels.shape
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    fmt = "gray" if c == 1 else "rgb24"
    even = "pad=ceil(iw/2)*2:ceil(ih/2)*2"
    encode = [ffmpeg, "-v", "error", "-f", "rawvideo", "-pix_fmt", fmt, "-s", f"{w}x{h}", "-r", "25", "-i", "-"]
    encode += ["-vf", even, "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-threads", "1"]
    encode += ["-pix_fmt", "yuv420p", "-f", "h264", "-"]
    stream = subprocess.run(encode, input=pixels.tobytes(), capture_output=True, check=True).stdout
    decode = [ffmpeg, "-v", "error", "-threads", "1", "-f", "h264", "-i", "-", "-f", "rawvideo", "-pix_fmt", fmt, "-"]
    raw = subprocess.run(decode, input=stream, capture_output=True, check=True).stdout
    hh, ww = h + h % 2, w + w % 2
    return np.frombuffer(raw, dtype=np.uint8).reshape(t, hh, ww, c)[:, :h, :w]


def _nuisances(rng: np.random.Generator, chances: Nuisances) -> set[str]:
    """Which nuisances a clip has: every chance is drawn, so adding one leaves the rest alone."""
    clean = rng.random() < chances.clean_chance
    draws = {name: rng.random() for name in Nuisances.names()}
    return set() if clean else {name for name, u in draws.items() if u < getattr(chances, name)}


def _warp(rng: np.random.Generator, on: set[str], frames: int):
    """How small motion and partial motion reshape the camera's progress along its move, and
    which frames keep a shake still: (progress -> progress, [frames] bool) or Nones."""
    if not on & {"small_motion", "partial_motion"}:
        return None, None
    size = rng.uniform(0.35, 0.6) if "small_motion" in on else 1.0
    window = None
    if "partial_motion" in on and frames >= 8:
        length = rng.uniform(0.25, 0.6)
        start = rng.uniform(0.0, 1.0 - length)
        window = (start, start + length)
    tau = np.linspace(0.0, 1.0, frames)

    def warp(progress: np.ndarray) -> np.ndarray:
        progress = progress * size
        if window is None:
            return progress
        local = np.clip((tau - window[0]) / (window[1] - window[0]), 0.0, 1.0)
        return np.interp(local, tau, progress)

    still = None if window is None else (tau < window[0]) | (tau > window[1])
    return warp, still


def _dress(clip: Clip, rng: np.random.Generator, on: set[str], photos: tuple[str, ...]) -> None:
    """Draws the nuisances in `on` (other than those of the camera path) into `clip`."""
    h, w, n = clip.height, clip.width, clip.frames
    if "movers" in on:
        for _ in range(1 if rng.random() < 0.7 else 2):
            area = rng.uniform(0.02, 1 / 3) * w * h  # of its ellipse, at the first frame
            aspect = rng.uniform(0.5, 2.0)
            rx = math.sqrt(area / math.pi * aspect)
            ry = area / math.pi / rx
            side = max(8, int(math.ceil(2.6 * max(rx, ry))))
            angle = rng.uniform(0, 2 * math.pi)
            distance = rng.uniform(0.1, 0.8) * w
            deforming = rng.random() < 0.5
            # Between the nearest foreground plane and the background.
            depth = float(rng.uniform(0.8 * clip.depths[-1], 0.9 * clip.depths[0])) if len(clip.depths) > 1 else 2.0
            clip.movers.append(
                Mover(
                    depth=depth,
                    texture=_texture(rng, side, side, photos),
                    radii=(rx, ry),
                    shape=int(rng.integers(3)),
                    points=int(rng.integers(3, 7)),
                    wobble=float(rng.uniform(0.1, 0.3)),
                    phase=float(rng.uniform(0, 2 * math.pi)),
                    start=(float(rng.uniform(-0.45, 0.45) * w), float(rng.uniform(-0.45, 0.45) * h)),
                    travel=(distance * math.cos(angle), distance * math.sin(angle)),
                    growth=float(math.exp(rng.uniform(-0.4, 0.4))),
                    spin=float(rng.normal(0, 0.5)) if not deforming else 0.0,
                    deform=float(rng.uniform(0.1, 0.3)) if deforming else 0.0,
                    cycles=float(rng.uniform(0.5, 4.0)),
                    frames=n,
                )
            )
    if "overlay" in on:
        clip.overlay = Overlay(kind=OVERLAYS[rng.integers(len(OVERLAYS))], seed=int(rng.integers(2**32)))
    if "bars" in on:
        squeeze = rng.uniform(0.15, 0.45)  # of the frame the bars cover, both together
        if rng.random() < 0.5:
            clip.bars = (max(2, round(h * squeeze / 2)), 0)
        else:
            clip.bars = (0, max(2, round(w * squeeze / 2)))
        clip.bar_level = 0.0 if rng.random() < 0.8 else 16 / 255
    if "compression" in on:
        if rng.random() < 0.5:
            clip.compression = ("jpeg", int(rng.integers(5, 31)))
        else:
            clip.compression = ("h264", int(rng.integers(32, 46)))
    if "motion_blur" in on:
        clip.shutter = float(rng.uniform(0.3, 1.0))
    if "rolling_shutter" in on:
        clip.readout = float(rng.uniform(0.3, 0.9))
    if "exposure" in on:
        kind = rng.integers(3)
        tau = np.linspace(0.0, 1.0, n)
        if kind == 0:  # a ramp: the iris opening or closing, auto-exposure settling
            clip.exposure = list(np.exp(rng.uniform(-0.7, 0.7) * tau))
        elif kind == 1:  # a step: a light switched, auto-exposure jumping
            step = rng.uniform(0.2, 0.8)
            jump = math.exp(rng.choice([-1, 1]) * rng.uniform(0.2, 0.6))
            clip.exposure = [jump if t >= step else 1.0 for t in tau]
        else:  # strong flicker: lights on mains, fluorescent tubes
            clip.exposure = list(np.exp(rng.normal(0, rng.uniform(0.06, 0.15), n)))


def _profile(rng: np.random.Generator, frames: int) -> np.ndarray:
    """How far along its move the camera is at each frame, from 0 to 1."""
    tau = np.linspace(0.0, 1.0, frames)
    kind = rng.choice(4, p=[0.5, 0.3, 0.1, 0.1])
    if kind == 1:
        return tau * tau * (3 - 2 * tau)
    if kind == 2:
        return tau * tau
    if kind == 3:
        return 1 - (1 - tau) ** 2
    return tau


def _path(
    rng: np.random.Generator,
    label: str,
    frames: int,
    width: int,
    height: int,
    focal: float,
    nearest: float,
    recipe: Recipe,
    warp=None,
    still: np.ndarray | None = None,
) -> list[Pose]:
    """The camera's pose at every frame for one motion; `warp` reshapes its progress along the
    move and `still` holds a shake still in those frames (small and partial motion)."""
    progress = _profile(rng, frames)
    if warp is not None:
        progress = warp(progress)
    move, _, direction = label.partition("_")
    sign = -1.0 if direction in ("left", "up", "out", "counterclockwise") else 1.0
    shift = rng.uniform(*recipe.shift)
    off = rng.uniform(-recipe.off_axis, recipe.off_axis) * shift
    scale = rng.uniform(*recipe.scale)
    roll = math.radians(rng.uniform(*recipe.roll_deg))
    poses = []
    for t in progress:
        pose = Pose()
        if move == "pan":
            pose.pan = sign * math.atan(t * shift * width / focal)
            pose.tilt = math.atan(t * off * height / focal)
        elif move == "tilt":
            pose.tilt = -sign * math.atan(t * shift * height / focal)  # up is a positive tilt
            pose.pan = math.atan(t * off * width / focal)
        elif move == "roll":
            pose.roll = sign * roll * t
        elif move == "zoom":
            pose.zoom = (scale if sign > 0 else 1 / scale) ** t
        elif move == "truck":
            # The nearest plane slides by shift * width; deeper planes by less.
            pose.centre = (sign * t * shift * width * nearest / focal, t * off * height * nearest / focal, 0.0)
        elif move == "pedestal":
            # Moving up is towards -y.
            pose.centre = (t * off * width * nearest / focal, sign * t * shift * height * nearest / focal, 0.0)
        elif move == "dolly":
            # The nearest plane grows (or shrinks) by `scale` over the clip.
            travel = nearest * (1 - 1 / scale) if sign > 0 else -nearest * (scale - 1)
            pose.centre = (0.0, 0.0, t * travel)
        poses.append(pose)
    jitter, jitter_roll = 0.0, 0.0
    if move == "shake":
        jitter = rng.uniform(*recipe.shake)
        jitter_roll = math.radians(rng.uniform(*recipe.shake_roll_deg))
    elif move != "static" and rng.random() < recipe.handheld_chance:
        jitter = rng.uniform(0, recipe.handheld)
    if jitter > 0:
        for i, pose in enumerate(poses):
            dx, dy = rng.normal(0, jitter, 2)
            turn = rng.normal(0, jitter_roll) if jitter_roll else 0.0
            if still is not None and move == "shake" and still[i]:
                continue
            pose.pan += math.atan(dx * width / focal)
            pose.tilt += math.atan(dy * height / focal)
            pose.roll += turn
    return poses


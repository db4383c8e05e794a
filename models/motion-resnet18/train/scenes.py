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

        poses = _path(rng, LABELS[label], frames, width, height, focal, min(depths), recipe)
        return Clip(
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
        )

    def render(self, indices: list[int] | None = None, channels: int = 1) -> torch.Tensor:
        """Frames `indices` (all by default) as [T, channels, H, W] in [0, 1], quantised to 8 bits
        as decoded media would be. channels=1 gives BT.601 luma, 3 gives RGB."""
        indices = list(range(self.frames)) if indices is None else indices
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
        return self._look(out, indices)

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
        gain = torch.tensor([self.gain * (1 + self.flicker[i]) for i in indices]).view(-1, 1, 1, 1)
        frames = frames.clamp(0, 1) ** self.gamma * gain + self.offset
        if self.noise > 0:
            # Each frame's noise comes from its own stream, so a frame looks the same whichever
            # others are drawn with it.
            noise = np.stack(
                [np.random.default_rng([self.seed, i]).standard_normal(frames.shape[1:], dtype=np.float32) for i in indices]
            )
            frames = frames + self.noise * torch.from_numpy(noise)
        return torch.round(frames.clamp(0, 1) * 255) / 255


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
    rng: np.random.Generator, label: str, frames: int, width: int, height: int, focal: float, nearest: float, recipe: Recipe
) -> list[Pose]:
    """The camera's pose at every frame for one motion."""
    progress = _profile(rng, frames)
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
        for pose in poses:
            dx, dy = rng.normal(0, jitter, 2)
            pose.pan += math.atan(dx * width / focal)
            pose.tilt += math.atan(dy * height / focal)
            pose.roll += rng.normal(0, jitter_roll) if jitter_roll else 0.0
    return poses


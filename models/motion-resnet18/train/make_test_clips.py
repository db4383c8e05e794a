"""Writes the clips the test suite posts to the running server (tests/clips/): one animated GIF
per label, and PNG frames for a few labels, rendered by scenes.py in colour from seeds and
photographs that neither training nor evaluation used. Kept small (long side 112..160 px,
8..16 frames) so the repository stays light.

Beside them, `real-footage/`: a few clips with real footage's nuisances (letterbox and
pillarbox bars, burned-in graphics, an object crossing a still shot, heavy compression, motion
blur), as GIFs and, for the pillarboxed one, PNG frames. The test suite also feeds the
letterboxed and pillarboxed ones to the guest's and the training pipeline's preprocessing, which
must crop them alike.

The test requires every one of these clips to be labelled right, so they are drawn from the
clear end of the recipe: moves of at least a fifth of the frame (or x1.3, or 15 degrees),
planes well apart in depth, shake of at least 2 % of the frame, little noise. The held-out
evaluation (train.py evaluate) measures the model over the whole range.

    python make_test_clips.py      # run by hand after the generator changes; the files are committed
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

import numpy as np
from PIL import Image

import scenes

OUT = pathlib.Path(__file__).resolve().parents[3] / "tests" / "clips"
SEED = 2_000_000_000
PNG_LABELS = ("pan_left", "truck_right", "dolly_in")
# (label, nuisances, as PNG frames too): one clip each, from seeds after the clean ones'.
REAL_FOOTAGE = (
    ("pan_left", ("bars",), False),
    ("truck_right", ("bars", "overlay"), True),
    ("static", ("movers",), False),
    ("tilt_down", ("overlay",), False),
    ("zoom_in", ("compression",), False),
    ("pan_right", ("motion_blur",), False),
    ("dolly_out", ("movers",), False),
)
RECIPE = scenes.Recipe(
    long_side=(112, 160),
    frames=(8, 16),
    short_clip_chance=0.0,
    noise=(0.0, 0.01),
    shift=(0.2, 0.45),
    off_axis=0.1,
    scale=(1.3, 1.8),
    roll_deg=(15.0, 35.0),
    shake=(0.02, 0.03),
    handheld_chance=0.0,
    background_depth=(10.0, 30.0),
    foreground_depth=(1.0, 2.0),
)


def frames(label: str, nuisances: tuple[str, ...] = (), seed: int | None = None) -> list[Image.Image]:
    recipe = dataclasses.replace(RECIPE, nuisances=scenes.Nuisances(**{n: 1.0 for n in nuisances}))
    seed = SEED + scenes.LABELS.index(label) if seed is None else seed
    clip = scenes.Clip.draw(seed, scenes.LABELS.index(label), scenes.HELDOUT_PHOTOS, recipe)
    rgb = clip.render(channels=3).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.round(f * 255).astype(np.uint8)) for f in rgb]


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for label in scenes.LABELS:
        clip = frames(label)
        clip[0].save(OUT / f"{label}.gif", save_all=True, append_images=clip[1:], duration=40, loop=0)
        if label in PNG_LABELS:
            (OUT / label).mkdir()
            for i, frame in enumerate(clip):
                frame.save(OUT / label / f"{i:03d}.png")
    real = OUT / "real-footage"
    real.mkdir()
    for k, (label, nuisances, png) in enumerate(REAL_FOOTAGE):
        name = f"{label}.{'+'.join(nuisances)}"
        clip = frames(label, nuisances, SEED + 100 + k)
        clip[0].save(real / f"{name}.gif", save_all=True, append_images=clip[1:], duration=40, loop=0)
        if png:
            (real / name).mkdir()
            for i, frame in enumerate(clip):
                frame.save(real / name / f"{i:03d}.png")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(
        f"wrote {len(scenes.LABELS)} GIFs and {len(PNG_LABELS)} PNG clips, and {len(REAL_FOOTAGE)} with real "
        f"footage's nuisances, to {OUT} ({total / 1e6:.2f} MB)"
    )


if __name__ == "__main__":
    main()

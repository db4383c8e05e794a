"""Checks that the clip generator films what each label says, seen from behind the camera, and
that the training pipeline's preprocessing keeps the contract. Run: python -m unittest -v"""

import math
import unittest

import numpy as np
import torch

import preprocess
import scenes


def moved(clip: scenes.Clip, point: tuple[float, float], plane: int) -> np.ndarray:
    """Where a first-frame image point on `plane` is in the clip's last frame."""
    h = clip.poses[-1].homography(clip.focal, clip.depths[plane]).numpy()
    x, y, w = h @ np.array([point[0], point[1], 1.0])
    return np.array([x / w, y / w])


def draw(label: str, seed: int = 3) -> scenes.Clip:
    # No handheld jitter, so that only the labelled motion moves the picture.
    recipe = scenes.Recipe(handheld_chance=0.0, short_clip_chance=0.0, off_axis=0.0)
    return scenes.Clip.draw(seed, scenes.LABELS.index(label), recipe=recipe)


class Directions(unittest.TestCase):
    def test_turning_moves_every_depth_alike_and_moving_does_not(self):
        for label, axis, sign in (
            ("pan_left", 0, +1),  # the camera turns left: the picture slides right
            ("pan_right", 0, -1),
            ("tilt_up", 1, +1),  # the camera turns up: the picture slides down (y is down)
            ("tilt_down", 1, -1),
            ("truck_left", 0, +1),
            ("truck_right", 0, -1),
            ("pedestal_up", 1, +1),
            ("pedestal_down", 1, -1),
        ):
            with self.subTest(label=label):
                clip = draw(label)
                far = moved(clip, (0, 0), 0)[axis]
                near = moved(clip, (0, 0), len(clip.depths) - 1)[axis]
                self.assertGreater(sign * near, 1.0)
                if label.startswith(("pan", "tilt")):
                    self.assertAlmostEqual(far, near, places=3)
                else:
                    # Parallax: the near plane slides by more than the background.
                    self.assertGreater(abs(near), 1.5 * abs(far))

    def test_zoom_scales_every_depth_alike_and_dolly_near_ones_more(self):
        for label, grows in (("zoom_in", True), ("zoom_out", False), ("dolly_in", True), ("dolly_out", False)):
            with self.subTest(label=label):
                clip = draw(label)
                far = moved(clip, (10, 0), 0)[0] / 10
                near = moved(clip, (10, 0), len(clip.depths) - 1)[0] / 10
                self.assertEqual(near > 1.05, grows)
                self.assertEqual(near < 0.95, not grows)
                if label.startswith("zoom"):
                    self.assertAlmostEqual(far, near, places=3)
                else:
                    self.assertGreater(abs(math.log(near)), 1.5 * abs(math.log(far)))

    def test_a_clockwise_roll_turns_the_picture_counterclockwise(self):
        # On screen (y down), a point right of centre turning counter-clockwise goes up (-y).
        self.assertLess(moved(draw("roll_clockwise"), (20, 0), 0)[1], -1.0)
        self.assertGreater(moved(draw("roll_counterclockwise"), (20, 0), 0)[1], 1.0)

    def test_static_stays_and_shake_jitters(self):
        clip = draw("static")
        self.assertTrue(all(np.allclose(moved(clip, (5, 5), p), (5, 5)) for p in range(len(clip.depths))))
        shake = draw("shake")
        offsets = [
            np.linalg.norm(
                (pose.homography(shake.focal, shake.depths[0]).numpy() @ np.array([0, 0, 1.0]))[:2]
            )
            for pose in shake.poses
        ]
        self.assertGreater(max(offsets), 0.5)

    def test_rendered_frames_move_the_way_the_homography_says(self):
        # Phase correlation between the first and last frames of a pan to the left: the
        # picture must have slid right, by the amount the pose gives.
        clip = draw("pan_left", seed=11)
        frames = clip.render([0, clip.frames - 1])[:, 0].numpy()
        a, b = (np.fft.fft2(f - f.mean()) for f in frames)
        cross = b * np.conj(a)
        peak = np.unravel_index(np.argmax(np.abs(np.fft.ifft2(cross / (np.abs(cross) + 1e-9)))), frames[0].shape)
        dy, dx = (p if p <= n // 2 else p - n for p, n in zip(peak, frames[0].shape))
        expected = moved(clip, (0, 0), 0)[0]
        self.assertGreater(dx, 0)
        self.assertLess(abs(dx - expected), 2.0, (dx, expected))
        self.assertLessEqual(abs(dy), 1)


class Determinism(unittest.TestCase):
    def test_a_seed_makes_the_same_clip(self):
        a = scenes.Clip.draw(42, 5).render([0, 3])
        b = scenes.Clip.draw(42, 5).render([0, 3])
        self.assertTrue(torch.equal(a, b))

    def test_a_frame_looks_the_same_whichever_frames_are_drawn_with_it(self):
        clip = scenes.Clip.draw(7, 15)
        self.assertTrue(torch.equal(clip.render([2])[0], clip.render([0, 1, 2])[2]))


class Preprocessing(unittest.TestCase):
    def test_sampling_follows_the_contract(self):
        self.assertEqual(preprocess.sample_indices(8), list(range(8)))
        self.assertEqual(preprocess.sample_indices(1), [0] * 8)
        self.assertEqual(preprocess.sample_indices(4), [0, 0, 1, 1, 2, 2, 3, 3])
        self.assertEqual(preprocess.sample_indices(30), [round(i * 29 / 7) for i in range(8)])

    def test_resize_keeps_a_flat_frame_flat_and_matches_pillow(self):
        from PIL import Image

        self.assertTrue(np.allclose(preprocess.resize(np.full((90, 160), 0.25, np.float32)), 0.25, atol=1e-6))
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (181, 243), dtype=np.uint8)
        ours = preprocess.resize(pixels.astype(np.float32) / 255) * 255
        pillow = np.asarray(Image.fromarray(pixels).resize((112, 112), Image.BILINEAR), dtype=np.float32)
        # Pillow rounds to 8 bits and places its taps by half a sample differently at the edges.
        self.assertLess(np.mean(np.abs(ours - pillow)), 1.0)


if __name__ == "__main__":
    unittest.main()

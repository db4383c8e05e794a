"""Writes the example clips used by README's curl examples: one synthetic camera pan (the
picture slides right as the camera turns left) in each input form motion-host accepts.

    python make_examples.py     # needs Pillow; writes clip.gif, clip.y4m, frames/*.png
"""

import pathlib
import subprocess

from PIL import Image, ImageDraw

HERE = pathlib.Path(__file__).resolve().parent
W, H, N = 160, 90, 16


def scene(width: int) -> Image.Image:
    """A wide striped landscape with some blocks, to pan across."""
    img = Image.new("RGB", (width, H), (90, 140, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 55, width, H], fill=(60, 120, 50))
    for x in range(0, width, 23):
        draw.rectangle([x, 30 + (x * 7) % 20, x + 11, 70], fill=((x * 5) % 255, 80, 60))
    return img


def frames() -> list:
    world = scene(W + 4 * N)
    # The camera turns left: the window moves left, so content slides right.
    return [world.crop((4 * (N - 1 - t), 0, 4 * (N - 1 - t) + W, H)) for t in range(N)]


def main() -> None:
    clip = frames()
    (HERE / "frames").mkdir(exist_ok=True)
    for i, frame in enumerate(clip):
        frame.save(HERE / "frames" / f"{i:03d}.png")
    clip[0].save(HERE / "clip.gif", save_all=True, append_images=clip[1:], duration=40, loop=0)
    with open(HERE / "clip.y4m", "wb") as out:
        out.write(f"YUV4MPEG2 W{W} H{H} F25:1 Ip A1:1 C420jpeg\n".encode())
        for frame in clip:
            y, cb, cr = frame.convert("YCbCr").split()
            out.write(b"FRAME\n")
            out.write(y.tobytes())
            out.write(cb.resize((W // 2, H // 2)).tobytes())
            out.write(cr.resize((W // 2, H // 2)).tobytes())
    # The same clip as H.264 in MP4, as a camera or phone would send it (needs ffmpeg).
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(HERE / "clip.y4m"), "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-map_metadata", "-1", "-fflags", "+bitexact",
                    "-flags:v", "+bitexact", str(HERE / "clip.mp4")], check=True)


if __name__ == "__main__":
    main()

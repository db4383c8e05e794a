"""Writes the fuzzers' seed corpus: small, valid examples of every format and variant the
guest reads, and of the requests the host parses. Run: python3 fuzz/make_seeds.py"""

import io
import pathlib
import subprocess
import tempfile

from PIL import Image

ROOT = pathlib.Path(__file__).parent / "seeds"


def image(mode, size=(8, 6)):
    img = Image.new(mode, size)
    for x in range(size[0]):
        for y in range(size[1]):
            v = (x * 31 + y * 17) % 256
            img.putpixel((x, y), {"L": v, "LA": (v, 200), "RGB": (v, 255 - v, x * 20),
                                  "RGBA": (v, 255 - v, y * 30, 128), "P": v % 16,
                                  "I;16": v * 257}[mode])
    return img


def save(img, fmt, **kw):
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def write(target, name, data):
    path = ROOT / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def y4m(w, h, colour, frames):
    chroma = {"mono": 0, "420jpeg": 2 * ((w + 1) // 2) * ((h + 1) // 2),
              "422": 2 * ((w + 1) // 2) * h, "444": 2 * w * h}[colour]
    out = f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C{colour}\n".encode()
    for f in range(frames):
        out += b"FRAME\n" + bytes((i * 7 + f * 40) % 256 for i in range(w * h)) + b"\x80" * chroma
    return out


def multipart(parts):
    body = b""
    for i, (ctype, data) in enumerate(parts):
        body += (f"--B\r\nContent-Disposition: form-data; name=\"f{i}\"; filename=\"{i}\"\r\n"
                 f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return body + b"--B--\r\n"


# Small H.264 files as libx264 writes them: each profile and entropy coder, B-frames, a short
# keyframe interval, and QuickTime's container.
MP4_VARIANTS = {
    "baseline.mp4": ["-profile:v", "baseline"],
    "main-bframes.mp4": ["-profile:v", "main", "-bf", "2", "-g", "4"],
    "high-cabac.mp4": ["-profile:v", "high", "-bf", "3"],
    "high-cavlc.mp4": ["-profile:v", "high", "-x264-params", "cabac=0"],
    "quicktime.mov": ["-profile:v", "high"],
}


def mp4(name, args):
    """One MP4 of 6 frames of 48x32 made by ffmpeg from a generated pattern."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / name
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=48x32:rate=10:duration=0.6",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", *args, str(out)], check=True)
        return out.read_bytes()


def main():
    for mode in ["L", "LA", "RGB", "RGBA", "P"]:
        write("decode_png", f"{mode}.png", save(image(mode), "PNG"))
    write("decode_png", "16bit.png", save(image("I;16"), "PNG"))
    write("decode_png", "wide.png", save(image("RGB", (16, 9)), "PNG"))
    write("decode_jpeg", "rgb.jpg", save(image("RGB"), "JPEG", quality=80))
    write("decode_jpeg", "grey.jpg", save(image("L"), "JPEG"))
    write("decode_jpeg", "progressive.jpg", save(image("RGB", (16, 9)), "JPEG", progressive=True))
    frames = [image("RGB"), image("RGB").rotate(90), image("RGB").transpose(Image.FLIP_LEFT_RIGHT)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    write("decode_gif", "three.gif", out.getvalue())
    write("decode_gif", "one.gif", save(image("P"), "GIF"))
    for colour in ["mono", "420jpeg", "422", "444"]:
        write("decode_y4m", f"{colour}.y4m", y4m(5, 3, colour, 3))
    for name, args in MP4_VARIANTS.items():
        data = mp4(name, args)
        write("decode_mp4", name, data)
        write("demux_mp4", name, data)
    png = save(image("RGB"), "PNG")
    write("request", "multipart", b"multipart/form-data; boundary=B\n3\n"
          + multipart([("image/png", png), ("image/png", png)]))
    write("request", "plain", b"image/png\n16\n" + png)
    write("request", "gif", b"image/gif; charset=x\n\n" + (ROOT / "decode_gif" / "three.gif").read_bytes())


if __name__ == "__main__":
    main()

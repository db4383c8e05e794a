#!/usr/bin/env bash
# Makes the H.264 files inside the host's video/mp4 and video/quicktime validation samples
# (runtime/src/media.rs): 16 frames of 640×360, a camera panning across ffmpeg's test pattern,
# as libx264 writes them by default (High profile, CABAC, B-frames), with a keyframe every 8
# frames so that showing the sampled frames means decoding from keyframes and through
# P- and B-frames. Run it from anywhere; it needs ffmpeg with libx264.
set -euo pipefail
cd "$(dirname "$0")"
for out in pan.mp4 pan.mov; do
    ffmpeg -v error -y -f lavfi -i testsrc2=size=1280x720:rate=25 \
        -vf "crop=640:360:x=t*400:y=t*100" -frames:v 16 \
        -c:v libx264 -profile:v high -pix_fmt yuv420p -g 8 -bf 3 -crf 18 \
        -movflags +faststart -map_metadata -1 -fflags +bitexact -flags:v +bitexact "$out"
done

//! MP4 and QuickTime with H.264, end to end. Fixtures are made here by Debian's ffmpeg (libx264)
//! from the test clips, at several profiles, sizes, frame rates and keyframe intervals, and
//! ffmpeg's own decoding is the reference:
//!
//! - the guest's decoder (the SDK, built natively) gives Y planes identical to ffmpeg's, and
//!   decoding only the sampled frames from their keyframes gives the same pictures as decoding
//!   every frame;
//! - the server classifies each MP4 as it classifies the Y4M that ffmpeg decodes from that same
//!   file, to 1e-4 on every label, through `/v1` and `/v2`;
//! - what it cannot read is a 415 that names it, and a broken file a 422 that says why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use motion_guest_sdk::decode::{Clip, Limits, Media};
use motion_guest_sdk::preprocess::sample_indices;
use motion_host_tests::{LABELS, Server, ServerBuilder, assert_error, json, repo_root};

/// One fixture: a file name, the test clip it is made from, and ffmpeg's input and output
/// options.
struct Variant {
    name: &'static str,
    clip: &'static str,
    input: &'static [&'static str],
    output: &'static [&'static str],
}

const X264: &[&str] = &["-c:v", "libx264", "-pix_fmt", "yuv420p"];

/// H.264 as users send it: each profile and entropy coder, B-frames, sizes that are not
/// whole macroblocks (cropped), frame rates from 12 to 30, keyframe intervals from 4 to the
/// whole clip, and QuickTime's container.
const VARIANTS: &[Variant] = &[
    Variant {
        name: "baseline-160x90-25fps.mp4",
        clip: "pan_left.gif",
        input: &[],
        output: &["-vf", "scale=160:90", "-profile:v", "baseline"],
    },
    Variant {
        name: "main-bframes-200x112-12fps.mp4",
        clip: "tilt_up.gif",
        input: &[],
        output: &["-vf", "scale=200:112", "-r", "12", "-profile:v", "main", "-bf", "2"],
    },
    Variant {
        name: "high-cabac-gop4-320x180-30fps.mp4",
        clip: "zoom_in.gif",
        input: &["-stream_loop", "3"],
        output: &["-vf", "scale=320:180", "-r", "30", "-profile:v", "high", "-g", "4", "-bf", "3"],
    },
    Variant {
        name: "high-cavlc-176x144.mp4",
        clip: "truck_right.gif",
        input: &[],
        output: &["-vf", "scale=176:144", "-profile:v", "high", "-x264-params", "cabac=0"],
    },
    Variant {
        name: "high-gop7-faststart-256x144.mp4",
        clip: "dolly_in.gif",
        input: &["-stream_loop", "2"],
        output: &["-vf", "scale=256:144", "-profile:v", "high", "-g", "7", "-movflags", "+faststart"],
    },
    Variant {
        name: "quicktime-high-160x90.mov",
        clip: "roll_clockwise.gif",
        input: &[],
        output: &["-vf", "scale=160:90", "-profile:v", "high"],
    },
];

/// Files this guest must refuse as unsupported: (file, ffmpeg output options, what the 415
/// names).
const UNSUPPORTED: &[(&str, &[&str], &str)] = &[
    ("hevc.mp4", &["-c:v", "libx265", "-x265-params", "log-level=error"], "HEVC"),
    ("vp9.mp4", &["-c:v", "libvpx-vp9"], "VP9"),
    ("av1.mp4", &["-c:v", "libaom-av1", "-cpu-used", "8"], "AV1"),
    ("10bit.mp4", &["-c:v", "libx264", "-pix_fmt", "yuv420p10le"], "bit depth"),
    ("422.mp4", &["-c:v", "libx264", "-pix_fmt", "yuv422p"], "4:2:0"),
    ("fragmented.mp4", &["-c:v", "libx264", "-movflags", "frag_keyframe+empty_moov"], "fragmented"),
];

fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg (scripts/test installs it)");
    assert!(output.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// The fixtures, made once per test binary into a directory that lives as long as it.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let clips = repo_root().join("tests/clips");
        for v in VARIANTS {
            let clip = clips.join(v.clip);
            let out = dir.path().join(v.name);
            let mut args: Vec<&str> = v.input.to_vec();
            args.extend(["-i", clip.to_str().unwrap()]);
            args.extend(v.output);
            args.extend(X264);
            args.push(out.to_str().unwrap());
            ffmpeg(&args);
        }
        let clip = clips.join("pan_left.gif");
        for (name, codec, _) in UNSUPPORTED {
            let out = dir.path().join(name);
            let mut args = vec!["-i", clip.to_str().unwrap(), "-vf", "scale=160:90"];
            args.extend(*codec);
            args.push(out.to_str().unwrap());
            ffmpeg(&args);
        }
        dir
    })
    .path()
}

fn fixture(name: &str) -> (PathBuf, Vec<u8>) {
    let path = fixtures().join(name);
    let data = std::fs::read(&path).unwrap();
    (path, data)
}

fn media_type(name: &str) -> &'static str {
    if name.ends_with(".mov") { "video/quicktime" } else { "video/mp4" }
}

/// ffmpeg's decoding of `path`: each frame's Y plane, in display order, and the frame size.
fn ffmpeg_luma(path: &Path) -> (Vec<Vec<u8>>, usize, usize) {
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(probe.stdout).unwrap();
    let (w, h) = text.trim().split_once(',').unwrap();
    let (w, h): (usize, usize) = (w.parse().unwrap(), h.parse().unwrap());
    let raw = ffmpeg(&["-i", path.to_str().unwrap(), "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"]);
    let frame = w * h + 2 * w.div_ceil(2) * h.div_ceil(2);
    assert_eq!(raw.len() % frame, 0);
    (raw.chunks_exact(frame).map(|f| f[..w * h].to_vec()).collect(), w, h)
}

/// The guest's decoding of `wanted` frames of `data`, as bytes, by frame number.
fn guest_luma(name: &str, data: &[u8], wanted: &[usize]) -> Vec<(usize, Vec<u8>)> {
    let media = [Media { content_type: media_type(name), data }];
    let limits = Limits::default();
    let clip = Clip::open(&media, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut frames = clip.decode(wanted, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
    frames.sort_by_key(|(i, _)| *i);
    frames
        .into_iter()
        .map(|(i, f)| (i, f.luma.iter().map(|&v| (v * 255.0).round() as u8).collect()))
        .collect()
}

#[test]
fn h264_decodes_exactly_as_ffmpeg_does_and_only_from_the_keyframes_it_needs() {
    for v in VARIANTS {
        let (path, data) = fixture(v.name);
        let (reference, w, h) = ffmpeg_luma(&path);
        let all: Vec<usize> = (0..reference.len()).collect();
        let decoded = guest_luma(v.name, &data, &all);
        assert_eq!(decoded.len(), reference.len(), "{}: frames", v.name);
        for ((i, ours), theirs) in decoded.iter().zip(&reference) {
            assert_eq!(ours.len(), w * h, "{}: frame {i} size", v.name);
            assert!(ours == theirs, "{}: frame {i}'s Y plane differs from ffmpeg's", v.name);
        }
        // The sampled frames alone, each decoded from the keyframe before it.
        let mut sampled = sample_indices(reference.len()).to_vec();
        sampled.dedup();
        for (i, ours) in guest_luma(v.name, &data, &sampled) {
            assert!(ours == reference[i], "{}: sampled frame {i} differs when decoded alone", v.name);
        }
    }
}

fn server() -> Server {
    ServerBuilder::new().start()
}

fn classify(server: &Server, content_type: &str, body: Vec<u8>) -> serde_json::Value {
    let response = server
        .client()
        .post(server.url("/v1/classify?top_k=16"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap();
    let (status, body) = json(response);
    assert_eq!(status, 200, "{body}");
    body
}

fn scores(answer: &serde_json::Value) -> Vec<f64> {
    let mut by_label = vec![f64::NAN; LABELS.len()];
    for entry in answer["top_k"].as_array().unwrap() {
        let i = LABELS.iter().position(|l| *l == entry["label"]).unwrap();
        by_label[i] = entry["score"].as_f64().unwrap();
    }
    by_label
}

#[test]
fn an_mp4_scores_as_the_y4m_ffmpeg_decodes_from_it() {
    let server = server();
    for v in VARIANTS {
        let (path, data) = fixture(v.name);
        let y4m = ffmpeg(&["-i", path.to_str().unwrap(), "-f", "yuv4mpegpipe", "-pix_fmt", "yuv420p", "-"]);
        let from_mp4 = classify(&server, media_type(v.name), data);
        let from_y4m = classify(&server, "video/x-yuv4mpeg", y4m);
        assert_eq!(from_mp4["frames_total"], from_y4m["frames_total"], "{}", v.name);
        assert_eq!(from_mp4["frames_used"], from_y4m["frames_used"], "{}", v.name);
        assert_eq!(from_mp4["label"], from_y4m["label"], "{}", v.name);
        for (label, (a, b)) in LABELS.iter().zip(scores(&from_mp4).iter().zip(scores(&from_y4m))) {
            assert!((a - b).abs() <= 1e-4, "{}: {label} scores {a} from MP4, {b} from Y4M", v.name);
        }
    }
}

#[test]
fn oip_classifies_an_mp4_told_by_its_bytes() {
    let server = server();
    let (_, data) = fixture(VARIANTS[0].name);
    let v1 = classify(&server, "video/mp4", data.clone());
    // One BYTES element with the binary tensor extension: a 4-byte length, then the file.
    let header = serde_json::json!({
        "inputs": [{"name": "media", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": data.len() + 4}}],
        "outputs": [{"name": "label"}, {"name": "scores"}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(&data);
    let response = server
        .client()
        .post(server.url("/v2/models/motion-classifier/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .unwrap();
    let (status, v2) = json(response);
    assert_eq!(status, 200, "{v2}");
    let outputs = v2["outputs"].as_array().unwrap();
    let label = outputs.iter().find(|o| o["name"] == "label").unwrap();
    assert_eq!(label["data"][0], v1["label"]);
    let scores_v2 =
        outputs.iter().find(|o| o["name"] == "scores").unwrap()["data"].as_array().unwrap().clone();
    for (a, b) in scores_v2.iter().zip(scores(&v1)) {
        assert!((a.as_f64().unwrap() - b).abs() < 1e-6);
    }
}

#[test]
fn unsupported_video_is_415_naming_it_and_broken_video_is_422() {
    let server = server();
    let post = |content_type: &str, body: Vec<u8>| {
        server
            .client()
            .post(server.url("/v1/classify"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap()
    };
    for (name, _, names) in UNSUPPORTED {
        let (_, data) = fixture(name);
        assert_error(post("video/mp4", data), 415, "unsupported_media_type", &[names, "H.264", "ffmpeg -i"]);
    }

    // Faststart puts the tables first: cut in the middle, the samples are missing.
    let (_, faststart) = fixture("high-gop7-faststart-256x144.mp4");
    let cut = faststart[..faststart.len() / 2].to_vec();
    assert_error(post("video/mp4", cut), 422, "unprocessable_media", &["MP4", "truncated", "'mdat'"]);
    // ffmpeg's default puts them last: cut near the end, the tables are missing.
    let (_, plain) = fixture(VARIANTS[0].name);
    let cut = plain[..plain.len() - 200].to_vec();
    assert_error(post("video/mp4", cut), 422, "unprocessable_media", &["MP4", "truncated", "'moov'"]);
    // A sample whose bytes are not H.264.
    let mut garbled = faststart.clone();
    let tail = garbled.len() - 2000;
    garbled[tail..].iter_mut().for_each(|b| *b = 0xA5);
    let response = post("video/mp4", garbled);
    assert!([200, 422].contains(&response.status().as_u16()), "a garbled picture: {}", response.status());
    // The server is still serving.
    let (_, ok) = fixture(VARIANTS[0].name);
    assert_eq!(classify(&server, "video/mp4", ok)["frames_total"], 10);
}

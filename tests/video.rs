//! MP4 and QuickTime with H.264, end to end. Fixtures are made here by Debian's ffmpeg (libx264)
//! from the test clips, at several profiles, sizes, frame rates and keyframe intervals, and
//! ffmpeg's own decoding is the reference:
//!
//! - the guest's decoder (the SDK, built natively) gives Y planes identical to ffmpeg's, and
//!   decoding only the sampled frames from their keyframes gives the same pictures as decoding
//!   every frame;
//! - the server classifies each MP4 as it classifies the Y4M that ffmpeg decodes from that same
//!   file, to 1e-4 on every label, through `/v1` and `/v2`;
//! - what it cannot read is a 415 that names it, and a broken file a 422 that says why;
//! - a long video answers as a timeline: each window scores as that stretch of the video sent
//!   alone, through `/v1` and `/v2`, within a cap the server states; a `motion:guest@0.1.0`
//!   guest built before the timeline existed still answers, and says it has none.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use motion_guest_sdk::decode::{Clip, Limits, Media};
use motion_guest_sdk::preprocess::sample_indices;
use motion_host_tests::{LABELS, Server, ServerBuilder, assert_error, json, repo_root, test_guest};

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

/// `/v1/classify` with every label's score; the 200 answer.
fn classify(server: &Server, content_type: &str, body: Vec<u8>) -> serde_json::Value {
    let (status, answer) = json(classify_at(server, "top_k=16", content_type, body));
    assert_eq!(status, 200, "{answer}");
    answer
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

/// `/v2`'s `motion-classifier` on one file, sent raw with the binary tensor extension (a
/// 4-byte length, then the file) and told by its bytes, with the request `parameters`; the 200
/// answer.
fn infer_media(server: &Server, parameters: serde_json::Value, media: &[u8]) -> serde_json::Value {
    let header = serde_json::json!({
        "parameters": parameters,
        "inputs": [{"name": "media", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": media.len() + 4}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&(media.len() as u32).to_le_bytes());
    body.extend_from_slice(media);
    let response = server
        .client()
        .post(server.url("/v2/models/motion-classifier/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .unwrap();
    let (status, answer) = json(response);
    assert_eq!(status, 200, "{answer}");
    answer
}

#[test]
fn oip_classifies_an_mp4_told_by_its_bytes() {
    let server = server();
    let (_, data) = fixture(VARIANTS[0].name);
    let v1 = classify(&server, "video/mp4", data.clone());
    // One BYTES element with the binary tensor extension: a 4-byte length, then the file.
    let v2 = infer_media(&server, serde_json::json!({}), &data);
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

/// Three stretches of camera motion, 2 s each at 25 frames a second, one after the other: the
/// video (MP4, a keyframe every 30 frames so no window starts on one) and each stretch alone
/// (Y4M, as ffmpeg decodes it from that same MP4).
fn three_motions() -> (Vec<u8>, Vec<Vec<u8>>) {
    let dir = fixtures();
    let clips = repo_root().join("tests/clips");
    let mut args: Vec<String> = Vec::new();
    for clip in ["pan_left.gif", "zoom_in.gif", "tilt_up.gif"] {
        args.extend(["-stream_loop", "-1", "-t", "2", "-i"].map(String::from));
        args.push(clips.join(clip).display().to_string());
    }
    let filter = "[0:v]fps=25,scale=320:180,setsar=1[a];[1:v]fps=25,scale=320:180,setsar=1[b];\
                  [2:v]fps=25,scale=320:180,setsar=1[c];[a][b][c]concat=n=3:v=1[v]";
    let out = dir.join("three-motions.mp4");
    args.extend(["-filter_complex", filter, "-map", "[v]", "-g", "30", "-bf", "2"].map(String::from));
    args.extend(X264.iter().map(|a| a.to_string()));
    args.push(out.display().to_string());
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stretches = (0..3)
        .map(|i| {
            let select = format!("select='between(n,{},{})',setpts=N/25/TB", i * 50, i * 50 + 49);
            ffmpeg(&[
                "-i",
                out.to_str().unwrap(),
                "-vf",
                &select,
                "-f",
                "yuv4mpegpipe",
                "-pix_fmt",
                "yuv420p",
                "-",
            ])
        })
        .collect();
    (std::fs::read(&out).unwrap(), stretches)
}

fn classify_at(
    server: &Server,
    query: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::blocking::Response {
    server
        .client()
        .post(server.url(&format!("/v1/classify?{query}")))
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap()
}

#[test]
fn a_long_video_is_a_timeline_whose_windows_score_as_each_stretch_alone() {
    let server = server();
    let (video, stretches) = three_motions();
    let (status, answer) = json(classify_at(&server, "segment=2&top_k=16", "video/mp4", video.clone()));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["frames_total"], 150);
    let segments = answer["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 3, "{answer}");
    for (i, (segment, stretch)) in segments.iter().zip(stretches).enumerate() {
        assert_eq!(segment["start_frame"], i * 50);
        assert_eq!(segment["end_frame"], i * 50 + 50);
        assert_eq!(segment["start_s"].as_f64(), Some(i as f64 * 2.0));
        assert_eq!(segment["end_s"].as_f64(), Some(i as f64 * 2.0 + 2.0));
        let alone = classify(&server, "video/x-yuv4mpeg", stretch);
        assert_eq!(segment["label"], alone["label"], "window {i}");
        for (label, (a, b)) in LABELS.iter().zip(scores(segment).iter().zip(scores(&alone))) {
            assert!((a - b).abs() <= 1e-4, "window {i}: {label} scores {a} in the timeline, {b} alone");
        }
    }
    // The whole clip's answer is the one it gives without a timeline.
    let whole = classify(&server, "video/mp4", video.clone());
    assert!(whole.get("segments").is_none(), "no timeline was asked for: {whole}");
    assert_eq!(answer["label"], whole["label"]);
    for (a, b) in scores(&answer).iter().zip(scores(&whole)) {
        assert!((a - b).abs() <= 1e-4, "the whole clip scores {a} with a timeline, {b} without");
    }

    // By frames: 150 in 40s is 40, 40, 40, 30 (over half a window: kept).
    let (status, by_frames) = json(classify_at(&server, "segment_frames=40", "video/mp4", video.clone()));
    assert_eq!(status, 200, "{by_frames}");
    let bounds: Vec<(u64, u64)> = by_frames["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["start_frame"].as_u64().unwrap(), s["end_frame"].as_u64().unwrap()))
        .collect();
    assert_eq!(bounds, [(0, 40), (40, 80), (80, 120), (120, 150)]);
    // 2.5 s windows: the last 1 s is under half a window and joins the one before.
    let (_, joined) = json(classify_at(&server, "segment=2.5", "video/mp4", video));
    let last = joined["segments"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["start_s"].as_f64(), last["end_s"].as_f64(), last["end_frame"].as_u64()),
        (Some(2.5), Some(6.0), Some(150))
    );
}

#[test]
fn a_timeline_of_frames_has_no_times_and_seconds_need_timed_media() {
    let server = server();
    let frames = motion_host_tests::clips::png_frames(12, 96, 64);
    let mut form = reqwest::blocking::multipart::Form::new();
    for (i, png) in frames.into_iter().enumerate() {
        form = form.part(
            "frame",
            reqwest::blocking::multipart::Part::bytes(png)
                .file_name(format!("{i}.png"))
                .mime_str("image/png")
                .unwrap(),
        );
    }
    let response =
        server.client().post(server.url("/v1/classify?segment_frames=6")).multipart(form).send().unwrap();
    let (status, answer) = json(response);
    assert_eq!(status, 200, "{answer}");
    let segments = answer["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2);
    assert!(segments.iter().all(|s| s["start_s"].is_null() && s["end_s"].is_null()), "{answer}");

    let png = motion_host_tests::clips::png(&motion_host_tests::clips::frame(96, 64, 0));
    assert_error(
        classify_at(&server, "segment=2", "image/png", png.clone()),
        400,
        "bad_request",
        &["timed media", "segment_frames"],
    );
    for (query, words) in [
        ("segment=0.2", &["segment", "0.5 to 60"][..]),
        ("segment=90", &["0.5 to 60"]),
        ("segment_frames=0", &["segment_frames", "1 or more"]),
        ("segment=2&segment_frames=8", &["not both"]),
    ] {
        assert_error(classify_at(&server, query, "image/png", png.clone()), 400, "bad_request", words);
    }
}

#[test]
fn windows_past_the_cap_from_the_per_request_limits_are_a_400_naming_it() {
    // 4 MiB of model input a request is 10 rows of 8×112×112 FP32: the whole clip and 9 windows.
    let server = ServerBuilder::new().arg(&format!("--guest-max-nn-bytes={}", 4 << 20)).start();
    let (_, data) = fixture("high-cabac-gop4-320x180-30fps.mp4");
    let response = classify_at(&server, "segment_frames=1", "video/mp4", data.clone());
    assert_error(response, 400, "bad_request", &["windows of 1 frames", "at most 9"]);
    let (status, answer) = json(classify_at(&server, "segment_frames=8", "video/mp4", data));
    assert_eq!(status, 200, "{answer}");
    assert!(answer["segments"].as_array().unwrap().len() <= 9);
}

#[test]
fn a_guest_built_for_the_first_world_still_answers_and_says_it_has_no_timeline() {
    let old = repo_root().join("tests/guests/motion-0.1.0.wasm");
    let server = ServerBuilder::new()
        .guest(&format!("motion={}", motion_host_tests::guest_wasm().display()))
        .arg(&format!("--guest=old={}", old.display()))
        .start();
    let guests = json(server.get("/v1/guests")).1;
    let world = |name: &str| {
        guests["guests"].as_array().unwrap().iter().find(|g| g["name"] == name).unwrap()["world"].clone()
    };
    assert_eq!(world("old"), "motion:guest@0.1.0");
    assert_eq!(world("motion"), "motion:guest@0.2.0");
    let gif = std::fs::read(repo_root().join("tests/clips/pan_left.gif")).unwrap();
    let post = |path: &str| {
        server
            .client()
            .post(server.url(path))
            .header("content-type", "image/gif")
            .body(gif.clone())
            .send()
            .unwrap()
    };
    let (status, old_answer) = json(post("/v1/guests/old/classify?top_k=16"));
    assert_eq!(status, 200, "{old_answer}");
    assert!(old_answer.get("segments").is_none());
    let (_, new_answer) = json(post("/v1/guests/motion/classify?top_k=16"));
    assert_eq!(old_answer["label"], new_answer["label"]);
    for (a, b) in scores(&old_answer).iter().zip(scores(&new_answer)) {
        assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
    }
    assert_error(
        post("/v1/guests/old/classify?segment=1"),
        400,
        "bad_request",
        &["motion:guest@0.1.0", "no timeline"],
    );
    // The hostile test guest is built from the first world's WIT too.
    assert!(test_guest("hostile").is_file());
}

#[test]
fn oip_answers_a_timeline_as_two_more_outputs() {
    let server = server();
    let (video, _) = three_motions();
    let v2 = infer_media(&server, serde_json::json!({"segment": 2}), &video);
    let output =
        |name: &str| v2["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap().clone();
    let table = output("segments");
    assert_eq!(table["datatype"], "FP32");
    assert_eq!(table["shape"], serde_json::json!([3, 4 + LABELS.len()]));
    let rows: Vec<f64> = table["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(&rows[..4], &[0.0, 50.0, 0.0, 2.0]);
    let labels = output("segment_labels");
    assert_eq!(labels["shape"], serde_json::json!([3]));
    let (_, v1) = json(classify_at(&server, "segment=2&top_k=16", "video/mp4", video));
    for (i, segment) in v1["segments"].as_array().unwrap().iter().enumerate() {
        assert_eq!(labels["data"][i], segment["label"]);
        let row = &rows[i * (4 + LABELS.len())..(i + 1) * (4 + LABELS.len())];
        for (a, b) in row[4..].iter().zip(scores(segment)) {
            assert!((a - b).abs() < 1e-6);
        }
    }
    let metadata = json(server.get("/v2/models/motion-classifier")).1;
    let names: Vec<&str> =
        metadata["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["label", "scores", "segments", "segment_labels"]);
}

//! The MP4 decoder natively: the default guest's MP4 path (`motion_guest_sdk`, the code the
//! guest runs in wasm) compiled for this machine, on one file. Times decoding every frame, and
//! decoding and resizing every frame to the model's planes (what a timeline in windows of 8
//! frames asks of the guest); prints the medians as JSON.
//!
//!     mp4time clip.mp4 --iterations 5

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use motion_guest_sdk::decode::{Clip, Limits, Media};

#[derive(Parser)]
#[command(about = "Times the guest's MP4 decoding, built natively")]
struct Args {
    /// An MP4 with H.264 video.
    file: PathBuf,
    /// Timed runs of each measurement.
    #[arg(long, default_value_t = 5)]
    iterations: usize,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let media = [Media { content_type: "video/mp4", data: &data }];
    let limits = Limits::default();
    let clip = Clip::open(&media, &limits).map_err(|e| anyhow::anyhow!("{e}"))?;
    let frames = clip.frame_count();
    let all: Vec<usize> = (0..frames).collect();
    let time = |work: &dyn Fn()| {
        median(
            (0..args.iterations)
                .map(|_| {
                    let started = Instant::now();
                    work();
                    started.elapsed().as_secs_f64() * 1000.0
                })
                .collect(),
        )
    };
    let decode = time(&|| {
        clip.decode_each(&all, &limits, |_, frame| drop(frame)).expect("decodes");
    });
    let planes = time(&|| {
        clip.planes(&all, &limits).expect("decodes");
    });
    let out = serde_json::json!({
        "frames": frames,
        "decode_ms": decode,
        "decode_ms_per_frame": decode / frames as f64,
        "planes_ms": planes,
        "planes_ms_per_frame": planes / frames as f64,
    });
    println!("{out}");
    Ok(())
}

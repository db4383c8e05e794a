//! The benchmark's floor: what the work costs with no server around it. Times a bare tch
//! forward pass of the model at batch 1 and 16 (or `--batch` sizes), and the default guest's preprocessing
//! (`motion_guest_sdk::prepare`, the code the guest runs in wasm) compiled natively, on the
//! benchmark clip; writes medians as JSON.
//!
//!     floor --model models/motion-resnet18/model.pt --png a.png --png b.png --y4m clip.y4m --out f.json
//!
//! With `--precision bf16` the forward pass runs as the server's `--precision bf16` runs it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use motion_guest_sdk::decode::{Limits, Media};
use motion_model::{BareModel, Precision};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Times the bare model and the native preprocessing")]
struct Args {
    /// The TorchScript model.
    #[arg(long)]
    model: PathBuf,
    /// libtorch intra-op threads (as the server's --inference-threads).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// What the weights and the forward pass run in (as the server's --precision).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Run the module as its file has it (as the server's --plain-model), not optimised.
    #[arg(long)]
    plain_model: bool,
    /// The clip's frames as PNG files, in order.
    #[arg(long = "png")]
    pngs: Vec<PathBuf>,
    /// The same clip as Y4M.
    #[arg(long)]
    y4m: Option<PathBuf>,
    /// Batch sizes to time the forward pass at (the limit needs 1 and 16).
    #[arg(long = "batch", value_delimiter = ',', default_values_t = [1, 16])]
    batches: Vec<usize>,
    /// Timed runs of each measurement (a batch of 4n rows runs 1/n as many).
    #[arg(long, default_value_t = 40)]
    iterations: usize,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Serialize)]
struct Floor {
    threads: i32,
    precision: String,
    /// Whether the forward pass ran the module optimised for inference.
    optimised: bool,
    /// Batch size → median milliseconds of one forward pass.
    forward_ms: BTreeMap<usize, f64>,
    /// Input form → median milliseconds of native `prepare`.
    prepare_ms: BTreeMap<String, f64>,
}

fn main() -> anyhow::Result<()> {
    // As the server does, so the floor's forward passes run as the server's.
    motion_model::spin_briefly_between_operators();
    let args = Args::parse();
    let model = BareModel::load(&args.model, args.threads as usize, args.precision, !args.plain_model)
        .with_context(|| format!("cannot load {}", args.model.display()))?;

    let mut forward_ms = BTreeMap::new();
    for &batch in &args.batches {
        let runs = args.iterations.div_ceil(batch.div_ceil(4).max(1));
        let input = model.random_input(&[batch as i64, 8, 112, 112])?;
        for _ in 0..3 {
            model.forward(&input)?;
        }
        let ms = median_ms(runs, || model.forward(&input).map_err(anyhow::Error::from))?;
        forward_ms.insert(batch, ms);
    }

    let mut prepare_ms = BTreeMap::new();
    let limits = Limits::default();
    let mut forms: Vec<(String, Vec<(String, Vec<u8>)>)> = Vec::new();
    if !args.pngs.is_empty() {
        let frames = args
            .pngs
            .iter()
            .map(|p| {
                Ok(("image/png".to_string(), std::fs::read(p).with_context(|| p.display().to_string())?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        forms.push(("png".into(), frames));
    }
    if let Some(y4m) = &args.y4m {
        forms.push(("y4m".into(), vec![("video/x-yuv4mpeg".into(), std::fs::read(y4m)?)]));
    }
    for (form, files) in &forms {
        let media: Vec<Media> = files.iter().map(|(t, d)| Media { content_type: t, data: d }).collect();
        motion_guest_sdk::prepare(&media, &limits).map_err(|e| anyhow::anyhow!("{form}: {e}"))?;
        let ms = median_ms(args.iterations, || {
            motion_guest_sdk::prepare(&media, &limits).map(drop).map_err(|e| anyhow::anyhow!("{e}"))
        })?;
        prepare_ms.insert(form.clone(), ms);
    }

    let floor = Floor {
        threads: args.threads,
        precision: args.precision.to_string(),
        optimised: model.optimised(),
        forward_ms,
        prepare_ms,
    };
    std::fs::write(&args.out, serde_json::to_vec_pretty(&floor)?)?;
    println!("{}", serde_json::to_string(&floor)?);
    Ok(())
}

/// The median wall time of `runs` calls, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

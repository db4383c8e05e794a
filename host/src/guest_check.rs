//! `motion-host guest check FILE.wasm`: the validation a server runs before a guest goes live,
//! offline, with a readable report for guest authors.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::boot;
use crate::cli::GuestCheckArgs;
use motion_model::{DeviceChoice, Precision, Tuning};
use motion_runtime::{self as runtime, GuestError};

pub async fn run(args: &GuestCheckArgs) -> anyhow::Result<ExitCode> {
    let name = runtime::name_from_file(&args.file).unwrap_or_else(|_| "guest".into());
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("cannot read '{}'", args.file.display()))?;
    let device = DeviceChoice::resolve("cpu")?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let tuning = Tuning {
        threads,
        max_queue: 4,
        max_batch: 1,
        batch_delay: Some(Duration::ZERO),
        precision: Precision::Fp32,
        // The check needs the model's answers, not its speed: skip the optimisation's load time.
        optimise: false,
    };
    let models =
        boot::models(args.runtime.model_dir.clone(), device, tuning, Arc::new(|_: &str, _| {})).await?;
    let runtime = boot::runtime(models, args.runtime.limits(), 1, None, runtime::GuestProfiler::Off)?;

    println!("guest check: {}", args.file.display());
    match runtime.load(&name, bytes).await {
        Ok(guest) => {
            let info = &guest.info;
            println!(
                "  accepted ({} ms: compiled, linked, info() checked, {} sample{} classified)",
                guest.validation.as_millis(),
                guest.samples.len(),
                if guest.samples.len() == 1 { "" } else { "s" }
            );
            println!("  name      {} (installs as '{}')", info.name, guest.name);
            println!("  version   {}", info.version);
            println!("  world     {}", guest.world());
            println!("  digest    {} ({} bytes)", guest.digest, guest.size);
            println!(
                "  model     {} {}, input {:?}",
                info.model, guest.model.manifest.version, info.input_shape
            );
            println!("  labels    {} : {}", info.labels.len(), info.labels.join(", "));
            println!("  accepts   {}", info.accepts.join(", "));
            for run in &guest.samples {
                println!("  sample    {}: {:.1} ms", run.describe(), run.took.as_secs_f64() * 1e3);
            }
            for media_type in &guest.unsampled {
                println!("  unchecked {media_type}: the host has no sample of it, so it was not sent");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(GuestError::Rejected { reasons, .. }) => {
            println!("  rejected:");
            for reason in reasons {
                println!("  - {reason}");
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            println!("  rejected: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

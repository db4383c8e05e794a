//! Loading what a server runs, shared by `serve` and `guest check`: the models onto their
//! inference threads (off the async workers, warm-up included), then the guest runtime over
//! them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use motion_model::{BatchObserver, DeviceChoice, ModelRegistry, Tuning};

use motion_runtime::{GuestProfiler, Limits, Runtime};

/// Loads every model in `model_dir` on `device`; `batches` hears of every forward pass.
pub async fn models(
    model_dir: PathBuf,
    device: DeviceChoice,
    tuning: Tuning,
    batches: BatchObserver,
) -> anyhow::Result<ModelRegistry> {
    let models =
        tokio::task::spawn_blocking(move || ModelRegistry::load_dir(&model_dir, &device, tuning, batches))
            .await
            .context("model loading did not finish")??;
    Ok(models)
}

/// The guest runtime over `models`: `concurrency` guests at once, compiled guests cached in
/// `cache` (none: no cache), guest code shown to `profiler`.
pub fn runtime(
    models: ModelRegistry,
    limits: Limits,
    concurrency: u32,
    cache: Option<PathBuf>,
    profiler: GuestProfiler,
) -> anyhow::Result<Arc<Runtime>> {
    Ok(Arc::new(Runtime::new(Arc::new(models), limits, concurrency, cache, profiler)?))
}

//! The crate's errors: a model that cannot load or run ([`BackendError`]) and a model directory
//! that cannot be served ([`ModelError`]).

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("the model's queue is full ({0} calls waiting, --max-queue)")]
    Busy(usize),
    #[error("libtorch failed: {0}")]
    Torch(String),
    #[error("the inference thread has stopped")]
    Stopped,
    /// The model's output does not fit its manifest: found at warm-up (the model is refused)
    /// or in a batch (that batch's calls fail).
    #[error("{0}")]
    Output(String),
    #[error("{0}")]
    Device(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model directory '{path}': {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("no model in '{0}': no subdirectory holds a model.toml")]
    Empty(String),
    #[error("cannot read '{path}': {reason}")]
    Manifest { path: String, reason: String },
    #[error("model file '{path}' has sha256 {actual}, but its manifest says {expected}")]
    Digest { path: String, expected: String, actual: String },
    #[error("two models are named '{0}'")]
    Duplicate(String),
    #[error("model '{name}' cannot run at --precision {precision}: {reason}")]
    Precision { name: String, precision: crate::Precision, reason: String },
    #[error("model '{name}' from '{path}': {source}")]
    Backend { name: String, path: String, source: BackendError },
}

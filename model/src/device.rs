//! Where a model runs: the CPU or a CUDA device, as `--device` names it.

use tch::Device;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceKind {
    /// `cpu`, or `cuda:N`: how `--device` names it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceKind {
    pub(crate) fn tch(self) -> Device {
        match self {
            DeviceKind::Cpu => Device::Cpu,
            DeviceKind::Cuda(n) => Device::Cuda(n),
        }
    }
}

//! `--precision`: the number format a model's weights and forward pass run in. FP32 is the
//! default and the format of every tensor that crosses `wasi:nn`; bf16 and fp16 are opt-in, and
//! refused where the device cannot run them natively or where the model's manifest records no
//! held-out accuracy for them (or one that is too low): reduced precision trades accuracy for
//! speed, so it must say what it costs before it is served.

use std::fmt;
use std::str::FromStr;

use crate::device::DeviceKind;

/// Most a precision's recorded top-1 may fall below fp32's: half a point.
pub(crate) const MAX_TOP1_LOSS: f64 = 0.005;

/// CPU flags that give bf16 a native dot product; either is enough.
const CPU_BF16_FLAGS: [&str; 2] = ["avx512_bf16", "amx_bf16"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Fp16];

    /// How `--precision`, the manifest and `/v2` name it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    pub(crate) fn kind(self) -> tch::Kind {
        match self {
            Precision::Fp32 => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
            Precision::Fp16 => tch::Kind::Half,
        }
    }

    /// Whether `device` runs this precision natively. `cpu_flags` is the CPU's flag list as
    /// `/proc/cpuinfo` gives it ([`cpu_flags`]): bf16 on the CPU needs `avx512_bf16` or
    /// `amx_bf16` (without either, libtorch emulates it, slower than fp32); fp16 runs on CUDA
    /// only.
    pub fn check_on(self, device: DeviceKind, cpu_flags: &str) -> Result<(), String> {
        match (self, device) {
            (Precision::Fp32, _) | (_, DeviceKind::Cuda(_)) => Ok(()),
            (Precision::Bf16, DeviceKind::Cpu) => {
                let has = |flag: &str| cpu_flags.split_whitespace().any(|f| f == flag);
                if CPU_BF16_FLAGS.iter().any(|flag| has(flag)) {
                    Ok(())
                } else {
                    Err(format!(
                        "bf16 on the CPU needs the CPU flag {} (or {}), which this CPU lacks; \
                         use --precision fp32, or a CUDA device",
                        CPU_BF16_FLAGS[0], CPU_BF16_FLAGS[1]
                    ))
                }
            }
            (Precision::Fp16, DeviceKind::Cpu) => {
                Err("fp16 runs on CUDA only (the CPU has no fast fp16 convolutions); \
                 on the CPU use bf16 or fp32"
                    .into())
            }
        }
    }

    /// Checks the held-out top-1 the manifest records for this precision (`recorded(p)`)
    /// against fp32's: it must be recorded, and at most [`MAX_TOP1_LOSS`] below.
    pub fn check_accuracy(self, recorded: impl Fn(Precision) -> Option<f64>) -> Result<(), String> {
        if self == Precision::Fp32 {
            return Ok(());
        }
        let name = self.name();
        let (Some(fp32), Some(top1)) = (recorded(Precision::Fp32), recorded(self)) else {
            return Err(format!(
                "its manifest records no held-out top-1 at {name} and fp32 ([evaluation.precision] {name} and fp32), \
                 so --precision {name} would serve an accuracy nobody measured"
            ));
        };
        if top1 < fp32 - MAX_TOP1_LOSS {
            return Err(format!(
                "its held-out top-1 at {name} is {top1:.4}, more than {} points below fp32's {fp32:.4}",
                MAX_TOP1_LOSS * 100.0
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Precision, String> {
        let wanted = s.trim().to_ascii_lowercase();
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == wanted)
            .ok_or_else(|| format!("'{s}' is not fp32, bf16 or fp16"))
    }
}

/// The first CPU's flags from `/proc/cpuinfo` (empty where it cannot be read).
pub(crate) fn cpu_flags() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "flags").then(|| value.trim().to_owned())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions_parse_by_name() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
            assert_eq!(p.name().to_uppercase().parse::<Precision>(), Ok(p));
        }
        assert!("int8".parse::<Precision>().unwrap_err().contains("'int8' is not fp32, bf16 or fp16"));
    }

    #[test]
    fn the_cpu_runs_bf16_only_with_a_bf16_flag() {
        let cpu = DeviceKind::Cpu;
        let avx2 = "fpu sse2 avx avx2 fma";
        let err = Precision::Bf16.check_on(cpu, avx2).unwrap_err();
        assert!(err.contains("avx512_bf16"), "{err}");
        // A flag that merely starts like one is not it.
        assert!(Precision::Bf16.check_on(cpu, "avx512_bf16x avx512f").is_err());
        assert!(Precision::Bf16.check_on(cpu, "avx512f avx512_bf16 avx512_vnni").is_ok());
        assert!(Precision::Bf16.check_on(cpu, "amx_tile amx_bf16").is_ok());
        assert!(Precision::Fp16.check_on(cpu, "avx512_fp16 amx_fp16").unwrap_err().contains("CUDA only"));
        assert!(Precision::Fp32.check_on(cpu, "").is_ok());
        for p in Precision::ALL {
            assert!(p.check_on(DeviceKind::Cuda(0), "").is_ok());
        }
    }

    #[test]
    fn a_reduced_precision_needs_a_recorded_accuracy_close_to_fp32s() {
        let table = |fp32: Option<f64>, bf16: Option<f64>| {
            move |p: Precision| match p {
                Precision::Fp32 => fp32,
                Precision::Bf16 => bf16,
                Precision::Fp16 => None,
            }
        };
        assert!(Precision::Fp32.check_accuracy(table(None, None)).is_ok());
        assert!(Precision::Bf16.check_accuracy(table(Some(0.96), Some(0.9551))).is_ok());
        let low = Precision::Bf16.check_accuracy(table(Some(0.96), Some(0.9549))).unwrap_err();
        assert!(low.contains("0.9549, more than 0.5 points below fp32's 0.9600"), "{low}");
        for missing in [table(Some(0.96), None), table(None, Some(0.96))] {
            let err = Precision::Bf16.check_accuracy(missing).unwrap_err();
            assert!(err.contains("records no held-out top-1 at bf16"), "{err}");
        }
        assert!(Precision::Fp16.check_accuracy(table(Some(0.96), Some(0.96))).is_err());
    }
}

//! A TorchScript module frozen and optimised for inference at load, for FP32 on the CPU:
//! `torch::jit::optimize_for_inference`, which tch does not expose, through `optimised.cpp`.
//! Freezing folds batch norm into the convolutions and fuses what follows them, and the
//! convolutions then run in oneDNN's blocked layout from one to the next. The result cannot be
//! saved (it holds oneDNN tensors), so it is made from the file each time the model loads.

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::Path;
use std::ptr::NonNull;

use tch::Tensor;
use torch_sys::C_tensor;

unsafe extern "C" {
    fn motion_optimised_load(path: *const c_char, error: *mut *mut c_char) -> *mut c_void;
    fn motion_optimised_forward(
        module: *mut c_void,
        input: *const C_tensor,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn motion_optimised_free(module: *mut c_void);
    fn motion_optimised_free_error(error: *mut c_char);
}

/// An optimised module (a `torch::jit::Module` owned on the C++ side).
pub(crate) struct Optimised {
    module: NonNull<c_void>,
}

// SAFETY: a torch::jit::Module is not tied to the thread that made it; the model's inference
// thread, which owns this, is the only one to run it.
unsafe impl Send for Optimised {}

impl Optimised {
    /// Loads `file` on the CPU in eval mode, frozen and optimised for inference.
    pub(crate) fn load(file: &Path) -> Result<Optimised, String> {
        let path = CString::new(file.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("the path {} holds a NUL byte", file.display()))?;
        let mut error = std::ptr::null_mut();
        // SAFETY: `path` is a NUL-terminated string that outlives the call; `error` is written
        // only on failure, with a message that `taken` frees.
        let module = unsafe { motion_optimised_load(path.as_ptr(), &mut error) };
        NonNull::new(module).map(|module| Optimised { module }).ok_or_else(|| taken(error))
    }

    /// Runs `forward` on `input`, gradients off.
    pub(crate) fn forward(&self, input: &Tensor) -> Result<Tensor, String> {
        let mut error = std::ptr::null_mut();
        // SAFETY: the module is alive (owned by self) and `input` is a live tensor for the
        // call; a non-null result is a new tensor that tch now owns and frees.
        let output = unsafe { motion_optimised_forward(self.module.as_ptr(), input.as_ptr(), &mut error) };
        if output.is_null() { Err(taken(error)) } else { Ok(unsafe { Tensor::from_ptr(output) }) }
    }
}

impl Drop for Optimised {
    fn drop(&mut self) {
        // SAFETY: the module came from motion_optimised_load and is freed once, here.
        unsafe { motion_optimised_free(self.module.as_ptr()) }
    }
}

/// The C++ side's error message, freed.
fn taken(error: *mut c_char) -> String {
    if error.is_null() {
        return "libtorch gave no reason".to_owned();
    }
    // SAFETY: a non-null error is a NUL-terminated string from the C++ side, freed only here.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { motion_optimised_free_error(error) };
    message
}

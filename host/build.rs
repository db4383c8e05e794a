//! Records where libtorch lives in the binary (rpath), so `motion-host` runs without
//! `LD_LIBRARY_PATH`. torch-sys reports the directory it linked against (`links = "tch"`).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

//! Builds `src/optimised.cpp`, the part of the backend that tch does not expose
//! (`torch::jit::optimize_for_inference`), against the libtorch that torch-sys links.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/optimised.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // torch-sys says where its libtorch's libraries are; the headers sit beside them.
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys names its libtorch (DEP_TCH_LIBTORCH_LIB)"),
    );
    let root = lib.parent().expect("libtorch's lib directory has a parent").to_path_buf();
    // As torch-sys builds its own wrapper: the same headers, standard and ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/optimised.cpp")
        .compile("motion_optimised");
}

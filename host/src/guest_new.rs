//! `motion-host guest new NAME --lang rust|python|js`: writes a guest project that builds
//! outside this repository, from the templates in `host/templates/` (compiled into the binary,
//! with the WIT they need), so the project matches the server that wrote it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cli::{GuestLang, GuestNewArgs};

/// A file of a template: its path in the project and its text, with `{{…}}` placeholders.
type File = (&'static str, &'static str);

const RUST: &[File] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    ("build.rs", include_str!("../templates/rust/build.rs")),
    (".cargo/config.toml", include_str!("../templates/rust/cargo/config.toml")),
    ("build.sh", include_str!("../templates/rust/build.sh")),
    ("README.md", include_str!("../templates/rust/README.md")),
    (".gitignore", include_str!("../templates/rust/gitignore")),
];

const PYTHON: &[File] = &[
    ("app.py", include_str!("../templates/python/app.py")),
    ("requirements.txt", include_str!("../templates/python/requirements.txt")),
    ("build.sh", include_str!("../templates/python/build.sh")),
    ("README.md", include_str!("../templates/python/README.md")),
    (".gitignore", include_str!("../templates/python/gitignore")),
];

const JS: &[File] = &[
    ("guest.js", include_str!("../templates/js/guest.js")),
    ("package.json", include_str!("../templates/js/package.json")),
    ("build.sh", include_str!("../templates/js/build.sh")),
    ("README.md", include_str!("../templates/js/README.md")),
    (".gitignore", include_str!("../templates/js/gitignore")),
];

/// The WIT of a guest built on the toolkit: its world, and the packages that world names.
const TOOLKIT_WIT: &[File] = &[
    ("wit/world.wit", include_str!("../templates/common/world.wit")),
    ("wit/deps/motion-guest/motion-guest.wit", include_str!("../../wit/motion-guest.wit")),
    ("wit/deps/toolkit/toolkit.wit", include_str!("../../wit/toolkit/toolkit.wit")),
    ("wit/deps/wasi-nn/wasi-nn.wit", include_str!("../../wit/deps/wasi-nn/wasi-nn.wit")),
    ("wit/deps/wasi-nn/README.md", include_str!("../../wit/deps/wasi-nn/README.md")),
];

/// The SDK a Rust project carries (until it depends on the crates.io release): its source and
/// WIT as this binary was built with them, under `vendor/motion-guest-sdk/`.
const SDK: &[File] = &[
    ("vendor/motion-guest-sdk/Cargo.toml", include_str!("../templates/rust/sdk-Cargo.toml")),
    ("vendor/motion-guest-sdk/README.md", include_str!("../../sdk/README.md")),
    ("vendor/motion-guest-sdk/src/lib.rs", include_str!("../../sdk/src/lib.rs")),
    ("vendor/motion-guest-sdk/src/decode.rs", include_str!("../../sdk/src/decode.rs")),
    ("vendor/motion-guest-sdk/src/preprocess.rs", include_str!("../../sdk/src/preprocess.rs")),
    ("vendor/motion-guest-sdk/src/postprocess.rs", include_str!("../../sdk/src/postprocess.rs")),
    ("vendor/motion-guest-sdk/src/guest.rs", include_str!("../../sdk/src/guest.rs")),
    ("vendor/motion-guest-sdk/src/nn.rs", include_str!("../../sdk/src/nn.rs")),
    ("vendor/motion-guest-sdk/src/timeline.rs", include_str!("../../sdk/src/timeline.rs")),
    ("vendor/motion-guest-sdk/src/video.rs", include_str!("../../sdk/src/video.rs")),
    ("vendor/motion-guest-sdk/wit/motion-guest.wit", include_str!("../../wit/motion-guest.wit")),
    (
        "vendor/motion-guest-sdk/wit/deps/wasi-nn/wasi-nn.wit",
        include_str!("../../wit/deps/wasi-nn/wasi-nn.wit"),
    ),
    ("vendor/motion-guest-sdk/wit/deps/wasi-nn/README.md", include_str!("../../wit/deps/wasi-nn/README.md")),
];

/// The version of motion-guest-sdk a Rust project depends on: this server's own.
const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What every project's README ends with: how to check and ship the guest.
const CHECK_AND_SHIP: &str = include_str!("../templates/common/check-and-ship.md");

pub fn run(args: &GuestNewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("'{}' already exists and is not empty; choose another --dir", dir.display());
    }
    let sdk_path = match &args.sdk_path {
        Some(path) => {
            let path =
                std::path::absolute(path).with_context(|| format!("cannot resolve '{}'", path.display()))?;
            if !path.join("Cargo.toml").is_file() {
                bail!(
                    "--sdk-path '{}' holds no Cargo.toml (it names the sdk/ directory of a checkout)",
                    path.display()
                );
            }
            toml_string(&path.display().to_string())
        }
        None => toml_string("vendor/motion-guest-sdk"),
    };
    let sdk = format!("{{ version = \"{SDK_VERSION}\", path = {sdk_path} }}");
    let substitute = |text: &str| {
        text.replace("{{check-and-ship}}", CHECK_AND_SHIP)
            .replace("{{name}}", &args.name)
            .replace("{{crate}}", &args.name.replace('-', "_"))
            .replace("{{sdk}}", &sdk)
            .replace("{{sdk_version}}", SDK_VERSION)
    };

    let toolkit = match args.lang {
        GuestLang::Rust => None,
        GuestLang::Python | GuestLang::Js => Some(std::fs::read(&args.toolkit).with_context(|| {
            format!(
                "cannot read the toolkit component '{}' (build it with `cargo build --release -p motion-toolkit \
                 --target wasm32-wasip2`, or name it with --toolkit)",
                args.toolkit.display()
            )
        })?),
    };
    let files: Vec<File> = match args.lang {
        GuestLang::Rust if args.sdk_path.is_some() => RUST.to_vec(),
        GuestLang::Rust => [RUST, SDK].concat(),
        GuestLang::Python => [PYTHON, TOOLKIT_WIT].concat(),
        GuestLang::Js => [JS, TOOLKIT_WIT].concat(),
    };
    for (path, text) in files {
        // The SDK's own files are copied as they are; only its manifest is a template.
        let copied = path.starts_with("vendor/") && !path.ends_with("Cargo.toml");
        write(&dir.join(path), if copied { text.to_string() } else { substitute(text) }.as_bytes())?;
    }
    if let Some(toolkit) = toolkit {
        write(&dir.join("toolkit.wasm"), &toolkit)?;
    }
    make_executable(&dir.join("build.sh"))?;

    println!("wrote a {} guest in {}", args.lang.as_str(), dir.display());
    println!("  build:  {}/build.sh   (see its README.md for the tools it needs)", dir.display());
    println!(
        "  check:  motion-host guest check --model-dir MODELS {}/{}.wasm   (MODELS: the server's model directory)",
        dir.display(),
        args.name
    );
    println!("  ship:   PUT it to /admin/guests/{} or copy it into the server's --guest-dir", args.name);
    Ok(())
}

/// A name that is a guest name, a crate name, an npm package name and a file name at once: a
/// guest name that also starts with a letter and holds only lower-case letters, digits and
/// inner '-'.
fn check_name(name: &str) -> anyhow::Result<()> {
    motion_runtime::check_name(name).map_err(anyhow::Error::msg)?;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        bail!(
            "guest name '{name:.80}' must be lower-case letters, digits and '-', starting with a letter and \
             not ending with '-' (it names the guest, its package and its file)"
        );
    }
    Ok(())
}

/// `text` as a TOML basic string, quoted and escaped.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create '{}'", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write '{}'", path.display()))
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make '{}' executable", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_suit_every_language() {
        for good in ["a", "motion-py", "v2-guest", "x1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Motion", "1guest", "-x", "x-", "a_b", "a.b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let manifest = &SDK[..1];
        for (path, text) in [RUST, manifest, PYTHON, JS, TOOLKIT_WIT].concat() {
            let filled = text
                .replace("{{check-and-ship}}", CHECK_AND_SHIP)
                .replace("{{name}}", "n")
                .replace("{{crate}}", "n")
                .replace("{{sdk}}", "\"0\"")
                .replace("{{sdk_version}}", "0");
            assert!(!filled.contains("{{"), "{path} has a placeholder left");
        }
    }

    #[test]
    fn the_vendored_sdk_has_the_sdks_dependencies() {
        let section = |manifest: &'static str, header: &str| -> Vec<&'static str> {
            let start = manifest.find(header).unwrap_or_else(|| panic!("no {header}")) + header.len();
            manifest[start..].lines().skip(1).take_while(|l| !l.trim().is_empty()).collect()
        };
        let ours = include_str!("../../sdk/Cargo.toml");
        let vendored = include_str!("../templates/rust/sdk-Cargo.toml");
        for header in ["[dependencies]", "[target.'cfg(target_arch = \"wasm32\")'.dependencies]"] {
            assert_eq!(section(ours, header), section(vendored, header), "{header}");
        }
    }

    #[test]
    fn the_vendored_sdk_has_every_source_file() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/src");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("vendor/motion-guest-sdk/src/{name}");
            assert!(SDK.iter().any(|(p, _)| *p == path), "{path} is not written into Rust projects");
        }
    }

    #[test]
    fn paths_are_written_as_toml_strings() {
        assert_eq!(toml_string("/a b/c"), "\"/a b/c\"");
        assert_eq!(toml_string("C:\\x\"y"), "\"C:\\\\x\\\"y\"");
    }
}

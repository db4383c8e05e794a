//! How long libtorch's OpenMP threads spin before they sleep.
//!
//! Between the operators of a forward pass, libgomp's worker threads wait for the next
//! parallel region by spinning, by default for 300,000 `pause` iterations, before they sleep.
//! In the server those spins take the cores from the guests preparing the next batch: in a
//! profile of the server at 16 clients (Y4M), a third of all samples were libgomp's spin loops.
//! With 10,000 iterations a worker still catches the next region of the same pass while it
//! spins, and gives the cores up soon after the pass. Measured on 2 cores (`bench/run.py --only
//! motion-host --concurrency 1,16`): Y4M at 16 clients 111–116 → 130 requests/s, PNG 78–81 →
//! 86–91, c=1 no slower, the bare forward unchanged. Never spinning (`0`) made the forward at
//! batch 1 twice as slow, and 1,000 slowed it too.
//!
//! libgomp reads `GOMP_SPINCOUNT` once, as it loads, which is before `main`: so a binary that
//! wants it calls [`spin_briefly_between_operators`] first thing, which starts the program
//! again with the variable set when it is not (an operator's own value is kept).

/// The spin count the server's forward passes run with.
const GOMP_SPINCOUNT: &str = "10000";

/// Re-executes this program with `GOMP_SPINCOUNT` set to [`GOMP_SPINCOUNT`] unless the
/// environment already sets it. Returns only when it did not re-execute: the variable was set,
/// or the exec failed (then the program goes on with libgomp's default, which is only slower).
/// Call it before any other thread starts.
pub fn spin_briefly_between_operators() {
    if std::env::var_os("GOMP_SPINCOUNT").is_some() {
        #[cfg(target_os = "linux")]
        take_back_the_program_name();
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use std::ffi::OsString;
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| OsString::from("motion-host"));
        let error = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
            .exec();
        eprintln!(
            "note: cannot restart with GOMP_SPINCOUNT={GOMP_SPINCOUNT} ({error}); libgomp's default applies"
        );
    }
}

/// A program started again through `/proc/self/exe` is named `exe`, the link's name, wherever
/// the kernel shows a process's name: `ps`, `top`, `pgrep -x`, `killall`. This names it after
/// its own file again (the kernel keeps the first 15 bytes), before any thread starts, so the
/// threads that are not named otherwise take that name too.
#[cfg(target_os = "linux")]
fn take_back_the_program_name() {
    let Ok(exe) = std::env::current_exe() else { return };
    let Some(name) = exe.file_name() else { return };
    if std::fs::read("/proc/self/comm").is_ok_and(|comm| comm == b"exe\n") {
        // Only cosmetic: a process that cannot rename itself runs as well.
        let _ = std::fs::write("/proc/self/comm", name.as_encoded_bytes());
    }
}

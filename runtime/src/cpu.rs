//! Guests and forward passes share the cores, and the forward pass has the first claim: guest
//! code runs on threads of a lower OS priority (a higher nice value) than the model's inference
//! threads, so while a batch runs the kernel gives its libtorch threads the cores and guests
//! take what is left, the gaps between passes.
//!
//! Among themselves, guests take the cores in arrival order ([`Cores`]): a request's guest
//! runs only once it holds one of as many places as the process has cores, and gives it up
//! when it first waits for the model. Without that, every request in flight would share the
//! cores in epoch-sized slices and all of them would reach the model late; in order, the first
//! ones are ready for the next batch as soon as they can be. A place is also given up
//! [`CORE_SLICE`] after it was taken, whatever the guest is doing (computing, spinning, or
//! sleeping in a host call), and the guest goes on sharing the cores: a slow guest holds the
//! others back that long at most, not for its whole deadline.
//!
//! A thread lowers itself the first time it enters guest code (a store's call hook). It stays
//! lowered: raising a priority again needs a privilege the server does not have. So the tokio
//! workers that run guests end up lowered, and the inference threads, which never run guest
//! code and are started while the models load, before any guest runs, keep the priority the
//! process began with (and so do the libtorch threads they start). A thread the tokio blocking
//! pool starts later from a lowered worker inherits its priority, which suits what it does
//! there: compiling an uploaded guest.

use std::cell::Cell;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a guest may hold its place among the [`Cores`] before it must share.
pub(crate) const CORE_SLICE: Duration = Duration::from_millis(50);

/// The places guest code may run in at once, one per core, handed out in arrival order.
pub(crate) struct Cores(Arc<Semaphore>);

/// One place among the [`Cores`], until it is dropped or its [`CORE_SLICE`] is over.
pub(crate) struct Core(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Drop for Core {
    fn drop(&mut self) {
        give_back(&self.0);
    }
}

fn give_back(place: &Mutex<Option<OwnedSemaphorePermit>>) {
    place.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
}

impl Cores {
    /// As many places as this process may use cores (the cgroup quota included).
    pub(crate) fn of_this_process() -> Cores {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Cores(Arc::new(Semaphore::new(cores)))
    }

    /// Waits for a place, behind the requests that asked before; the place is given back
    /// when the [`Core`] is dropped or [`CORE_SLICE`] from now, whichever comes first.
    pub(crate) async fn take(&self) -> Core {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = Arc::clone(&self.0).acquire_owned().await.expect("the cores are never closed");
        let place = Arc::new(Mutex::new(Some(permit)));
        let slice: Weak<_> = Arc::downgrade(&place);
        tokio::spawn(async move {
            tokio::time::sleep(CORE_SLICE).await;
            if let Some(place) = slice.upgrade() {
                give_back(&place);
            }
        });
        Core(place)
    }
}

thread_local! {
    /// The nice value this thread was lowered to, once it has been.
    static LOWERED: Cell<Option<i32>> = const { Cell::new(None) };
}

/// Lowers the calling thread to nice `nice` (0 to 19) unless it already was. Does nothing
/// where the OS has no per-thread priority.
pub(crate) fn lower_this_thread(nice: i32) {
    if nice == 0 || LOWERED.get().is_some() {
        return;
    }
    LOWERED.set(Some(nice));
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority on our own thread id changes only
        // this thread's nice value (a per-thread attribute on Linux). Raising a nice value
        // needs no privilege; should it fail, the thread keeps its priority, which is safe.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if result != 0 {
            tracing::warn!(
                nice,
                error = %std::io::Error::last_os_error(),
                "cannot lower a guest thread's priority; guests compete with the model for the CPU"
            );
        }
    }
}

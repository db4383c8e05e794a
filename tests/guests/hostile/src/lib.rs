//! A guest that behaves until asked to attack. Posted `text/plain`, the body names the attack
//! (and its argument, after a space); anything else gets an honest classification of a blank
//! clip, which is also how it passes the host's validation.
//!
//! Attacks that probe for a capability (files, environment, sockets) report what they got in a
//! `bad-input` error, so a test can check that nothing leaked.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "motion-guest",
        path: "../../../wit/v0.1",
        generate_all,
    });

    use exports::motion::guest::classifier::Guest;
    use motion::guest::types::{Classification, Error, GuestInfo, LabelScore, Request};
    use wasi::nn::{graph, tensor};

    const MODEL: &str = "motion-resnet18";
    const LABELS: usize = 16;
    const INPUT_BYTES: usize = 8 * 112 * 112 * 4;

    struct Hostile;

    impl Guest for Hostile {
        fn info() -> GuestInfo {
            if cfg!(feature = "trap-info") {
                panic!("this build traps in info()");
            }
            let labels = if cfg!(feature = "many-labels") { 10_000 } else { LABELS };
            GuestInfo {
                name: "hostile".into(),
                version: if cfg!(feature = "fail-marked") { "0.1.1-fail-marked" } else { "0.1.0" }.into(),
                model: MODEL.into(),
                input_shape: vec![-1, 8, 112, 112],
                labels: (0..labels).map(|i| format!("label-{i}")).collect(),
                accepts: vec!["image/png".into(), "text/plain".into()],
            }
        }

        fn classify(req: Request) -> Result<Classification, Error> {
            let command = match req.media.first() {
                Some(m) if m.content_type == "text/plain" => {
                    String::from_utf8_lossy(&m.data).trim().to_string()
                }
                _ => String::new(),
            };
            if cfg!(feature = "fail-marked") && command == "marked" {
                panic!("this build fails on the marked input");
            }
            let (attack, arg) = command.split_once(' ').unwrap_or((&command, ""));
            attack_with(attack, arg, req.top_k)
        }
    }

    fn attack_with(attack: &str, arg: &str, top_k: u32) -> Result<Classification, Error> {
        match attack {
            "loop" => loop {
                std::hint::black_box(());
            },
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => {
                let depth = recurse(std::hint::black_box(1));
                Err(Error::BadInput(format!("recursion returned {depth}")))
            }
            "panic" => panic!("the hostile guest panics on request"),
            "huge-tensor" => {
                let data = vec![0u8; 48 << 20];
                let t = tensor::Tensor::new(&[1, 8, 112, 112], tensor::TensorType::Fp32, &data);
                Err(Error::BadInput(format!("the host took a 48 MiB tensor: {:?}", t.dimensions())))
            }
            "nn-bytes" => {
                let data = vec![0u8; 20 << 20];
                let kept: Vec<_> =
                    (0..8).map(|_| tensor::Tensor::new(&[1], tensor::TensorType::Fp32, &data)).collect();
                Err(Error::BadInput(format!("the host took {} tensors of 20 MiB", kept.len())))
            }
            "wrong-shape" => {
                let data = vec![0u8; 3 * 224 * 224 * 4];
                run_model(&[1, 3, 224, 224], tensor::TensorType::Fp32, &data).map(|_| unreachable!())
            }
            "wrong-type" => {
                let data = vec![0u8; INPUT_BYTES];
                run_model(&[1, 8, 112, 112], tensor::TensorType::U8, &data).map(|_| unreachable!())
            }
            "load-spam" => {
                for _ in 0..10_000 {
                    let _ = graph::load_by_name(MODEL);
                }
                Err(Error::BadInput("the host answered 10,000 load-by-name calls".into()))
            }
            "no-model" => graph::load_by_name("no-such-model")
                .map(|_| unreachable!())
                .map_err(|e| Error::Inference(format!("load-by-name: {:?}: {}", e.code(), e.data()))),
            "nan" => {
                let mut c = honest(top_k)?;
                c.score = f32::NAN;
                c.top_k.iter_mut().for_each(|e| e.score = f32::NAN);
                Ok(c)
            }
            "big-label" => {
                let mut c = honest(top_k)?;
                c.label = "x".repeat(10 << 20);
                Ok(c)
            }
            "many-labels" => {
                let mut c = honest(top_k)?;
                c.top_k = (0..10_000)
                    .map(|i| LabelScore { label: format!("label-{}", i % 16), score: 0.0 })
                    .collect();
                Ok(c)
            }
            "alias-labels" => alias_labels(),
            "stdout-flood" => {
                let line = "y".repeat(1023);
                for _ in 0..1024 {
                    println!("{line}");
                }
                honest(top_k)
            }
            "read-file" => {
                let got = std::fs::read_to_string(if arg.is_empty() { "/etc/passwd" } else { arg });
                Err(Error::BadInput(format!("file: {got:?}")))
            }
            "env" => {
                let vars: Vec<(String, String)> = std::env::vars().collect();
                let args: Vec<String> = std::env::args().collect();
                let cwd = std::env::current_dir();
                Err(Error::BadInput(format!(
                    "env: {} vars {vars:?}; args: {} {args:?}; cwd: {cwd:?}",
                    vars.len(),
                    args.len()
                )))
            }
            "socket" => {
                let got = std::net::TcpStream::connect(arg).map(|_| "connected");
                Err(Error::BadInput(format!("socket: {got:?}")))
            }
            "clock-random" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                let started = std::time::Instant::now();
                let random = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 1u8);
                if now.is_err() || started.elapsed().as_secs() > 1 || random == 0 {
                    return Err(Error::BadInput(format!("clock or random number missing: {now:?} {random}")));
                }
                honest(top_k)
            }
            "stash" => {
                // Leaves a pattern across 4 MiB of memory for the next request to look for.
                std::hint::black_box(stash(&leftover_pattern(arg), 4 << 20));
                honest(top_k)
            }
            "leftovers" => {
                // Grows memory over where an earlier instance's stash lay before looking.
                core::arch::wasm32::memory_grow(0, 128);
                let found = leftovers(&leftover_pattern(arg));
                Err(Error::BadInput(format!("leftovers: {found}")))
            }
            "stash-and-look" => {
                // The scan's own check: what this request stashed, it finds.
                let pattern = leftover_pattern(arg);
                let stashed = std::hint::black_box(stash(&pattern, 1 << 20));
                let found = leftovers(&pattern);
                drop(stashed);
                Err(Error::BadInput(format!("stashed and found: {found}")))
            }
            "sleep" => {
                let ms: u64 = arg.parse().unwrap_or(1000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                honest(top_k)
            }
            _ => honest(top_k),
        }
    }

    /// What `stash` writes for `arg`: not the bytes of the request that names it, so a scan
    /// does not find the request's own copy.
    fn leftover_pattern(arg: &str) -> Vec<u8> {
        arg.bytes().map(|b| !b).collect()
    }

    /// `bytes` of memory filled with `pattern` over and over.
    fn stash(pattern: &[u8], bytes: usize) -> Vec<u8> {
        pattern.iter().copied().cycle().take(bytes).collect()
    }

    /// How many times `pattern` lies anywhere in this instance's linear memory, besides the
    /// `pattern` buffer itself: a memory holding what an earlier request wrote would show it.
    fn leftovers(pattern: &[u8]) -> usize {
        if pattern.is_empty() {
            return 0;
        }
        let size = core::arch::wasm32::memory_size(0) * 65536;
        let own = pattern.as_ptr() as usize;
        // SAFETY: every address below the memory's size is readable in wasm; the reads are
        // volatile so the compiler assumes nothing about what they return.
        let byte = |at: usize| unsafe { std::ptr::read_volatile(at as *const u8) };
        (1..size.saturating_sub(pattern.len()))
            .filter(|&at| at != own && byte(at) == pattern[0])
            .filter(|&at| (1..pattern.len()).all(|i| byte(at + i) == pattern[i]))
            .count()
    }

    #[inline(never)]
    fn recurse(n: u64) -> u64 {
        if n == u64::MAX {
            return 0;
        }
        let mut frame = [n; 64];
        std::hint::black_box(&mut frame);
        recurse(frame[7] + 1) + frame[3]
    }

    /// A million top-k entries whose labels all point at the same 1 MiB of memory: lifted
    /// naively, the host would copy a terabyte.
    fn alias_labels() -> Result<Classification, Error> {
        let shared = std::mem::ManuallyDrop::new("z".repeat(1 << 20));
        let top_k = (0..1_000_000)
            .map(|_| LabelScore {
                // SAFETY: deliberately unsound aliasing, to attack the host; the strings are
                // never dropped by this guest (post-return frees, or the host refuses first).
                label: unsafe {
                    String::from_raw_parts(shared.as_ptr() as *mut u8, shared.len(), shared.len())
                },
                score: 0.0,
            })
            .collect();
        Ok(Classification { label: "label-0".into(), score: 0.0, top_k, frames_total: 1, frames_used: 1 })
    }

    fn run_model(dims: &[u32], ty: tensor::TensorType, data: &[u8]) -> Result<Vec<f32>, Error> {
        let nn = |what: &str, e: wasi::nn::errors::Error| {
            Error::Inference(format!("{what}: {:?}: {}", e.code(), e.data()))
        };
        let graph = graph::load_by_name(MODEL).map_err(|e| nn("load-by-name", e))?;
        let context = graph.init_execution_context().map_err(|e| nn("init-execution-context", e))?;
        let input = tensor::Tensor::new(dims, ty, data);
        let outputs = context.compute(vec![("input".into(), input)]).map_err(|e| nn("compute", e))?;
        let (_, logits) = outputs.into_iter().next().ok_or_else(|| Error::Inference("no output".into()))?;
        Ok(logits.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// A real classification of a blank clip: the model's softmax over 16 labels.
    fn honest(top_k: u32) -> Result<Classification, Error> {
        let logits = run_model(&[1, 8, 112, 112], tensor::TensorType::Fp32, &vec![0u8; INPUT_BYTES])?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let mut order: Vec<usize> = (0..exp.len()).collect();
        order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]));
        let top: Vec<LabelScore> = order
            .into_iter()
            .take(top_k as usize)
            .map(|i| LabelScore { label: format!("label-{i}"), score: exp[i] / sum })
            .collect();
        Ok(Classification {
            label: top[0].label.clone(),
            score: top[0].score,
            top_k: top,
            frames_total: 1,
            frames_used: 1,
        })
    }

    export!(Hostile);

    /// With `import-in-realloc`, allocations above 1 MiB read the clock first, as Go's allocator
    /// does when it grows its heap. `cabi_realloc` allocates through this allocator when the host
    /// copies an upload in, and the component model forbids calling out of the instance there,
    /// so such a guest traps on every large upload and on no small one.
    #[cfg(feature = "import-in-realloc")]
    mod allocator {
        use std::alloc::{GlobalAlloc, Layout, System};

        struct ClockReadingAllocator;

        unsafe impl GlobalAlloc for ClockReadingAllocator {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                if layout.size() > 1 << 20 {
                    std::hint::black_box(std::time::Instant::now());
                }
                // SAFETY: the caller's contract for `alloc` is passed on unchanged.
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: as for `alloc`: the pointer came from `System` with this layout.
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                if new_size > 1 << 20 {
                    std::hint::black_box(std::time::Instant::now());
                }
                // SAFETY: as for `alloc`.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static ALLOCATOR: ClockReadingAllocator = ClockReadingAllocator;
    }
}

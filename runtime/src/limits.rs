//! The limits on one request's guest: what the flags set ([`Limits`]), the store's limiter
//! that enforces memory and tables and remembers what it refused, and the instance pool sized
//! from them.

use std::time::Duration;

use wasmtime::{Enabled, PoolingAllocationConfig, ResourceLimiter};

/// Linear memories one guest may have (a Rust or C guest has one).
pub(crate) const MAX_GUEST_MEMORIES: u32 = 2;
/// Guest instances alive at once beyond the requests in flight: validations.
const SPARE_INSTANCES: u32 = 16;
/// Bytes of linear memory a pool slot keeps resident for its next guest, where the kernel lets
/// wasmtime find the pages a guest dirtied (`PAGEMAP_SCAN`, Linux 6.7): as much as the default
/// guest starts with. The benchmark clip's requests touch 3.6–3.7 MiB of it.
const LINEAR_MEMORY_KEEP_RESIDENT: usize = 8 << 20;
/// Memory slots kept for the guests that are not running, beyond the ones the requests in
/// flight use: enough for a Rust guest and a composed guest (two memories) beside it, as with a
/// canary, to keep a slot each.
const WARM_MEMORY_SLOTS: u32 = 4;

/// Per-request limits on a guest; each names the flag that sets it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory (`--guest-memory-bytes`).
    pub memory_bytes: usize,
    /// Wasm instances, tables and table elements (`--guest-max-instances`,
    /// `--guest-max-tables`, `--guest-max-table-elements`).
    pub instances: usize,
    pub tables: usize,
    pub table_elements: usize,
    /// Wall time from instantiation to the answer (`--guest-deadline`).
    pub deadline: Duration,
    /// Bytes the guest may pass to the host in one call, its result included
    /// (`--guest-max-transfer-bytes`).
    pub transfer_bytes: usize,
    /// Bytes of the result it returns (`--guest-max-result-bytes`).
    pub result_bytes: usize,
    /// wasi:nn calls per request (`--guest-max-nn-calls`).
    pub nn_calls: u32,
    /// Tensor bytes handed to wasi:nn per request (`--guest-max-nn-bytes`).
    pub nn_bytes: usize,
    /// The nice value guest code runs at, 0 to 19 (`--guest-nice`): its claim on the CPU
    /// below the model's forward passes (`cpu.rs`).
    pub nice: i32,
}

impl Limits {
    /// The limits a server runs with when no flag changes them.
    pub fn defaults() -> Limits {
        Limits {
            memory_bytes: 256 << 20,
            instances: 32,
            tables: 32,
            table_elements: 100_000,
            deadline: Duration::from_secs(10),
            transfer_bytes: 32 << 20,
            result_bytes: 64 << 10,
            nn_calls: 100,
            nn_bytes: 64 << 20,
            nice: 19,
        }
    }
}

/// The epoch callback's verdict when a request's deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
pub(crate) struct DeadlineExceeded;

/// Caps a guest's memory and tables, remembering a refusal so the error can name the limit.
pub(crate) struct Limiter {
    memory_bytes: usize,
    instances: usize,
    tables: usize,
    table_elements: usize,
    pub(crate) memory_refused: Option<usize>,
    pub(crate) table_refused: Option<usize>,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits) -> Limiter {
        Limiter {
            memory_bytes: limits.memory_bytes,
            instances: limits.instances,
            tables: limits.tables,
            table_elements: limits.table_elements,
            memory_refused: None,
            table_refused: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.table_refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        8
    }
}

/// How a pool slot's linear memory is reset between guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryReset {
    /// Only the pages the last guest dirtied are reset, in place, and stay resident (up to
    /// [`LINEAR_MEMORY_KEEP_RESIDENT`]), so the next guest in the slot takes no page faults
    /// for them. Needs the kernel's `PAGEMAP_SCAN`.
    KeepDirtyPages,
    /// Every page is handed back to the kernel, and the next guest faults in what it touches.
    HandBack,
}

/// The instance pool: room for `concurrency` requests' guests plus validations, each within
/// the per-request limits (the limiter enforces the same numbers per store, with clearer
/// errors; the pool only sizes its reservations by them). Reserving is virtual: a slot's pages
/// are only resident once a guest has used them, and `reset` says what stays resident after.
pub(crate) fn pooling(limits: &Limits, concurrency: u32, reset: MemoryReset) -> PoolingAllocationConfig {
    let guests = concurrency.saturating_add(SPARE_INSTANCES);
    let instances = u32::try_from(limits.instances).unwrap_or(u32::MAX);
    let tables = u32::try_from(limits.tables).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(guests)
        .total_core_instances(guests.saturating_mul(instances))
        .max_core_instances_per_component(instances)
        .total_memories(guests.saturating_mul(MAX_GUEST_MEMORIES))
        .max_memories_per_component(MAX_GUEST_MEMORIES)
        .max_memories_per_module(MAX_GUEST_MEMORIES)
        .max_memory_size(limits.memory_bytes)
        .total_tables(guests.saturating_mul(tables))
        .max_tables_per_component(tables)
        .max_tables_per_module(tables)
        .table_elements(limits.table_elements)
        .total_stacks(guests)
        // Keep a little of each stack and table resident between guests rather than handing
        // it back to the kernel and faulting it in again (measured: ~10 µs an instantiation).
        .async_stack_keep_resident(128 << 10)
        .table_keep_resident(1 << 20);
    // The same for linear memory, where it matters most: a guest copies its whole upload in
    // and decodes frames into fresh pages, each one a page fault (a costly one in a virtual
    // machine) in every request. Without PAGEMAP_SCAN wasmtime would instead memset the whole
    // kept size at every reset, 8 MiB a request whatever the guest touched, so there the pool
    // hands pages back as it always did.
    if reset == MemoryReset::KeepDirtyPages {
        pool.linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT).pagemap_scan(Enabled::Yes);
    }
    // A guest's memory takes the slot it used last if that one is free. Otherwise it takes a
    // never-used slot while fewer than WARM_MEMORY_SLOTS used ones are idle, and the least
    // recently used idle slot of another guest beyond that. So guests that take turns keep a
    // slot each, and the slots ever used, with the memory they keep resident, follow the most
    // guests alive at once plus that handful, not how many the server has run (wasmtime's
    // default keeps 100 idle, so over a long run most of the pool would keep its share).
    // Measured with the default guest and two composed Python guests taking turns request by
    // request: with none kept idle, each turn remapped another guest's slot, and the default
    // guest's instantiation took 220 µs instead of 78 µs and its Y4M preprocessing 4.2 ms
    // instead of 3.0 ms; the server's resident memory was 23 MiB lower.
    pool.max_unused_warm_slots(WARM_MEMORY_SLOTS);
    pool
}

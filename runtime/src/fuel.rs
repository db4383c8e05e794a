//! Recognising wasmtime's hostcall-fuel refusal, the one way a guest can stop on a limit that
//! wasmtime enforces for us (`--guest-max-transfer-bytes`: the bytes a guest may make the host
//! copy in one call, which bounds what aliasing lists and strings can make the host allocate).
//!
//! wasmtime has no public type for that refusal, and its message is wasmtime's to change. So
//! the runtime learns it from wasmtime itself when it starts: it calls a one-string component
//! with no hostcall fuel and keeps the error that comes back. This also proves, at every
//! start, that the engine refuses such a copy at all: a wasmtime that no longer did would
//! leave the limit unenforced, and the runtime refuses to start instead.

use anyhow::{anyhow, bail};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

/// A component whose one export returns the string "x" from its memory.
const PROBE: &str = r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (data (i32.const 0) "\08\00\00\00\01\00\00\00x")
    (func (export "run") (result i32) i32.const 0))
  (core instance $i (instantiate $m))
  (func (export "run") (result string)
    (canon lift (core func $i "run") (memory (core memory $i "memory")))))
"#;

/// What wasmtime says when a guest's call runs out of hostcall fuel.
#[derive(Debug, Clone)]
pub(crate) struct FuelRefusal(String);

impl FuelRefusal {
    /// Provokes the refusal on `engine` and keeps it.
    pub(crate) fn learn(engine: &Engine) -> anyhow::Result<FuelRefusal> {
        let component = Component::new(engine, PROBE)
            .map_err(|e| anyhow!("the hostcall-fuel probe does not compile: {e}"))?;
        let mut store = Store::new(engine, ());
        store.set_hostcall_fuel(0);
        // An engine with epoch interruption stops a store at once unless it is given time.
        store.set_epoch_deadline(1 << 40);
        let instance =
            Linker::new(engine).instantiate(&mut store, &component).map_err(anyhow::Error::from)?;
        let run = instance.get_typed_func::<(), (String,)>(&mut store, "run").map_err(anyhow::Error::from)?;
        match run.call(&mut store, ()) {
            Ok(_) => bail!(
                "this wasmtime copied a guest's string with no hostcall fuel: \
                 --guest-max-transfer-bytes could not be enforced"
            ),
            Err(e) if e.downcast_ref::<wasmtime::Trap>().is_some() => {
                bail!("the hostcall-fuel probe trapped instead of running out of fuel: {e:?}")
            }
            Err(e) => Ok(FuelRefusal(e.root_cause().to_string())),
        }
    }

    /// Whether `error` is, or wraps, this refusal: one of its causes, or (an error that crossed
    /// a conversion may carry its causes in one message) its report, names it.
    pub(crate) fn matches(&self, error: &wasmtime::Error) -> bool {
        error.chain().any(|cause| cause.to_string() == self.0) || format!("{error:?}").contains(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_learned_and_recognised_and_nothing_else_is() {
        // As the runtime's engine is made: with epoch interruption.
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        let refusal = FuelRefusal::learn(&engine).unwrap();
        let again = FuelRefusal::learn(&engine).unwrap();
        assert_eq!(refusal.0, again.0);
        assert!(!refusal.0.is_empty());
        assert!(!refusal.matches(&wasmtime::Error::msg("wasm trap: unreachable")));
        let wrapped =
            wasmtime::Error::msg(refusal.0.clone()).context("error while executing at wasm backtrace");
        assert!(refusal.matches(&wrapped));

        // Given enough fuel, the same call succeeds.
        let component = Component::new(&engine, PROBE).unwrap();
        let mut store = Store::new(&engine, ());
        store.set_hostcall_fuel(1);
        store.set_epoch_deadline(1 << 40);
        let instance = Linker::new(&engine).instantiate(&mut store, &component).unwrap();
        let run = instance.get_typed_func::<(), (String,)>(&mut store, "run").unwrap();
        assert_eq!(run.call(&mut store, ()).unwrap().0, "x");
    }
}

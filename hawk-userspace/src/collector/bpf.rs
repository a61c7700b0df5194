//! The embedded BPF object and how it is loaded.

use aya::{Ebpf, EbpfLoader};

use super::check;

/// Hawk's BPF object, built by `build.rs` with aya-build (empty when built
/// with `AYA_BUILD_SKIP=1` or without bpf-linker).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hawk"));

/// Why the kernel side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(
        "this hawk-ebpf was built without its BPF programs (AYA_BUILD_SKIP or no bpf-linker); rebuild with `cargo xtask build`"
    )]
    NoBpfObject,
    #[error("missing {0} (run as root, or grant it with setcap)")]
    MissingCapability(String),
    #[error("loading the BPF programs failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF object has no {0}")]
    Missing(&'static str),
    #[error(
        "--freq {requested} Hz is above this kernel's limit of {max} Hz (kernel.perf_event_max_sample_rate)"
    )]
    FrequencyTooHigh { requested: u64, max: u64 },
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    #[error("{0}")]
    Io(String),
}

/// Global variables to set in the object before it is loaded.
pub struct Globals {
    pub filter_pids: bool,
    pub stack_mode: u8,
    /// Sample only threads that serve a trace.
    pub traced_only: bool,
}

/// Loads the object with `globals`, after checking privileges.
pub fn load(globals: &Globals) -> Result<Ebpf, CollectorError> {
    if BPF_OBJECT.is_empty() {
        return Err(CollectorError::NoBpfObject);
    }
    check::require_capabilities()?;
    check::raise_memlock_if_needed();
    let filter = u8::from(globals.filter_pids);
    let traced_only = u8::from(globals.traced_only);
    let newtask = super::forks::NewTaskOffsets::of_this_kernel();
    let mut loader = EbpfLoader::new();
    loader
        .override_global(hawk_common::globals::FILTER_PIDS, &filter, true)
        .override_global(hawk_common::globals::STACK_MODE, &globals.stack_mode, true)
        .override_global(hawk_common::globals::TRACED_ONLY, &traced_only, true)
        .override_global(hawk_common::globals::NEWTASK_PID_OFFSET, &newtask.pid, true)
        .override_global(
            hawk_common::globals::NEWTASK_FLAGS_OFFSET,
            &newtask.clone_flags,
            true,
        );
    loader.load(BPF_OBJECT).map_err(CollectorError::Load)
}

/// The map `name` of `ebpf` as the typed map `T` (read-only view).
pub fn map<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, CollectorError>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map(name).ok_or(CollectorError::Missing(name))?;
    T::try_from(map).map_err(|source| CollectorError::Map { name, source })
}

/// The map `name` of `ebpf` as the typed map `T` (writable view).
pub fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, CollectorError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(CollectorError::Missing(name))?;
    T::try_from(map).map_err(|source| CollectorError::Map { name, source })
}

/// The program `name` of `ebpf` as the typed program `T`.
pub fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, CollectorError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(CollectorError::Missing(name))?;
    program
        .try_into()
        .map_err(|source| CollectorError::Program { name, source })
}

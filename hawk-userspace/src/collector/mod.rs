//! Everything that talks to the kernel: loading Hawk's BPF object, checking
//! privileges and kernel features, attaching the CPU sampler, the memory
//! tracer and the fork follower, reading their maps, and reading `/proc`. It hands plain data ([`cpu::RawSample`]) to the
//! rest of the pipeline; nothing outside this module knows about BPF.

pub mod bpf;
pub mod check;
pub mod cpu;
pub mod first_samples;
pub mod forks;
pub mod mem;
pub mod procs;
pub mod shim;
mod stacks;

pub use bpf::CollectorError;

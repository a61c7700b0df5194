//! What each `hawk-ebpf` subcommand does, one file each.

pub mod check;
pub mod launch;
pub mod record;

//! What each `hawk-ebpf` subcommand does, one file each.

pub mod capture;
pub mod check;
pub mod daemon;
pub mod diff;
pub mod launch;
pub mod record;

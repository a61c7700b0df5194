//! Command line of the `hawk-ebpf` binary (clap derive).

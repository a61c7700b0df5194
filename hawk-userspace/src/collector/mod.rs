//! Loads Hawk's BPF programs, attaches them and reads their maps: the only module that talks to the kernel.

#![no_std]
// Exists so that hawk-userspace can name this crate as a build dependency (see aya-template).

//! Output file names (`hwk_cpu_ebpf_profile_<date>_<time>[_trace-…_span-…].<ext>`) and atomic writes.

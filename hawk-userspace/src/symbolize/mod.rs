//! Addresses → function names with blazesym, cached per module and offset.

//! The few CPU intrinsics the table code needs, each wrapped in a safe function so
//! that `unsafe` stays out of the packet-processing modules.

pub(crate) mod huge_pages;
pub(crate) mod prefetch;

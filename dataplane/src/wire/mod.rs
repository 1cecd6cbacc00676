//! Zero-copy packet views.
//!
//! The contract (after smoltcp's `wire`): a view wraps `T: AsRef<[u8]>`;
//! `new_checked` validates every length once, after which no getter can panic;
//! protocol-number enums are total (`Unknown(n)`); `Repr::parse` checks meaning and
//! `Repr::emit` writes into a buffer the caller sized with `buffer_len`.
//! Views that smoltcp already provides with this contract are re-exported rather than
//! written again.

pub mod mac;

pub use mac::MacAddr;

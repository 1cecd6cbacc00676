//! The embedded BGP speaker.
//!
//! - [`codec`]: BGP-4 messages to and from bytes; bad bytes become NOTIFICATIONs.
//! - [`fsm`]: the sans-IO session state machine (RFC 4271 §8).
//! - [`speaker`]: the tokio shell: sockets, timers, one task per peer.

pub mod codec;
pub mod fsm;

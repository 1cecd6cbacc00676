//! The embedded BGP speaker.
//!
//! - [`codec`]: BGP-4 messages to and from bytes; bad bytes become NOTIFICATIONs.
//! - [`fsm`]: the sans-IO session state machine (RFC 4271 §8).
//! - [`rib`]: what each peer should have from us, packed into UPDATEs.
//! - [`speaker`]: the tokio shell: sockets, timers, one task per peer.
//! - [`import`]: received routes into the kernel, where a peer's `importRoutes` says.
//! - [`runner`]: runs the speaker a plan describes and steers it as plans change.
//! - [`config`], [`password`], [`status`]: the agent file's `bgp` section and the
//!   pool's routes, MD5 password sources,
//!   per-peer status and metrics.
//! - [`sys`]: `TCP_MD5SIG`, the one `unsafe` call.
//! - [`cli`]: the `hybridway bgp-speaker` subcommand.

pub mod cli;
pub mod codec;
pub mod config;
pub mod fsm;
pub mod import;
pub mod password;
pub mod rib;
pub mod runner;
pub mod speaker;
pub mod status;
pub mod sys;

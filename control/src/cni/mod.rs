//! The CNI plugin, `hybridway-cni` (CNI specification 1.1): what a container
//! runtime (containerd, CRI-O) runs to give a pod its interface and address.
//!
//! ```text
//!  runtime ──env + stdin──► hybridway-cni ──control socket──► agent
//!                             │  config: env, stdin, CNI_ARGS  │ addresses: the one owner
//!                             │  pod_link: veth, address,      │   of pod addresses
//!                             │    routes in the pod's netns   │ attaches the host end
//!                             ▼                                ▼ to the dataplane
//!                      stdout: result or error object; one log line per call
//! ```
//!
//! The plugin keeps no state of its own: addresses live with the agent (persisted
//! under /var/lib/hybridway), the host end's name and the pod end's MAC are derived
//! from the attachment (container ID + interface), so a DEL or GC after any restart
//! finds what an ADD made.

pub mod config;
pub mod plugin;
pub mod pod_link;
pub mod result;

pub use config::{CniCommand, Invocation, NetConf};
pub use result::{CniError, ErrorCode};

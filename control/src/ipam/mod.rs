//! Hybrid pod address management: which node owns which block of the hybrid pod
//! CIDR. [`NodeBlockAllocator`] is sans-IO; the controller (`k8s::controller`) feeds
//! it the Nodes it watches and writes its answers back onto them, because the Node
//! object is where a block survives a restart.

mod allocator;

pub use allocator::{AllocError, ClaimError, Duplicate, NodeBlockAllocator};

//! The Node annotations the controller writes (one writer: the controller) and the
//! agents read. The values are plain strings so `kubectl get node -o yaml` shows
//! them as they are.

/// The node's block of the hybrid pod CIDR, e.g. `198.19.128.0/24`.
pub const HYBRID_POD_BLOCK: &str = "network.alibabacloud.com/hybrid-pod-block";
/// How the node's pool carries pod traffic: `overlay` or `underlay`.
pub const HYBRID_MODE: &str = "network.alibabacloud.com/hybrid-mode";
/// The name of the node pool (from the controller's parameters) the node is in.
pub const HYBRID_POOL: &str = "network.alibabacloud.com/hybrid-pool";

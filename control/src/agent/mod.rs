//! The node agent: reads its configuration, builds table snapshots, runs the
//! dataplane workers, and answers the local control socket.

pub mod config;
pub mod neighbors;
pub mod table_builder;

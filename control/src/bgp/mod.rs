//! BGP speaker (being written).

//! What the fuzz targets share: the node the `pipeline` target runs packets
//! through ([`pipeline_node`]) and how its input bytes become frames
//! ([`pipeline_input`]), which also makes the seed inputs checked in under
//! `seeds/pipeline/` (`scripts/fuzz-seeds.sh` writes them).

pub mod frames;
pub mod pipeline_input;
pub mod pipeline_node;

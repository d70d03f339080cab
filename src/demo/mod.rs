//! The demo: the tutorial end to end on the embedded defaults, and the in-process stack it (and
//! the end-to-end tests) run on, on the sandbox or on an external API server.

pub mod cluster;
pub mod run;
pub mod stack;

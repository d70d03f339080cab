//! The Kubernetes side shared by the controller and the agent: status patches under a field
//! manager, condition merging, and the watch plumbing (reflector stores fed by trimmed objects).

pub mod events;
pub mod status;
pub mod watch;

//! uami-controller's command-line binary and its embedded world: the `demo` that runs the
//! tutorial in one process on the Azure emulator and the in-memory Kubernetes API.

#[cfg(feature = "embedded")]
pub mod demo;

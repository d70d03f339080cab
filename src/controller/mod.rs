//! The controller: reconciles identities, bindings and grants against Azure Resource Manager.

pub mod config;
pub mod leader;
pub mod policy;
pub mod reasons;
pub mod status;

//! The controller: reconciles identities, bindings and grants against Azure Resource Manager.

pub mod app;
pub mod azure_identity;
pub mod binding;
pub mod budget;
pub mod config;
pub mod context;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod grant;
pub mod identity;
pub mod leader;
pub mod memo;
pub mod meta_patch;
pub mod objects;
pub mod outcome;
pub mod pass;
pub mod passing;
pub mod planes;
pub mod policy;
pub mod reasons;
pub mod run;
pub mod target_writer;
pub mod workload;

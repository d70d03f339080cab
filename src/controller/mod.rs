//! The controller: reconciles identities, bindings and grants against Azure Resource Manager.

pub mod policy;

//! uami-controller: declarative Azure user-assigned managed identities for Kubernetes.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod auth;
pub mod azure;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod emulator;
pub mod local_tls;
pub mod sandbox;
pub mod telemetry;

//! `ibdctl`: brings up the whole stack (pageserver-lite, walsync, a fuse-ibd mount and a stock
//! `mariadbd` on it) and runs the control plane for projects and computes.
//!
//! - [`control::Control`]: the core every front end uses (state, processes, supervision).
//! - [`api`]: the HTTP API of `ibdctl serve` over the same core.
//! - [`store`]: the durable state (one JSON file, replaced atomically) and the operation lock.
//! - [`home`], [`process`], [`mount`], [`ports`], [`mycnf`], [`prereq`], [`binaries`]: the
//!   pieces the core is made of, each testable without processes.

pub mod api;
pub mod binaries;
pub mod compute;
pub mod control;
pub mod error;
pub mod home;
pub mod model;
pub mod mount;
pub mod mycnf;
pub mod ports;
pub mod prereq;
pub mod process;
pub mod progress;
pub mod services;
pub mod store;

pub use control::{Control, EnvUrls, UpOptions};
pub use error::CtlError;

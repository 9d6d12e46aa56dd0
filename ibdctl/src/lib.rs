//! `ibdctl`: brings up the whole stack (pageserver-lite, walsync, a fuse-ibd mount and a stock
//! `mariadbd` on it) and runs the control plane for projects and computes.
//!
//! - [`store`]: the durable state (one JSON file, replaced atomically) and the operation lock.
//! - [`home`], [`process`], [`mount`], [`ports`], [`mycnf`], [`prereq`], [`binaries`]: the
//!   pieces the core is made of, each testable without processes.

pub mod binaries;
pub mod error;
pub mod home;
pub mod mount;
pub mod mycnf;
pub mod ports;
pub mod prereq;
pub mod process;
pub mod progress;
pub mod store;

pub use error::CtlError;

//! The one way the FUSE side waits for a background shipper: on a condvar, until the shared
//! state decides, for at most the configured remote limit.

use std::sync::{Condvar, MutexGuard};
use std::time::{Duration, Instant};

/// Waits until `decide` returns `Some` (checked now and after every change signalled on
/// `changed`), or `limit` passes: then the guard comes back so the caller can say how far it got.
pub fn wait_for<'a, T, R>(
    mut guard: MutexGuard<'a, T>,
    changed: &Condvar,
    limit: Duration,
    mut decide: impl FnMut(&T) -> Option<R>,
) -> Result<R, MutexGuard<'a, T>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(decision) = decide(&guard) {
            return Ok(decision);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(guard);
        }
        guard = changed
            .wait_timeout(guard, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

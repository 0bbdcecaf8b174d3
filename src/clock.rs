//! The node's monotonic clock in milliseconds: what idle deadlines, history ages and stream
//! lag are measured on. A leaf: it uses nothing of the crate.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on the node's monotonic clock (since its first reading).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

//! Time and randomness: the two inputs from the outside world that every part of EdgeSite (the
//! server, the controllers, the hollow nodes, the agent) reads, and that tests must control.
//! Nothing outside this crate reads `SystemTime::now`, `Instant::now` or sleeps a thread;
//! `.clippy.toml` enforces it.
#![warn(clippy::unwrap_used, clippy::expect_used)] // product code returns errors; tests may unwrap

pub mod clock;
pub mod random;

pub use clock::{Clock, ManualClock, SystemClock, block_for, unix_seconds_of};
pub use random::Rng;

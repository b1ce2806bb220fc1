//! # tandem-sim (test-only)
//!
//! Checks Tandem's convergence invariants (I1–I6 of `spec/convergence.md`) against replicas:
//!
//! - [`invariants`]: what every node could have shown its clients, checked after every step;
//! - [`workload`]: client operations with the bookkeeping those checks need;
//! - [`sim`]: a seeded deterministic simulation of N nodes running the real store and the
//!   real sync sessions over a virtual network with drops, duplicates, delays, one-way and
//!   two-way partitions, and crashes with restarts from disk.
//!
//! The tests in `tests/` run a fixed set of seeds; `TANDEM_SIM_SEED=N` replays one seed and
//! `TANDEM_SIM_RANDOM=K` runs K fresh ones (their seeds are printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod invariants;
pub mod sim;
pub mod workload;

pub use invariants::{ACCOUNT, Checker, visible};
pub use sim::{Rng, Sim, SimConfig};
pub use workload::{Action, NAMES, Workload};

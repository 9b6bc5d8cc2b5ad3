//! Benchmarks of the `tandem-worker bench` command: programs that print figures, never tests.

pub mod kernels;

//! Benchmarks and load generation for Quiver: the in-process engine load behind
//! `quiver bench engine` and the criterion benches, the durability probe's record format,
//! and the `fio` baseline every figure is compared with.

#![deny(missing_docs)]

pub mod engine;
pub mod fio;
pub mod probe;

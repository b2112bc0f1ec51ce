//! Benchmarks and load generation for Quiver.

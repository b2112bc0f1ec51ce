//! Benchmarks and load generation for Quiver: the in-process engine load behind
//! `quiver bench engine` and the criterion benches, the durability probe's record format,
//! and the `fio` baseline every figure is compared with.

#![deny(missing_docs)]

pub mod engine;
pub mod fio;
pub mod load;
pub mod probe;
pub mod soak;
pub mod topics;

/// A fresh directory for a benchmark's data, under `BENCH_DIR` (default `./data/criterion`).
pub fn bench_dir(name: &str) -> std::path::PathBuf {
    let root = std::env::var_os("BENCH_DIR").map_or_else(
        || std::path::PathBuf::from("./data/criterion"),
        std::path::PathBuf::from,
    );
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

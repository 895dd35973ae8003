//! Benchmarks of msd, with the `mdns-sd` crate side by side where both do the same job.
//!
//! The `msd-bench` binary runs the sections and prints every figure with its minimum, median,
//! 99th percentile and maximum; `docs/BENCHMARKS.md` records one run. `benches/codec.rs` measures
//! the codecs again with criterion.
//!
//! Benchmarks report figures and never fail on a time. Everything that crosses a network runs
//! inside network namespaces of an `msd-lab` lab, so the machine's own interfaces carry no
//! benchmark traffic even where msd and mdns-sd use every interface by default.

pub mod child;
pub mod codec;
pub mod crash;
pub mod ingest;
pub mod lab;
pub mod latency;
pub mod packets;
pub mod procfs;
pub mod report;
pub mod scale;
pub mod summary;
pub mod watch;

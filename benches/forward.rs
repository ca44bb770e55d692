//! `cargo bench`: the forward benchmark of `examples/bench_forward.rs` with its defaults
//! (paper network, L1–L4, 1×1×256×256). Flags go after `--`, as for the example.
include!("../examples/bench_forward.rs");

//! `cargo bench`: the forward benchmark of `examples/bench_forward.rs` with its defaults
//! (paper network, L1–L4, 1×1×256×256). Flags go after `--`, as for the example.

#[path = "../examples/bench_forward.rs"]
mod bench_forward;

fn main() -> unetpp::Result<()> {
    bench_forward::main()
}

//! Helpers shared by the examples.

use std::time::Instant;

/// Median wall-clock seconds of `f` over `runs` runs, after one warm-up run.
pub fn median_seconds<E>(mut f: impl FnMut() -> Result<(), E>, runs: usize) -> Result<f64, E> {
    f()?;
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

//! Parsers of flag values shared by the examples' command lines.
#![allow(dead_code)] // each example uses a part of it

/// A comma-separated list of channel widths, e.g. `32,64,128,256,512` (spaces allowed).
pub fn widths(s: &str) -> Result<Vec<usize>, std::num::ParseIntError> {
    s.split(',').map(|w| w.trim().parse()).collect()
}

/// A count of at least `min`.
pub fn at_least(min: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |s| match s.parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(format!("must be at least {min}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `LOW,HIGH` as [`Normalize::Percentiles`](unetpp::data::normalize::Normalize), checked.
pub fn percentiles(s: &str) -> Result<unetpp::data::normalize::Normalize, String> {
    let (low, high) = s.split_once(',').ok_or("expected LOW,HIGH, e.g. 1,99.8")?;
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("`{v}`: {e}"));
    let how = unetpp::data::normalize::Normalize::Percentiles {
        low: parse(low)?,
        high: parse(high)?,
    };
    how.validate().map_err(|e| e.to_string())?;
    Ok(how)
}

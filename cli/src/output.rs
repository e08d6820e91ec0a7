//! Human-readable numbers.

/// Bytes as B/KiB/MiB/GiB with one decimal.
pub use bora_core::units::human_bytes as bytes;

/// Throughput of `n` bytes in `secs` seconds.
pub fn rate(n: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    format!("{}/s", bytes((n as f64 / secs) as u64))
}

/// One line: what failed and why, outermost context first. Library errors often print
/// their cause in their own message too, so a cause already said is not repeated.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if msg.contains(&s) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s);
    }
    msg.replace('\n', " ")
}

/// Prints a JSON value on stdout.
pub fn json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

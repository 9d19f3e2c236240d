//! Latency histograms and result printing shared by the benchmarks.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, 1us to 100s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds")
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// Print a result as JSON or as aligned `key: value` lines.
pub fn print<T: Serialize>(result: &T, json: bool) {
    let value = serde_json::to_value(result).expect("results serialize");
    if json {
        println!("{value}");
        return;
    }
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            match v {
                serde_json::Value::Object(inner) => {
                    for (ik, iv) in inner {
                        println!("{:>28}: {iv}", format!("{k}.{ik}"));
                    }
                }
                other => println!("{k:>28}: {other}"),
            }
        }
    }
}

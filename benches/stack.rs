//! Stack-file parsing benchmark: files of 10,000 to 320,000 `[values]` keys (about 0.2 to 7 MB),
//! parsed and checked for unknown keys as `plan` does. Reports the time per megabyte and its
//! ratio to the smallest file's, measured in the same run: a parse linear in the file's size
//! keeps the ratio near 1 (a quadratic one doubles it with each doubling of the size).
//!
//! Run: `cargo bench --bench stack`. Environment: `BENCH_ROUNDS` (default 5; the best is kept).

use std::path::Path;
use std::time::{Duration, Instant};

use cutover::stack::Stack;

fn file(keys: usize) -> String {
    let mut s = String::from("plan = \"demo\"\nprovider = \"local\"\n[values]\n");
    for i in 0..keys {
        s.push_str(&format!("key_number_{i:07} = {i}\n"));
    }
    s
}

fn best(text: &str, rounds: usize) -> Duration {
    (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            let stack = Stack::parse("bench", Path::new("stacks/bench.toml"), text).unwrap();
            let e = stack.check_unused().unwrap_err().to_string();
            assert!(e.contains("more unknown keys"), "{e}");
            t0.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>8}",
        "keys", "MB", "seconds", "s/MB", "ratio"
    );
    let mut base = None;
    for keys in [10_000, 40_000, 160_000, 320_000] {
        let text = file(keys);
        let mb = text.len() as f64 / 1e6;
        let t = best(&text, rounds).as_secs_f64();
        let per_mb = t / mb;
        let base = *base.get_or_insert(per_mb);
        println!(
            "{keys:>8} {mb:>8.2} {t:>10.4} {per_mb:>10.4} {:>8.2}",
            per_mb / base
        );
    }
}

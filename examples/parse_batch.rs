//! How long `POST /trigger/`'s parsing takes for a batch like `ht-bench rooms` sends (500
//! triggers, one room each): `cargo run --release --example parse_batch`.

use std::time::Instant;

use high_templar::protocol::Trigger;
use high_templar::room::RoomLimits;

fn main() {
    let triggers: Vec<String> = (0..500)
        .map(|i| {
            format!(
                r#"{{"rooms":[{{"target":"bench","room":"r{i}"}}],"data":{{"ts":1764750000000000,"seq":{i}}}}}"#
            )
        })
        .collect();
    let body = format!("[{}]", triggers.join(","));
    let limits = RoomLimits::default();
    let rounds = 2000;
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds {
            let parsed = Trigger::parse_batch(body.as_bytes(), &limits, 10_000).expect("valid");
            assert_eq!(parsed.len(), 500);
        }
        times.push(start.elapsed().as_secs_f64() * 1e9 / (rounds * 500) as f64);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{:.0} ns per trigger (median of 5 rounds of {rounds} batches of 500)",
        times[2]
    );
}

//! What the history costs per trigger taken in, for triggers like `ht-bench rooms` sends (one
//! room each, 10,000 distinct rooms), with the default bounds so that eviction runs too:
//! `cargo run --release --example history_append`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use high_templar::history::{History, HistoryLimits};
use high_templar::protocol::Trigger;
use high_templar::room::RoomLimits;

fn main() {
    let limits = RoomLimits::default();
    let rooms = 10_000;
    let triggers: Vec<Trigger> = (0..rooms)
        .map(|i| {
            let body = format!(
                r#"{{"rooms":[{{"target":"bench","room":"r{i}"}}],"data":{{"ts":1764750000000000,"seq":{i}}}}}"#
            );
            Trigger::parse(body.as_bytes(), &limits).expect("valid")
        })
        .collect();
    let mut history = History::new(HistoryLimits {
        ttl: Duration::from_secs(300),
        memory: 64 << 20,
    });
    let rounds = 50;
    let mut position = 0;
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds {
            for trigger in &triggers {
                position += 1;
                let mut trigger = Trigger {
                    rooms: trigger.rooms.clone(),
                    frame_prefix: trigger.frame_prefix.clone(),
                    position,
                };
                trigger.position = position;
                history.append(Arc::new(trigger), 0);
            }
        }
        times.push(start.elapsed().as_secs_f64() * 1e9 / (rounds * rooms) as f64);
    }
    times.sort_by(f64::total_cmp);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    println!("process RSS with the history full: {rss} (the triggers of the round: ~3 MiB)");
    println!(
        "history append (evicting at {} entries, {} MiB): median {:.0} ns per trigger [{:.0}..{:.0}]",
        history.len(),
        history.bytes() >> 20,
        times[2],
        times[0],
        times[4]
    );
}

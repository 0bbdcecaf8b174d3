//! The machine's floor for fan-out latency: how long one thread takes to write one small
//! frame to each of N loopback TCP sockets while another thread reads them all — what any
//! server has to do for one trigger to N subscribers, without any server around it.
//!
//! `cargo run --release --example sendto_floor -- 1000 200` (sockets, rounds). Prints the
//! median and p99 over the rounds of the time to write all N, and µs per write.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        writers.push(server);
        readers.push(client);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // A polling reader: drains every socket, like a client process with many sockets.
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let mut any = false;
                for r in &mut readers {
                    if let Ok(k) = r.read(&mut buf) {
                        any |= k > 0;
                    }
                }
                if !any {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    let frame = [b'x'; 90];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for w in &mut writers {
            w.write_all(&frame)?;
        }
        times.push(start.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reading.join();
    times.sort();
    let median = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!(
        "{n} sockets, {rounds} rounds: all written in median {:.2} ms, p99 {:.2} ms; {:.2} µs per write",
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

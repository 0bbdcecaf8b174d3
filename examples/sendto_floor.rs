//! The machine's floor for delivering messages over loopback TCP, without a server: what any
//! server has to do for one trigger to N subscribers (`burst`), or for a stream of triggers
//! each to its own subscriber (`stream`, the `rooms` scenario).
//!
//! ```sh
//! cargo run --release --example sendto_floor -- burst 1000 200   # sockets, rounds
//! cargo run --release --example sendto_floor -- stream 10000 5   # sockets, seconds
//! cargo run --release --example sendto_floor -- pingpong 20000    # round trips
//! cargo run --release --example sendto_floor -- latency 1000 100 2 100  # sockets, rounds, writer threads, ms between rounds
//! ```
//! `burst`: one thread writes one 90-byte frame to each of N sockets, another drains them;
//! prints the median and p99 over the rounds of the time to write all N, and µs per write.
//! `stream`: one thread writes frames round-robin over N sockets for the given seconds while
//! a single-threaded tokio runtime reads them (as `ht-bench` does); prints messages/s read
//! and the CPU both threads used per message.
//! `latency`: rounds of one frame to each of N sockets, written by W threads at once, while a
//! tokio runtime reads them (the `latency` scenario with a server that only writes); prints
//! p50/p99/max of the time from a round's start until each frame was in its reader's socket.
//! `pingpong`: one thread sends a 60-byte message over one socket and waits for the 20-byte
//! answer another thread sends back, as many times as asked (`subscribe` one at a time, with
//! an echo in place of a server); prints round trips/s.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FRAME: [u8; 90] = [b'x'; 90];

fn pairs(n: usize) -> std::io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (mut writers, mut readers) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        writers.push(server);
        readers.push(client);
    }
    Ok((writers, readers))
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn burst(n: usize, rounds: usize) -> std::io::Result<()> {
    let (mut writers, mut readers) = pairs(n)?;
    for r in &readers {
        r.set_nonblocking(true)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let stop = stop.clone();
        std::thread::spawn(move || {
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
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for w in &mut writers {
            w.write_all(&FRAME)?;
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
        "burst: {n} sockets, {rounds} rounds: all written in median {:.2} ms, p99 {:.2} ms; \
         {:.2} µs per write",
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

/// Reads every socket on a single-threaded tokio runtime (as `ht-bench` does), adding the bytes
/// read to `read`, until `stop`.
fn drain(
    readers: Vec<TcpStream>,
    read: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            for r in readers {
                r.set_nonblocking(true)?;
                let mut r = tokio::net::TcpStream::from_std(r)?;
                let read = read.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 4096];
                    while let Ok(k) = r.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        read.fetch_add(k as u64, Ordering::Relaxed);
                    }
                });
            }
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        })
    })
}

fn stream(n: usize, seconds: u64) -> std::io::Result<()> {
    let (mut writers, readers) = pairs(n)?;
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reading = drain(readers, read.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, bytes0, start) = (cpu_seconds(), read.load(Ordering::Relaxed), Instant::now());
    let deadline = start + Duration::from_secs(seconds);
    let mut written = 0u64;
    'outer: loop {
        for w in &mut writers {
            w.write_all(&FRAME)?;
            written += 1;
            if written.is_multiple_of(1024) && Instant::now() >= deadline {
                break 'outer;
            }
        }
    }
    // Let the reader catch up with what was written.
    let target = bytes0 + written * FRAME.len() as u64;
    let give_up = Instant::now() + Duration::from_secs(10);
    while read.load(Ordering::Relaxed) < target && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let messages = (read.load(Ordering::Relaxed) - bytes0) / FRAME.len() as u64;
    let cpu = cpu_seconds() - cpu0;
    stop.store(true, Ordering::Relaxed);
    drop(writers);
    let _ = reading.join();
    println!(
        "stream: {n} sockets, {seconds} s: {:.0} msgs/s written and read, {:.2} µs of CPU per \
         message (writer + reader, {:.0} % of one core)",
        messages as f64 / elapsed,
        cpu * 1e6 / messages as f64,
        cpu / elapsed * 100.0
    );
    Ok(())
}

/// `latency`: the `latency` scenario with a server that does nothing but write. Each round, `w`
/// writer threads (woken by a channel, as a server's workers are) each write one frame to their
/// share of the N sockets while a tokio runtime reads them all; a frame's latency is the time
/// from the round's start until its write returned — loopback delivers inside the write, so
/// that is when it reached the reader's socket, the instant `ht-bench` stamps.
fn latency(n: usize, rounds: usize, w: usize, period: Duration) -> std::io::Result<()> {
    let (writers, readers) = pairs(n)?;
    let (read, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let reading = drain(readers, read.clone(), stop.clone());
    let w = w.max(1);
    let mut chunks: Vec<Vec<TcpStream>> = (0..w).map(|_| Vec::new()).collect();
    for (i, socket) in writers.into_iter().enumerate() {
        chunks[i % w].push(socket);
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel::<std::io::Result<Vec<Duration>>>();
    let mut starts = Vec::new();
    for mut chunk in chunks {
        let (start_tx, start_rx) = std::sync::mpsc::channel::<Instant>();
        starts.push(start_tx);
        let done = done_tx.clone();
        std::thread::spawn(move || {
            while let Ok(t0) = start_rx.recv() {
                let mut times = Vec::with_capacity(chunk.len());
                let wrote: std::io::Result<()> = chunk.iter_mut().try_for_each(|socket| {
                    socket.write_all(&FRAME)?;
                    times.push(t0.elapsed());
                    Ok(())
                });
                if done.send(wrote.map(|()| times)).is_err() {
                    return;
                }
            }
        });
    }
    let mut times = Vec::with_capacity(n * rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        for start in &starts {
            start
                .send(t0)
                .map_err(|_| std::io::Error::other("a writer thread ended"))?;
        }
        for _ in &starts {
            let round = done_rx
                .recv()
                .map_err(|_| std::io::Error::other("a writer thread ended"))?;
            times.extend(round?);
        }
        std::thread::sleep(period.saturating_sub(t0.elapsed()));
    }
    drop(starts);
    stop.store(true, Ordering::Relaxed);
    let _ = reading.join();
    times.sort();
    let at = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "latency: {n} sockets, {rounds} rounds every {} ms, {w} writer thread(s): write-to-socket \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        period.as_millis(),
        at(50),
        at(99),
        at(100)
    );
    Ok(())
}

fn pingpong(rounds: usize) -> std::io::Result<()> {
    let (mut writers, mut readers) = pairs(1)?;
    let (mut server, mut client) = (writers.remove(0), readers.remove(0));
    client.set_nodelay(true)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 60];
        for _ in 0..rounds {
            server.read_exact(&mut buf)?;
            server.write_all(&buf[..20])?;
        }
        Ok(())
    });
    let mut answer = [0u8; 20];
    let start = Instant::now();
    for _ in 0..rounds {
        client.write_all(&[b's'; 60])?;
        client.read_exact(&mut answer)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    echo.join()
        .map_err(|_| std::io::Error::other("echo thread panicked"))??;
    println!(
        "pingpong: {rounds} round trips: {:.0}/s, {:.1} µs each",
        rounds as f64 / elapsed,
        elapsed * 1e6 / rounds as f64
    );
    Ok(())
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Every size is a count above 0 (an empty round has no percentiles); a typo is an error,
    // not a silent default.
    let num = |i: usize, default: usize| match args.get(i).map(|a| (a, a.parse::<usize>())) {
        None => default,
        Some((_, Ok(v))) if v > 0 => v,
        Some((a, _)) => {
            eprintln!("argument {i} ({a:?}): expected a whole number above 0");
            std::process::exit(2)
        }
    };
    match args.first().map(String::as_str) {
        Some("stream") => stream(num(1, 10_000), num(2, 5) as u64),
        Some("pingpong") => pingpong(num(1, 20_000)),
        Some("latency") => latency(
            num(1, 1000),
            num(2, 100),
            num(3, 2),
            Duration::from_millis(num(4, 100) as u64),
        ),
        Some("burst") | None => burst(num(1, 1000), num(2, 200)),
        Some(other) => {
            eprintln!("unknown mode {other:?}: burst, stream, latency or pingpong");
            std::process::exit(2)
        }
    }
}

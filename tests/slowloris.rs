//! Sockets that never finish their request head (slowloris): each is closed at the
//! request-head deadline, and past the listener's bound of such sockets the oldest make room,
//! so they cannot take the node's descriptors nor keep a real client out.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The deadline these tests set, short so that they run in seconds.
const DEADLINE: Duration = Duration::from_secs(1);

/// Trickling sockets: more than a real client ever holds, far fewer than the bound.
const TRICKLERS: usize = 500;

/// How often a trickler sends one more header byte.
const TRICKLE_EVERY: Duration = Duration::from_millis(100);

/// Sends a request line, then a header byte every [`TRICKLE_EVERY`], until the server closes
/// the socket; how long that took.
async fn trickle(addr: std::net::SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /ws/ HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        .await
        .expect("request line");
    let (mut read, mut write) = stream.split();
    let mut ticks = tokio::time::interval(TRICKLE_EVERY);
    let mut buf = [0u8; 64];
    let limit = started + 10 * DEADLINE;
    loop {
        tokio::select! {
            // Closed: the read ends (or fails, if our unread bytes made it a reset).
            read = read.read(&mut buf) => match read {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => panic!("a trickler got an answer"),
            },
            _ = ticks.tick() => {
                if write.write_all(b"a").await.is_err() {
                    return started.elapsed();
                }
            }
            _ = tokio::time::sleep_until(limit) => panic!("a trickler was held for {:?}", 10 * DEADLINE),
        }
    }
}

#[tokio::test]
async fn trickling_sockets_are_closed_at_the_request_head_deadline_while_a_client_connects() {
    raise_fd_limit(4 * TRICKLERS as u64 + 1024);
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    let mut config = config_for(&backend);
    config.policy.request_head_timeout = DEADLINE;
    let server = start(config).await;
    let addr = server.local_addr;

    let tricklers: Vec<_> = (0..TRICKLERS)
        .map(|_| tokio::spawn(trickle(addr)))
        .collect();
    tokio::time::sleep(DEADLINE / 4).await;
    // A real client meanwhile: in at once.
    let started = Instant::now();
    let mut client = Client::authorized(addr).await;
    client.ping().await;
    let took = started.elapsed();
    assert!(
        took < DEADLINE / 2,
        "a client took {took:?} among the tricklers"
    );

    for trickler in tricklers {
        let held = trickler.await.expect("trickler");
        // At the deadline, give or take a busy test machine; never before it.
        assert!(
            held >= DEADLINE,
            "closed after {held:?}, before the deadline"
        );
        assert!(held < 3 * DEADLINE, "closed after {held:?}");
    }
    let status = server.status();
    assert_eq!(
        status["connections_refused"]["head_timeout"], TRICKLERS,
        "{status}"
    );
    // The real client was not touched.
    client.ping().await;
}

#[tokio::test]
async fn past_the_bound_of_pending_sockets_the_oldest_tricklers_make_room_for_a_client() {
    let backend = TestBackend::start(Reply::ok(json!({"allowed_rooms": []}))).await;
    // The default deadline (10 s): here it is the bound that closes sockets.
    let server = start(config_for(&backend)).await;
    let addr = server.local_addr;
    let bound = server.capacity.pending_per_listener;
    let beyond = 200;
    raise_fd_limit(3 * (bound + beyond) as u64 + 1024);

    // Sockets that begin a request head and never finish it. Those past the bound wait in
    // the kernel's backlog, as the real client below will.
    let closed = Arc::new(AtomicUsize::new(0));
    let mut tricklers = Vec::new();
    for _ in 0..bound + beyond {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /ws/ HTTP/1.1\r\nHost: slow\r\n")
            .await
            .expect("the head's first line");
        let closed = closed.clone();
        tricklers.push(tokio::spawn(async move {
            let mut buf = [0u8; 16];
            if matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {
                closed.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    let started = Instant::now();
    let mut client = Client::authorized(addr).await;
    let took = started.elapsed();
    client.ping().await;
    // In once the oldest tricklers had their second, long before the 10 s deadline.
    let limit = high_templar::server::EVICT_AFTER + Duration::from_secs(3);
    assert!(took < limit, "the client took {took:?}");
    let evicted = closed.load(Ordering::SeqCst);
    assert!(
        evicted >= beyond,
        "{evicted} tricklers closed; the {beyond} past the bound should have made room"
    );
    let status = server.status();
    assert!(
        status["connections_refused"]["pending_full"].as_u64() >= Some(beyond as u64),
        "{status}"
    );
    println!("a client in after {took:?}, {evicted} tricklers closed to make room");
    for task in tricklers {
        task.abort();
    }
}

//! Sending triggers: `POST /trigger/` to our server, or RabbitMQ (through a small aio-pika
//! script from the 3.1 virtualenv) for high-templar 3.1, which has no HTTP trigger endpoint.
//!
//! Every trigger carries `{"ts":<µs since the epoch>,"seq":<n>}` as `data`; clients compute
//! latency from `ts` (same machine, same clock) and loss and duplicates from `seq`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};

use crate::target::TRIGGER_TOKEN;
use crate::ws::{find, number_after};

/// The aio-pika publisher run with the 3.1 virtualenv's python.
const AMQP_PUBLISHER: &str = include_str!("amqp_publish.py");
/// Largest response to a trigger POST we read.
const MAX_RESPONSE: usize = 64 * 1024;

/// Microseconds since the Unix epoch: the clock both sides of a latency share.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One trigger to send: the room's name (its `room` value) and a sequence number.
pub struct Trigger<'a> {
    pub room: &'a str,
    pub seq: u64,
}

fn write_trigger(out: &mut Vec<u8>, trigger: &Trigger, ts: &str) {
    out.extend_from_slice(br#"{"rooms":[{"target":"bench","room":""#);
    out.extend_from_slice(trigger.room.as_bytes());
    out.extend_from_slice(br#""}],"data":{"ts":"#);
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(br#","seq":"#);
    out.extend_from_slice(trigger.seq.to_string().as_bytes());
    out.extend_from_slice(b"}}");
}

/// Where triggers go.
pub enum Publisher {
    Http(HttpPublisher),
    Amqp(AmqpPublisher),
}

impl Publisher {
    /// Publishes `triggers`, over HTTP as one batch.
    pub async fn publish(&mut self, triggers: &[Trigger<'_>]) -> anyhow::Result<()> {
        match self {
            Publisher::Http(http) => http.publish(triggers).await,
            Publisher::Amqp(amqp) => amqp.publish(triggers).await,
        }
    }

    /// How the triggers travel, for the report.
    pub fn label(&self) -> &'static str {
        match self {
            Publisher::Http(_) => "HTTP POST /trigger/",
            Publisher::Amqp(_) => "AMQP (RabbitMQ)",
        }
    }
}

/// A keep-alive HTTP/1.1 connection to `/trigger/`.
pub struct HttpPublisher {
    stream: TcpStream,
    addr: SocketAddr,
    body: Vec<u8>,
    response: Vec<u8>,
}

impl HttpPublisher {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<HttpPublisher> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpPublisher {
            stream,
            addr,
            body: Vec::new(),
            response: Vec::with_capacity(1024),
        })
    }

    async fn publish(&mut self, triggers: &[Trigger<'_>]) -> anyhow::Result<()> {
        let ts = now_micros().to_string();
        self.body.clear();
        if let [one] = triggers {
            write_trigger(&mut self.body, one, &ts);
        } else {
            self.body.push(b'[');
            for (i, trigger) in triggers.iter().enumerate() {
                if i > 0 {
                    self.body.push(b',');
                }
                write_trigger(&mut self.body, trigger, &ts);
            }
            self.body.push(b']');
        }
        let head = format!(
            "POST /trigger/ HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TRIGGER_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            self.body.len()
        );
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(&self.body).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> anyhow::Result<()> {
        self.response.clear();
        let mut chunk = [0u8; 4096];
        let (head_end, length) = loop {
            if let Some(at) = find(&self.response, b"\r\n\r\n") {
                let head = self.response[..at].to_ascii_lowercase();
                let length = number_after(&head, b"content-length:").unwrap_or(0) as usize;
                break (at + 4, length);
            }
            self.read_more(&mut chunk).await?;
        };
        while self.response.len() < head_end + length {
            self.read_more(&mut chunk).await?;
        }
        if !self.response.starts_with(b"HTTP/1.1 200") {
            bail!(
                "trigger refused: {}",
                String::from_utf8_lossy(&self.response[..head_end + length])
            );
        }
        Ok(())
    }

    async fn read_more(&mut self, chunk: &mut [u8]) -> anyhow::Result<()> {
        let n = self.stream.read(chunk).await?;
        if n == 0 {
            bail!("server closed the trigger connection");
        }
        if self.response.len() + n > MAX_RESPONSE {
            bail!("trigger response too large");
        }
        self.response.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// The aio-pika publisher process; one line per trigger on its stdin.
pub struct AmqpPublisher {
    child: Child,
    stdin: ChildStdin,
    lines: Vec<u8>,
}

impl AmqpPublisher {
    pub async fn start(venv: &Path, url: &str) -> anyhow::Result<AmqpPublisher> {
        let script = std::env::temp_dir().join(format!("ht-bench-amqp-{}.py", std::process::id()));
        std::fs::write(&script, AMQP_PUBLISHER)?;
        let python = venv.join("bin/python");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let stdin = child.stdin.take().context("publisher stdin")?;
        let stdout = child.stdout.take().context("publisher stdout")?;
        let mut ready = String::new();
        BufReader::new(stdout).read_line(&mut ready).await?;
        if ready.trim() != "ready" {
            bail!("the AMQP publisher did not start (is RabbitMQ at {url}?)");
        }
        Ok(AmqpPublisher {
            child,
            stdin,
            lines: Vec::new(),
        })
    }

    async fn publish(&mut self, triggers: &[Trigger<'_>]) -> anyhow::Result<()> {
        self.lines.clear();
        for trigger in triggers {
            write_trigger(&mut self.lines, trigger, "__TS__");
            self.lines.push(b'\n');
        }
        self.stdin.write_all(&self.lines).await?;
        self.stdin.flush().await?;
        if let Some(status) = self.child.try_wait()? {
            bail!("the AMQP publisher exited: {status}");
        }
        Ok(())
    }
}

/// What the publisher thread sends: for each `seq` in `0..per_room`, every room once, `batch`
/// rooms per publish; at most `rate` publishes per second when given.
pub struct Plan {
    pub rooms: Vec<String>,
    pub per_room: u64,
    pub batch: usize,
    pub rate: Option<f64>,
}

/// When the first publish of a plan went out.
pub struct Sent {
    pub first: std::time::Instant,
}

/// How to reach the server's trigger input.
pub enum Route {
    Http(SocketAddr),
    Amqp {
        venv: std::path::PathBuf,
        url: String,
    },
}

type Job = (Plan, tokio::sync::oneshot::Sender<anyhow::Result<Sent>>);

/// A publisher on its own thread and single-threaded runtime, so trigger timing never waits
/// behind the clients' frame processing (which would measure the load generator).
pub struct PublisherThread {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    pub label: &'static str,
}

impl PublisherThread {
    pub fn start(route: Route) -> anyhow::Result<PublisherThread> {
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(error)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let publisher = match route {
                        Route::Http(addr) => {
                            HttpPublisher::connect(addr).await.map(Publisher::Http)
                        }
                        Route::Amqp { venv, url } => {
                            AmqpPublisher::start(&venv, &url).await.map(Publisher::Amqp)
                        }
                    };
                    let mut publisher = match publisher {
                        Ok(p) => {
                            let _ = ready_tx.send(Ok(p.label()));
                            p
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(error));
                            return;
                        }
                    };
                    while let Some((plan, done)) = rx.recv().await {
                        let _ = done.send(execute(&mut publisher, plan).await);
                    }
                });
            })?;
        let label = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("publisher thread died"))??;
        Ok(PublisherThread { jobs, label })
    }

    pub async fn run(&self, plan: Plan) -> anyhow::Result<Sent> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send((plan, tx))
            .map_err(|_| anyhow::anyhow!("publisher thread gone"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("publisher thread gone"))?
    }
}

async fn execute(publisher: &mut Publisher, plan: Plan) -> anyhow::Result<Sent> {
    let first = std::time::Instant::now();
    let mut ticker = plan.rate.map(|rate| {
        let mut interval = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / rate));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    });
    let mut triggers = Vec::with_capacity(plan.batch.max(1));
    for seq in 0..plan.per_room {
        for chunk in plan.rooms.chunks(plan.batch.max(1)) {
            if let Some(ticker) = &mut ticker {
                ticker.tick().await;
            }
            triggers.clear();
            triggers.extend(chunk.iter().map(|room| Trigger { room, seq }));
            publisher.publish(&triggers).await?;
        }
    }
    Ok(Sent { first })
}

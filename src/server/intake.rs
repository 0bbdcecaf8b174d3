//! The intake thread: where triggers come in (the internal listener's `POST /trigger/`, the
//! broker sources), on a thread and a single-threaded runtime of their own, so that taking a
//! trigger in never waits behind the connections' tasks.
//!
//! # Why a thread of its own
//! In a burst, every trigger wakes thousands of connection tasks, and each writes out what it
//! has. On the shared workers the next trigger's request then waited behind them (measured:
//! 2-3 ms of fan-out, then 3-6 ms before the next trigger was read, 10,000 subscribers), so
//! every connection was written after every few triggers: many small writes, and the kernel's
//! cost of a write is most of a fan-out's. Taken in here, a trigger fans out as soon as it
//! arrives; the workers only write, and each write carries what piled up meanwhile (10,000 x
//! 500, three alternating runs: 142-227k writes instead of 315-415k, 0.37-0.69 instead of
//! 0.90-1.38 µs of server CPU per message; BENCHMARKS.md).
//!
//! The fan-out itself is synchronous (the sequencer's lock, the hub, the outboxes) and wakes
//! the connection tasks on the main runtime from here. Websockets never come here: the public
//! listener, and with it `/trigger/` when no internal address is set, stays on the workers.

use std::future::Future;
use std::io;
use std::thread;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The intake thread and its runtime; the thread ends when this is stopped or dropped.
pub(super) struct Intake {
    handle: Handle,
    stop: CancellationToken,
}

impl Intake {
    /// Starts the thread.
    pub fn start() -> io::Result<Intake> {
        let runtime: Runtime = Builder::new_current_thread()
            .enable_all()
            .thread_name("ht-intake")
            .build()?;
        let handle = runtime.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        thread::Builder::new()
            .name("ht-intake".into())
            // The runtime runs its tasks while the thread waits for the stop, and is dropped
            // on this thread afterwards (dropping one inside another runtime would panic).
            .spawn(move || runtime.block_on(stopped.cancelled()))?;
        Ok(Intake { handle, stop })
    }

    /// Runs `task` on the intake thread.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Runs `make` with the intake runtime as the current one: I/O resources it creates (a
    /// listener) are driven by the intake thread.
    pub fn enter<T>(&self, make: impl FnOnce() -> T) -> T {
        let _entered = self.handle.enter();
        make()
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_intake_thread_and_it_ends_when_dropped() {
        let intake = Intake::start().expect("intake");
        let name = intake
            .spawn(async { thread::current().name().map(str::to_string) })
            .await
            .expect("task");
        assert_eq!(name.as_deref(), Some("ht-intake"));
        let pending = intake.spawn(std::future::pending::<()>());
        drop(intake);
        // The runtime is dropped with the thread: its tasks are cancelled, not leaked.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), pending).await;
        assert!(
            matches!(&ended, Ok(Err(e)) if e.is_cancelled()),
            "{ended:?}"
        );
    }
}

//! A connection's message budget: how many frames the client may send, and what happens when
//! it sends more.
//!
//! Over budget, the connection is by default simply not read until the budget refills: the
//! client's frames wait in its socket and then in the kernel's buffers, TCP backpressure slows
//! the sender, and a flood costs the node at most the budget's rate of work. Nothing a real
//! app does is refused; a burst only waits. Operators who prefer to cut abusers off set
//! `close_flooders`, and the connection is then closed with 1008 `rate-limited`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::config::policy::Policy;

/// Frames per connection, as a token bucket: `rate` tokens a second up to `burst`.
pub(super) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token, or says how long until there is one.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// What to do with the next frame.
pub(super) enum Verdict {
    /// Handle it.
    Take,
    /// Leave it unread until [`Budget::poll_refilled`] is ready.
    Wait,
    /// Close the connection (`close_flooders`).
    Close,
}

pub(super) struct Budget {
    bucket: TokenBucket,
    close: bool,
    /// The refill being waited for. Boxed: only a throttled connection holds one.
    refill: Option<Pin<Box<Sleep>>>,
}

impl Budget {
    pub fn new(policy: &Policy) -> Budget {
        Budget {
            bucket: TokenBucket::new(policy.messages_per_second, policy.message_burst),
            close: policy.close_flooders,
            refill: None,
        }
    }

    /// Spends one frame's worth of budget.
    pub fn spend(&mut self) -> Verdict {
        match self.bucket.take() {
            Ok(()) => Verdict::Take,
            Err(_) if self.close => Verdict::Close,
            Err(wait) => {
                self.refill = Some(Box::pin(tokio::time::sleep(wait)));
                Verdict::Wait
            }
        }
    }

    /// Whether the connection is waiting for its budget.
    pub fn is_waiting(&self) -> bool {
        self.refill.is_some()
    }

    /// Ready once the budget has a frame's worth again (at once when not waiting).
    pub fn poll_refilled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(refill) = self.refill.as_mut() {
            std::task::ready!(refill.as_mut().poll(cx));
            self.refill = None;
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_bursts_then_the_rate() {
        let mut bucket = TokenBucket::new(10.0, 5);
        assert!((0..5).all(|_| bucket.take().is_ok()));
        assert_eq!(bucket.take(), Err(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(bucket.take().is_ok());
        assert!(bucket.take().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn over_budget_waits_for_the_refill_unless_told_to_close() {
        let policy = Policy {
            messages_per_second: 4.0,
            message_burst: 1,
            ..Policy::default()
        };
        let mut budget = Budget::new(&policy);
        assert!(matches!(budget.spend(), Verdict::Take));
        assert!(matches!(budget.spend(), Verdict::Wait));
        assert!(budget.is_waiting());
        let started = Instant::now();
        std::future::poll_fn(|cx| budget.poll_refilled(cx)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert!(!budget.is_waiting());
        assert!(matches!(budget.spend(), Verdict::Take));

        let mut closing = Budget::new(&Policy {
            close_flooders: true,
            ..policy
        });
        assert!(matches!(closing.spend(), Verdict::Take));
        assert!(matches!(closing.spend(), Verdict::Close));
        assert!(!closing.is_waiting());
    }
}

//! A one-time, gateway-wide signal (shutdown, a drain's closing) that every
//! relay waits on in its `select!`, polled on every wake-up.
//!
//! A `CancellationToken`'s future takes two mutexes each time it is polled
//! (its tree node's, to ask whether it is cancelled, and its `Notify`'s
//! waiter list). With one token shared by every connection, workers on
//! different cores would take the same two locks for every message.
//! [`Signal`] keeps a token beside a flag: [`Signal::fired`]'s future
//! registers with the token once and, polled again by the same task, only
//! reads the flag. The token is cancelled only by [`Signal::fire`] (others
//! get child tokens), so the flag is always set first.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// A one-time signal, cheap to wait on from many tasks at once.
#[derive(Debug, Default)]
pub struct Signal {
    /// Set before the token is cancelled.
    fired: AtomicBool,
    token: CancellationToken,
}

impl Signal {
    /// A signal not yet fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire it: every waiter wakes, now and later.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether it has fired.
    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// A token cancelled when it fires, for what waits on it elsewhere
    /// (accept loops, background tasks); cancelling it fires nothing.
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Completes when the signal fires.
    pub fn fired(&self) -> Fired<'_> {
        Fired {
            signal: self,
            wait: self.token.cancelled(),
            registered: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Signal::fired`].
    pub struct Fired<'a> {
        signal: &'a Signal,
        #[pin]
        wait: WaitForCancellationFuture<'a>,
        // The waker the token will wake: while the task polling is the
        // same, the token need not be asked again.
        registered: Option<Waker>,
    }
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            // `fire` sets the flag before it cancels the token, and the
            // token wakes this waker: a poll after that sees the flag.
            return Poll::Pending;
        }
        match this.wait.poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                *this.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// Counts its wake-ups.
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Counting>, Waker) {
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        (counting.clone(), Waker::from(counting))
    }

    /// Poll `fired` once as the task `waker` wakes.
    fn poll(fired: Pin<&mut Fired<'_>>, waker: &Waker) -> Poll<()> {
        fired.poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_waiter_polled_again_by_its_task_is_woken_when_the_signal_fires() {
        let signal = Signal::new();
        let (wakes, waker) = waker();
        let mut fired = std::pin::pin!(signal.fired());
        assert!(poll(fired.as_mut(), &waker).is_pending());
        assert!(poll(fired.as_mut(), &waker).is_pending());
        signal.fire();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(poll(fired.as_mut(), &waker).is_ready());
        assert!(signal.child_token().is_cancelled());
    }

    #[test]
    fn a_waiter_moved_to_another_task_wakes_that_task() {
        let signal = Signal::new();
        let (first, first_waker) = waker();
        let (second, second_waker) = waker();
        let mut fired = std::pin::pin!(signal.fired());
        assert!(poll(fired.as_mut(), &first_waker).is_pending());
        assert!(poll(fired.as_mut(), &second_waker).is_pending());
        signal.fire();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_waiter_made_after_the_signal_fired_is_ready_at_once() {
        let signal = Signal::new();
        signal.fire();
        let (_, waker) = waker();
        let mut fired = std::pin::pin!(signal.fired());
        assert!(poll(fired.as_mut(), &waker).is_ready());
    }
}

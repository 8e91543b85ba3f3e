//! Explicit cancellation of a long wait (a submit that waits for its commit).
//!
//! Cancelling ends the *wait*, not the op: once an op is durably queued on the device it is
//! committed exactly once, whatever happens to the caller (C2), and its outcome arrives as
//! an event. A token can be shared by many calls and cancelled from any thread; it stays
//! cancelled.

use tokio::sync::watch;

/// A cancel token (UniFFI object; `LifeboatCancel` in C).
#[derive(Debug, uniffi::Object)]
pub struct CancelToken {
    tx: watch::Sender<bool>,
}

impl Default for CancelToken {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(false),
        }
    }
}

#[uniffi::export]
impl CancelToken {
    /// A token that is not cancelled yet.
    #[uniffi::constructor]
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::default())
    }

    /// End every wait that uses this token, now and later.
    pub fn cancel(&self) {
        self.tx.send_replace(true);
    }

    /// Whether [`CancelToken::cancel`] was called (once true, it stays true).
    pub fn is_cancelled(&self) -> bool {
        *self.tx.borrow()
    }
}

impl CancelToken {
    /// A future that completes once the token is cancelled.
    pub(crate) fn cancelled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // Err only if the sender is gone: then it can never be cancelled.
            if rx.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

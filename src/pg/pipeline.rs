//! Requests sent before the ones ahead of them are answered. tokio-postgres writes a request
//! when its future is first polled, and the server answers in the order it was sent, so the
//! statements of a drain cost one round trip together rather than one each. A fleet's tenant
//! applies a write or two at each hand-off of a session, where round trips were most of the
//! time a session was held (BENCHMARKS.md, "Tenants as tasks").
//!
//! Answers are read in the order the requests went: a request's answer is only read once
//! every answer before it has been, so no request waits on one sent after it.

use std::collections::VecDeque;
use std::future::Future;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::error::Result;

/// Polls `request` once, so that it is written now, and gives back what reads its answer.
pub fn send<F: Future + Unpin>(mut request: F) -> impl Future<Output = F::Output> {
    // A request can be answered at once only by an error of the client's own (a closed
    // connection): kept, not polled again.
    let early = (&mut request).now_or_never();
    async move {
        match early {
            Some(out) => out,
            None => request.await,
        }
    }
}

/// Requests sent and not yet read, in the order they were sent.
#[derive(Default)]
pub struct Pipeline<'a> {
    sent: VecDeque<BoxFuture<'a, Result<()>>>,
}

impl<'a> Pipeline<'a> {
    /// Writes `request` now; its answer is read by [`Pipeline::flush`].
    pub fn send(&mut self, request: impl Future<Output = Result<()>> + Send + 'a) {
        self.sent.push_back(send(request.boxed()).boxed());
    }

    /// Whether a request sent is not read yet.
    pub fn pending(&self) -> bool {
        !self.sent.is_empty()
    }

    /// Reads every answer, in the order sent, and gives the first error. The answers after a
    /// failed one are read too (in a transaction they are refusals), so that the session
    /// is ready for the next request.
    pub async fn flush(&mut self) -> Result<()> {
        let mut first = Ok(());
        while let Some(answer) = self.sent.pop_front() {
            let got = answer.await;
            if first.is_ok() {
                first = got;
            }
        }
        first
    }
}

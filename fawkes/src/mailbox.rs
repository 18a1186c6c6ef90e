//! A bounded single-consumer queue that allocates nothing while empty.
//!
//! Channels keep one per instance, so an idle channel must cost a few bytes,
//! not the pre-allocated slot block of a `tokio::sync::mpsc`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Why a message could not be queued.
#[derive(Debug)]
pub(crate) enum SendError<T> {
    /// The queue holds `capacity` messages.
    Full(T),
    /// The consumer is gone.
    Closed(T),
}

pub(crate) struct Mailbox<T> {
    state: Mutex<State<T>>,
    /// Wakes the consumer (on a push to an empty queue) and senders waiting
    /// for room (on a pop from a full one); each re-checks the state. One
    /// `Notify` for both: 32 bytes less per channel.
    notify: Notify,
}

struct State<T> {
    queue: VecDeque<T>,
    /// A `u32` here, in the padding after `queue`: 8 bytes less per channel.
    capacity: u32,
    closed: bool,
}

/// Keep at most this much spare capacity once a burst has drained.
const SPARE: usize = 8;

impl<T> Mailbox<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
                closed: false,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A panic never happens while the lock is held; recover anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` unless the queue is full or closed.
    pub(crate) fn try_send(&self, msg: T) -> Result<(), SendError<T>> {
        let st = self.lock();
        if st.closed {
            return Err(SendError::Closed(msg));
        }
        if st.queue.len() >= st.capacity as usize {
            return Err(SendError::Full(msg));
        }
        self.push(st, msg);
        Ok(())
    }

    /// Queues `msg`, waking the consumer if it may be waiting.
    fn push(&self, mut st: std::sync::MutexGuard<'_, State<T>>, msg: T) {
        let was_empty = st.queue.is_empty();
        st.queue.push_back(msg);
        drop(st);
        if was_empty {
            self.notify.notify_waiters();
        }
    }

    /// Queues `msg` beyond the capacity: only for a consumer sending to
    /// itself, which cannot wait for its own queue to drain.
    pub(crate) fn send_unbounded(&self, msg: T) -> Result<(), T> {
        let st = self.lock();
        if st.closed {
            return Err(msg);
        }
        self.push(st, msg);
        Ok(())
    }

    /// Queues `msg`, waiting while the queue is full. Fails once closed.
    pub(crate) async fn send(&self, mut msg: T) -> Result<(), T> {
        loop {
            // Registered before the check: `notify_waiters` keeps no permit.
            let room = self.notify.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(SendError::Closed(m)) => return Err(m),
                Err(SendError::Full(m)) => msg = m,
            }
            room.await;
        }
    }

    /// Takes the next message, waiting for one. `None` once closed.
    // Not an `async fn`: it would keep `self` twice in the channel's task.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn recv(&self) -> impl Future<Output = Option<T>> + Send + '_
    where
        T: Send,
    {
        async move {
            loop {
                let ready = self.notify.notified();
                tokio::pin!(ready);
                ready.as_mut().enable();
                {
                    let mut st = self.lock();
                    let was_full = st.queue.len() >= st.capacity as usize;
                    if let Some(msg) = st.queue.pop_front() {
                        if st.queue.is_empty() && st.queue.capacity() > SPARE {
                            st.queue.shrink_to(SPARE);
                        }
                        drop(st);
                        // Only a full queue has senders waiting for room.
                        if was_full {
                            self.notify.notify_waiters();
                        }
                        return Some(msg);
                    }
                    if st.closed {
                        return None;
                    }
                }
                ready.await;
            }
        }
    }

    /// Closes the queue and returns what was left in it.
    pub(crate) fn close(&self) -> VecDeque<T> {
        let mut st = self.lock();
        st.closed = true;
        let rest = std::mem::take(&mut st.queue);
        drop(st);
        // Wake the consumer and every sender so they see the close.
        self.notify.notify_waiters();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_send_waits_for_room() {
        let mb = std::sync::Arc::new(Mailbox::new(1));
        mb.try_send(1).unwrap();
        assert!(matches!(mb.try_send(2), Err(SendError::Full(2))));
        let mb2 = mb.clone();
        let sender = tokio::spawn(async move { mb2.send(2).await });
        assert_eq!(mb.recv().await, Some(1));
        sender.await.unwrap().unwrap();
        assert_eq!(mb.recv().await, Some(2));
    }

    #[tokio::test]
    async fn close_returns_rest_and_fails_senders() {
        let mb = Mailbox::new(4);
        mb.try_send(1).unwrap();
        mb.try_send(2).unwrap();
        let rest: Vec<_> = mb.close().into_iter().collect();
        assert_eq!(rest, vec![1, 2]);
        assert!(mb.send(3).await.is_err());
        assert_eq!(mb.recv().await, None);
    }

    /// One `Notify` for both directions: no wake-up may be lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_through_a_small_queue() {
        let mb = std::sync::Arc::new(Mailbox::new(2));
        let senders: Vec<_> = (0..8)
            .map(|s| {
                let mb = mb.clone();
                tokio::spawn(async move {
                    for i in 0..500 {
                        mb.send(s * 1000 + i).await.unwrap();
                    }
                })
            })
            .collect();
        let mut seen = 0;
        while seen < 8 * 500 {
            tokio::time::timeout(std::time::Duration::from_secs(10), mb.recv())
                .await
                .expect("lost wake-up")
                .unwrap();
            seen += 1;
        }
        for s in senders {
            s.await.unwrap();
        }
    }

    #[tokio::test]
    async fn unbounded_send_exceeds_capacity() {
        let mb = Mailbox::new(1);
        mb.try_send(1).unwrap();
        mb.send_unbounded(2).unwrap();
        assert_eq!(mb.recv().await, Some(1));
        assert_eq!(mb.recv().await, Some(2));
    }
}

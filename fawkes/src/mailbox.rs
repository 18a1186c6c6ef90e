//! A bounded single-consumer queue that allocates nothing while empty.
//!
//! Channels keep one per instance, so an idle channel must cost a few bytes,
//! not the pre-allocated slot block of a `tokio::sync::mpsc`.

use std::collections::VecDeque;
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
    readable: Notify,
    writable: Notify,
    capacity: usize,
}

struct State<T> {
    queue: VecDeque<T>,
    closed: bool,
}

/// Keep at most this much spare capacity once a burst has drained.
const SPARE: usize = 8;

impl<T> Mailbox<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A panic never happens while the lock is held; recover anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` unless the queue is full or closed.
    pub(crate) fn try_send(&self, msg: T) -> Result<(), SendError<T>> {
        let mut st = self.lock();
        if st.closed {
            return Err(SendError::Closed(msg));
        }
        if st.queue.len() >= self.capacity {
            return Err(SendError::Full(msg));
        }
        st.queue.push_back(msg);
        drop(st);
        self.readable.notify_one();
        Ok(())
    }

    /// Queues `msg` beyond the capacity: only for a consumer sending to
    /// itself, which cannot wait for its own queue to drain.
    pub(crate) fn send_unbounded(&self, msg: T) -> Result<(), T> {
        let mut st = self.lock();
        if st.closed {
            return Err(msg);
        }
        st.queue.push_back(msg);
        drop(st);
        self.readable.notify_one();
        Ok(())
    }

    /// Queues `msg`, waiting while the queue is full. Fails once closed.
    pub(crate) async fn send(&self, mut msg: T) -> Result<(), T> {
        loop {
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(SendError::Closed(m)) => return Err(m),
                Err(SendError::Full(m)) => msg = m,
            }
            self.writable.notified().await;
        }
    }

    /// Takes the next message, waiting for one. `None` once closed.
    pub(crate) async fn recv(&self) -> Option<T> {
        loop {
            {
                let mut st = self.lock();
                if let Some(msg) = st.queue.pop_front() {
                    if st.queue.is_empty() && st.queue.capacity() > SPARE {
                        st.queue.shrink_to(SPARE);
                    }
                    drop(st);
                    self.writable.notify_one();
                    return Some(msg);
                }
                if st.closed {
                    return None;
                }
            }
            self.readable.notified().await;
        }
    }

    /// Closes the queue and returns what was left in it.
    pub(crate) fn close(&self) -> VecDeque<T> {
        let mut st = self.lock();
        st.closed = true;
        let rest = std::mem::take(&mut st.queue);
        drop(st);
        // Wake a sender waiting for room so it sees the close.
        self.writable.notify_waiters();
        self.writable.notify_one();
        self.readable.notify_one();
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

    #[tokio::test]
    async fn unbounded_send_exceeds_capacity() {
        let mb = Mailbox::new(1);
        mb.try_send(1).unwrap();
        mb.send_unbounded(2).unwrap();
        assert_eq!(mb.recv().await, Some(1));
        assert_eq!(mb.recv().await, Some(2));
    }
}

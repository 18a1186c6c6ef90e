//! State one connection shares with its channels: serializer, assigns and the
//! outbox, the bounded queue of frames waiting for the transport.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use fawkes_protocol::{Frame, Serializer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Assigns, Transport};

/// Why a connection ends; decides the close code and the channels' stop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client went away or closed.
    Closed,
    /// Nothing received for the idle timeout.
    Idle,
    /// Forced disconnect by socket id.
    Disconnected,
    /// The endpoint is shutting down.
    Shutdown,
    /// The outbox overflowed: the client reads too slowly.
    SlowClient,
    /// A frame exceeded the size limit.
    TooLarge,
    /// A frame could not be decoded.
    BadFrame,
    /// The client broke the WebSocket protocol.
    ProtocolError,
}

impl CloseReason {
    /// The WebSocket close code (PROTOCOL §1.7; never 1000 when the client
    /// should come back).
    pub(crate) fn code(self) -> u16 {
        match self {
            CloseReason::Closed => 1000,
            CloseReason::Idle => 1002,
            CloseReason::Disconnected => 1001,
            CloseReason::Shutdown => 1012,
            CloseReason::SlowClient => 1013,
            CloseReason::TooLarge => 1009,
            CloseReason::BadFrame => 1007,
            CloseReason::ProtocolError => 1002,
        }
    }

    /// The reason the channels of the connection terminate with.
    pub(crate) fn stop_reason(self) -> &'static str {
        match self {
            CloseReason::Disconnected => "disconnected",
            CloseReason::Shutdown => "draining",
            _ => "closed",
        }
    }
}

/// Something the socket task must act on besides frames.
pub(crate) enum SocketEvent {
    /// A channel instance ended; its topic is free (if still ours).
    ChannelExited { topic: Arc<str>, instance: u64 },
}

/// Bounds of the outbox; reaching either closes the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxLimits {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
}

pub(crate) struct SocketShared {
    pub(crate) serializer: Serializer,
    pub(crate) transport: Transport,
    pub(crate) id: Option<Arc<str>>,
    pub(crate) assigns: Assigns,
    pub(crate) cancel: CancellationToken,
    limits: OutboxLimits,
    out: Mutex<Outbox>,
    pub(crate) notify: Notify,
}

#[derive(Default)]
struct Outbox {
    frames: Frames,
    bytes: usize,
    events: Vec<SocketEvent>,
    close: Option<CloseReason>,
}

/// Queued frames, in order. A single frame (a broadcast to an idle
/// connection, the usual case) is held inline: queueing it allocates
/// nothing on the broadcaster's thread, and the size is a `VecDeque`'s
/// plus 8 bytes.
#[derive(Default, Debug)]
pub(crate) enum Frames {
    #[default]
    Empty,
    One(Frame),
    Many(VecDeque<Frame>),
}

impl Frames {
    pub(crate) fn len(&self) -> usize {
        match self {
            Frames::Empty => 0,
            Frames::One(_) => 1,
            Frames::Many(q) => q.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, frame: Frame) {
        match self {
            Frames::Empty => *self = Frames::One(frame),
            Frames::One(_) => {
                let Frames::One(first) = std::mem::take(self) else {
                    unreachable!()
                };
                let mut q = VecDeque::with_capacity(4);
                q.push_back(first);
                q.push_back(frame);
                *self = Frames::Many(q);
            }
            Frames::Many(q) => q.push_back(frame),
        }
    }
}

impl IntoIterator for Frames {
    type Item = Frame;
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<Frame>,
        std::iter::Flatten<std::option::IntoIter<std::collections::vec_deque::IntoIter<Frame>>>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        let (one, many) = match self {
            Frames::Empty => (None, None),
            Frames::One(f) => (Some(f), None),
            Frames::Many(q) => (None, Some(q.into_iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl From<Frames> for VecDeque<Frame> {
    fn from(frames: Frames) -> Self {
        match frames {
            Frames::Empty => VecDeque::new(),
            Frames::One(f) => VecDeque::from([f]),
            Frames::Many(q) => q,
        }
    }
}

impl From<VecDeque<Frame>> for Frames {
    fn from(q: VecDeque<Frame>) -> Self {
        match q.len() {
            0 => Frames::Empty,
            _ => Frames::Many(q),
        }
    }
}

/// What the transport takes out of the outbox in one go.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) frames: Frames,
    pub(crate) events: Vec<SocketEvent>,
}

impl SocketShared {
    pub(crate) fn new(
        serializer: Serializer,
        transport: Transport,
        id: Option<Arc<str>>,
        assigns: Assigns,
        cancel: CancellationToken,
        limits: OutboxLimits,
    ) -> Self {
        SocketShared {
            serializer,
            transport,
            id,
            assigns,
            cancel,
            limits,
            out: Mutex::new(Outbox::default()),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame for the client. Dropped once the connection is closing.
    ///
    /// Policy for slow clients: when the queue would exceed its frame or byte
    /// bound, the frame is dropped and the connection is closed (code 1013),
    /// so one slow reader never grows memory without bound.
    pub(crate) fn push(&self, frame: Frame) {
        let mut out = self.lock();
        if out.close.is_some() {
            return;
        }
        if out.frames.len() >= self.limits.frames || out.bytes + frame.len() > self.limits.bytes {
            let (n, b) = (out.frames.len(), out.bytes);
            drop(out);
            tracing::warn!(
                target: "fawkes::socket",
                socket_id = self.id.as_deref(),
                queued_frames = n,
                queued_bytes = b,
                "outbox full, closing slow client"
            );
            self.close(CloseReason::SlowClient);
            return;
        }
        out.bytes += frame.len();
        let first = out.frames.is_empty();
        out.frames.push_back(frame);
        drop(out);
        // Frames already queued were announced, and the transport takes
        // them all at once.
        if first {
            self.notify.notify_one();
        }
    }

    pub(crate) fn push_event(&self, event: SocketEvent) {
        self.lock().events.push(event);
        self.notify.notify_one();
    }

    /// Takes everything queued.
    pub(crate) fn take(&self) -> Batch {
        self.take_and_closing().0
    }

    /// Takes everything queued, and whether a close was requested (under
    /// the same lock: no look at the cancellation token's mutex).
    pub(crate) fn take_and_closing(&self) -> (Batch, bool) {
        let mut out = self.lock();
        out.bytes = 0;
        let batch = Batch {
            frames: std::mem::take(&mut out.frames),
            events: std::mem::take(&mut out.events),
        };
        (batch, out.close.is_some())
    }

    /// Takes the queued socket events, leaving the frames.
    pub(crate) fn take_events(&self) -> Vec<SocketEvent> {
        std::mem::take(&mut self.lock().events)
    }

    /// Takes the queued frames, leaving the events.
    pub(crate) fn take_frames(&self) -> VecDeque<Frame> {
        let mut out = self.lock();
        out.bytes = 0;
        std::mem::take(&mut out.frames).into()
    }

    /// Puts frames that could not be handed over back at the front of the
    /// queue, in order. They were within the bounds when first queued.
    pub(crate) fn requeue(&self, mut frames: VecDeque<Frame>) {
        let mut out = self.lock();
        out.bytes += frames.iter().map(Frame::len).sum::<usize>();
        frames.extend(std::mem::take(&mut out.frames));
        out.frames = frames.into();
    }

    /// Waits until something is queued (or a close is requested).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }

    /// Ends the connection: the first reason given wins, later frames are
    /// dropped, and the transport and every channel see the cancellation.
    pub(crate) fn close(&self, reason: CloseReason) {
        {
            let mut out = self.lock();
            if out.close.is_none() {
                out.close = Some(reason);
            }
        }
        self.cancel.cancel();
        self.notify.notify_one();
    }

    /// Why the connection is closing, once it is.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close
    }

    /// Whether the connection is closing.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().close.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &'static str) -> Frame {
        Frame::Text(bytes::Bytes::from_static(s.as_bytes()))
    }

    fn texts(frames: impl IntoIterator<Item = Frame>) -> Vec<String> {
        frames
            .into_iter()
            .map(|f| String::from_utf8(f.to_bytes().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn frames_keep_order_inline_and_queued() {
        let mut frames = Frames::default();
        assert!(frames.is_empty());
        frames.push_back(frame("a"));
        assert!(matches!(frames, Frames::One(_)));
        frames.push_back(frame("b"));
        frames.push_back(frame("c"));
        assert_eq!(frames.len(), 3);
        assert_eq!(texts(frames), ["a", "b", "c"]);
        // The inline slot costs 8 bytes over the queue it replaces.
        assert!(std::mem::size_of::<Frames>() <= std::mem::size_of::<VecDeque<Frame>>() + 8);
    }

    #[test]
    fn requeue_puts_frames_back_in_front() {
        let limits = OutboxLimits {
            frames: 10,
            bytes: 100,
        };
        let shared = SocketShared::new(
            Serializer::V2,
            Transport::WebSocket,
            None,
            Assigns::default(),
            CancellationToken::new(),
            limits,
        );
        shared.push(frame("a"));
        let taken = shared.take_frames();
        shared.push(frame("b"));
        shared.requeue(taken);
        shared.push(frame("c"));
        assert_eq!(texts(shared.take().frames), ["a", "b", "c"]);
        assert!(shared.take().frames.is_empty());
    }
}

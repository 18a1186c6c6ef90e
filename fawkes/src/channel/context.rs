//! What a channel's callbacks can do: push, reply, broadcast, message itself.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fawkes_protocol::{Frame, Message, Payload, Ref};

use super::server::{ChannelCore, ChannelMsg};
use super::{Channel, ChannelError, Reply, valid_payload};
use crate::presence::ChannelPresence;
use crate::pubsub::PubSub;
use crate::socket::{Assigns, Transport};

/// The event of a full presence list (PROTOCOL §7.2).
const PRESENCE_STATE: &str = "presence_state";

/// The handle a channel's callbacks receive: the topic, the socket's assigns,
/// and the ways to reach the client and the topic's other subscribers.
pub struct Context<C: Channel> {
    core: Arc<ChannelCore>,
    phase: Phase,
    _channel: PhantomData<fn() -> C>,
}

/// One field for what `join` and the later callbacks each need alone: it
/// lives in the channel's task for its whole life.
enum Phase {
    /// Frames pushed during `join`, sent after its reply.
    Joining(Vec<Frame>),
    /// The ref of the client message being handled, if any.
    Joined(Option<Ref>),
}

impl<C: Channel> Context<C> {
    pub(crate) fn new(core: Arc<ChannelCore>) -> Self {
        Context {
            core,
            phase: Phase::Joining(Vec::new()),
            _channel: PhantomData,
        }
    }

    pub(crate) fn joined(&mut self) {
        if let Phase::Joining(pending) = std::mem::replace(&mut self.phase, Phase::Joined(None)) {
            for frame in pending {
                self.core.send_frame(frame);
            }
        }
    }

    /// Only after [`joined`](Self::joined): callbacks after `join`.
    pub(crate) fn set_ref(&mut self, ref_: Option<Ref>) {
        debug_assert!(matches!(self.phase, Phase::Joined(_)));
        if let Phase::Joined(current) = &mut self.phase {
            *current = ref_;
        }
    }

    /// The channel's topic.
    pub fn topic(&self) -> &str {
        &self.core.topic
    }

    /// The join ref this channel's pushes carry.
    pub fn join_ref(&self) -> Option<&Ref> {
        self.core.push_ref.as_ref()
    }

    /// The socket's assigns, as returned by `connect`.
    pub fn assigns(&self) -> &Assigns {
        &self.core.socket.assigns
    }

    /// The socket's id, if `Socket::id` named it.
    pub fn socket_id(&self) -> Option<&str> {
        self.core.socket.id.as_deref()
    }

    /// The transport the client is connected over.
    pub fn transport(&self) -> Transport {
        self.core.socket.transport
    }

    /// The serializer version the client speaks: `"1.0.0"` or `"2.0.0"`.
    pub fn vsn(&self) -> &'static str {
        self.core.socket.serializer.vsn()
    }

    /// The node's pubsub, to broadcast on other topics.
    pub fn pubsub(&self) -> &PubSub {
        &self.core.env.pubsub
    }

    /// Pushes `event` to this client: `[join_ref, null, topic, event, payload]`.
    ///
    /// The payload must be a JSON object, or bytes on a V2 WebSocket; other
    /// payloads are logged and dropped, as is everything once the connection
    /// is closing.
    pub fn push(&mut self, event: &str, payload: impl Into<Payload>) {
        let payload = payload.into();
        if !valid_payload(&payload) {
            let err = ChannelError::InvalidPayload;
            tracing::warn!(target: "fawkes::channel", topic = %self.core.topic, event, %err, "push dropped");
            return;
        }
        let msg = Message {
            join_ref: self.core.push_ref.clone(),
            ref_: None,
            topic: self.core.topic.to_string(),
            event: event.to_owned(),
            payload,
        };
        match self.core.socket.serializer.encode_push(&msg) {
            Ok(frame) => self.queue(frame),
            Err(err) => {
                tracing::warn!(target: "fawkes::channel", topic = %self.core.topic, event, %err, "push dropped")
            }
        }
    }

    /// Sends a frame now, or after the join reply while joining.
    fn queue(&mut self, frame: Frame) {
        match &mut self.phase {
            Phase::Joining(pending) => pending.push(frame),
            Phase::Joined(_) => self.core.send_frame(frame),
        }
    }

    /// Presence on this channel's topic: what this channel tracks (removed
    /// when it ends) and who is there. See [`crate::presence`].
    pub fn presence(&self) -> ChannelPresence<'_> {
        let tracker = self.core.env.presence.tracker();
        let mut owner = self.core.presence_owner.load(Ordering::Relaxed);
        if owner == 0 {
            // Only this channel's task gets here: no race.
            owner = tracker.new_owner();
            self.core.presence_owner.store(owner, Ordering::Relaxed);
        }
        ChannelPresence {
            tracker,
            topic: &self.core.topic,
            owner,
        }
    }

    /// Pushes `presence_state`, the topic's whole presence list, to this
    /// client. phoenix.js's `Presence` needs one after every join (PROTOCOL
    /// §7.4): push it once the channel has tracked, typically from
    /// `handle_info` right after the join.
    pub fn push_presence_state(&mut self) {
        let list = self
            .core
            .env
            .presence
            .tracker()
            .list_encoded(&self.core.topic);
        let frame = self.core.socket.serializer.encode_push_encoded(
            self.core.push_ref.as_ref(),
            &self.core.topic,
            PRESENCE_STATE,
            &list,
        );
        self.queue(frame);
    }

    /// Broadcasts `event` to every subscriber of the topic on every node,
    /// this channel included.
    pub fn broadcast(&self, event: &str, payload: impl Into<Payload>) {
        if let Err(err) = self
            .core
            .env
            .pubsub
            .broadcast(&self.core.topic, event, payload)
        {
            tracing::warn!(target: "fawkes::channel", topic = %self.core.topic, event, %err, "broadcast dropped");
        }
    }

    /// Broadcasts `event` to every subscriber of the topic but this channel.
    pub fn broadcast_from(&self, event: &str, payload: impl Into<Payload>) {
        let result = match self.core.subscription.get() {
            Some(id) => self
                .core
                .env
                .pubsub
                .broadcast_from(*id, &self.core.topic, event, payload),
            // Not subscribed yet (inside `join`): nobody to skip.
            None => self
                .core
                .env
                .pubsub
                .broadcast(&self.core.topic, event, payload),
        };
        if let Err(err) = result {
            tracing::warn!(target: "fawkes::channel", topic = %self.core.topic, event, %err, "broadcast dropped");
        }
    }

    /// A handle to answer the client message being handled later, from this
    /// task or another (PROTOCOL §4.4). `None` outside `handle_in`.
    pub fn reply_ref(&self) -> Option<ReplyRef> {
        match &self.phase {
            Phase::Joined(Some(r)) => Some(ReplyRef {
                core: self.core.clone(),
                ref_: r.clone(),
            }),
            _ => None,
        }
    }

    /// Sends `msg` to this channel's [`handle_info`](Channel::handle_info),
    /// after the current callback.
    pub fn send_info(&self, msg: C::Info) {
        let _ = self
            .core
            .mailbox
            .send_unbounded(ChannelMsg::Info(Box::new(msg)));
    }

    /// Sends `msg` to this channel's `handle_info` after `delay`, unless the
    /// channel has ended or the timer is cancelled.
    pub fn send_after(&self, delay: Duration, msg: C::Info) -> TimerRef {
        let core = self.core.clone();
        let stop = core.timers().clone();
        let handle = self.core.env.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {
                    let _ = core.mailbox.send_unbounded(ChannelMsg::Info(Box::new(msg)));
                }
                _ = stop.cancelled() => {}
            }
        });
        TimerRef(handle.abort_handle())
    }

    /// A handle other code can use to message this channel.
    pub fn handle(&self) -> ChannelHandle<C::Info> {
        ChannelHandle {
            core: self.core.clone(),
            _info: PhantomData,
        }
    }
}

/// A pending timer from [`Context::send_after`].
#[derive(Debug)]
pub struct TimerRef(tokio::task::AbortHandle);

impl TimerRef {
    /// Cancels the timer if it has not fired.
    pub fn cancel(self) {
        self.0.abort();
    }
}

/// A client message to answer later: the reply carries its ref.
pub struct ReplyRef {
    core: Arc<ChannelCore>,
    ref_: Ref,
}

impl ReplyRef {
    /// Sends the reply. Ignored if the channel has been replaced.
    pub fn reply(&self, reply: Reply) {
        self.core.reply(Some(self.ref_.clone()), reply);
    }
}

impl std::fmt::Debug for ReplyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyRef")
            .field("topic", &self.core.topic)
            .field("ref", &self.ref_)
            .finish()
    }
}

/// Sends messages to one channel instance's `handle_info` from other code.
pub struct ChannelHandle<I> {
    core: Arc<ChannelCore>,
    _info: PhantomData<fn(I)>,
}

impl<I> Clone for ChannelHandle<I> {
    fn clone(&self) -> Self {
        ChannelHandle {
            core: self.core.clone(),
            _info: PhantomData,
        }
    }
}

impl<I: Send + 'static> ChannelHandle<I> {
    /// Queues `msg`, waiting while the channel's mailbox is full.
    pub async fn send(&self, msg: I) -> Result<(), ChannelError> {
        self.core
            .mailbox
            .send(ChannelMsg::Info(Box::new(msg)))
            .await
            .map_err(|_| ChannelError::Closed)
    }

    /// The channel's topic.
    pub fn topic(&self) -> &str {
        &self.core.topic
    }
}

impl<I> std::fmt::Debug for ChannelHandle<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelHandle")
            .field("topic", &self.core.topic)
            .finish()
    }
}

//! Dispatch of one connection's messages (PROTOCOL §4.3), whatever the
//! transport.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use fawkes_protocol::{Message, Payload, Ref, events};
use serde_json::json;
use tokio::sync::oneshot;

use super::{CloseReason, SocketEvent, SocketShared, reply_frame};
use crate::channel::{ChannelCore, ChannelMsg, Incoming, JoinRequest};
use crate::endpoint::{Shared, SocketConfig};
use crate::mailbox::Mailbox;
use crate::pubsub::{Broadcast, EncodedBroadcast, Subscriber, SubscriptionId};

/// Closes the socket when `disconnect` is broadcast on its id (PROTOCOL §4.11).
struct IdSubscriber(Arc<SocketShared>);

impl Subscriber for IdSubscriber {
    fn deliver(&self, msg: &Arc<Broadcast>, _: &mut EncodedBroadcast) {
        if msg.event == "disconnect" {
            self.0.close(CloseReason::Disconnected);
        }
    }
}

/// A socket's channels, one per topic. A vector: at most `max_channels`
/// (100) entries, and one or two on most sockets, where a map's buckets
/// would cost more memory than the scans cost time.
#[derive(Default)]
struct Channels(Vec<Arc<ChannelCore>>);

impl Channels {
    fn get(&self, topic: &str) -> Option<&Arc<ChannelCore>> {
        self.0.iter().find(|c| &*c.topic == topic)
    }

    fn remove(&mut self, topic: &str) -> Option<Arc<ChannelCore>> {
        let pos = self.0.iter().position(|c| &*c.topic == topic)?;
        let core = self.0.swap_remove(pos);
        if self.0.capacity() > 2 * self.0.len() + 4 {
            self.0.shrink_to_fit();
        }
        Some(core)
    }

    fn insert(&mut self, core: Arc<ChannelCore>) {
        if self.0.capacity() == 0 {
            // Most sockets join one channel: no room for four.
            self.0.reserve_exact(1);
        }
        self.0.push(core);
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One connection's socket state: its channels by topic.
pub(crate) struct Conn {
    pub(crate) shared: Arc<SocketShared>,
    pub(crate) config: Arc<SocketConfig>,
    env: Arc<Shared>,
    channels: Channels,
    id_subscription: Option<SubscriptionId>,
    next_instance: u64,
}

impl Conn {
    pub(crate) fn new(
        shared: Arc<SocketShared>,
        config: Arc<SocketConfig>,
        env: Arc<Shared>,
    ) -> Self {
        let id_subscription = shared.id.as_deref().map(|id| {
            env.pubsub
                .subscribe(id, Arc::new(IdSubscriber(shared.clone())))
        });
        env.sockets.fetch_add(1, Ordering::Relaxed);
        Conn {
            shared,
            config,
            env,
            channels: Channels::default(),
            id_subscription,
            next_instance: 0,
        }
    }

    fn reply(
        &self,
        join_ref: Option<Ref>,
        ref_: Option<Ref>,
        topic: &str,
        status: &str,
        response: serde_json::Value,
    ) {
        if let Some(frame) = reply_frame(
            &self.shared,
            join_ref,
            ref_,
            topic,
            status,
            Payload::Json(response),
        ) {
            self.shared.push(frame);
        }
    }

    /// PROTOCOL §4.3 step 5: on a topic without a channel, a leave is
    /// answered ok, anything else "unmatched topic" with a null join_ref.
    fn no_channel(&self, leave: bool, join_ref: Option<Ref>, ref_: Option<Ref>, topic: &str) {
        if leave {
            self.reply(join_ref, ref_, topic, "ok", json!({}));
        } else {
            self.reply(
                None,
                ref_,
                topic,
                "error",
                json!({"reason": "unmatched topic"}),
            );
        }
    }

    /// Applies what the socket's channels reported.
    pub(crate) fn handle_events(&mut self, events: Vec<SocketEvent>) {
        for event in events {
            match event {
                SocketEvent::ChannelExited { topic, instance } => {
                    if self
                        .channels
                        .get(&topic)
                        .is_some_and(|c| c.instance == instance)
                    {
                        self.channels.remove(&topic);
                    }
                }
            }
        }
    }

    /// Handles one decoded client message.
    pub(crate) async fn handle(&mut self, msg: Message) {
        if msg.topic == events::PHOENIX_TOPIC && msg.event == events::HEARTBEAT {
            // PROTOCOL §4.12: join_ref null, whatever the request carried.
            self.reply(None, msg.ref_, &msg.topic, "ok", json!({}));
            return;
        }
        if msg.event == events::JOIN {
            self.join(msg).await;
            return;
        }
        let leave = msg.event == events::LEAVE;
        let Some(core) = self.channels.get(msg.topic.as_str()).cloned() else {
            self.no_channel(leave, msg.join_ref, msg.ref_, &msg.topic);
            return;
        };
        if msg.join_ref.is_some() && msg.join_ref.as_ref() != core.join_ref() {
            // PROTOCOL §4.3 step 4: a stale join ref is dropped silently.
            tracing::debug!(target: "fawkes::socket", topic = %msg.topic, event = %msg.event, "stale join_ref, dropped");
            return;
        }
        let Message {
            join_ref,
            ref_,
            topic,
            event,
            payload,
        } = msg;
        let delivery = if leave {
            ChannelMsg::Leave(Box::new((join_ref.clone(), ref_.clone())))
        } else {
            ChannelMsg::In(Box::new(Incoming {
                event,
                payload,
                ref_: ref_.clone(),
            }))
        };
        // Backpressure: a channel slower than its client slows the reading of
        // the socket, never grows its mailbox beyond the bound.
        let sent = tokio::select! {
            r = core.mailbox.send(delivery) => r.is_ok(),
            _ = self.shared.cancel.cancelled() => return,
        };
        if !sent {
            // The channel ended meanwhile: answer as for a topic without one.
            self.channels.remove(topic.as_str());
            self.no_channel(leave, join_ref, ref_, &topic);
        }
    }

    async fn join(&mut self, msg: Message) {
        let mut after_reply = None;
        if let Some(old) = self.channels.remove(msg.topic.as_str()) {
            // PROTOCOL §4.6: the old instance goes without terminate; its
            // phx_close follows the new join's reply.
            old.kill();
            after_reply = old.control_frame(events::CLOSE, json!({}));
        }
        let refuse =
            |this: &Self, join_ref, response, after_reply: Option<fawkes_protocol::Frame>| {
                this.reply(join_ref, msg.ref_.clone(), &msg.topic, "error", response);
                if let Some(frame) = after_reply {
                    this.shared.push(frame);
                }
            };
        let Some(route) = self.config.route(&msg.topic) else {
            refuse(
                self,
                None,
                json!({"reason": "unmatched topic"}),
                after_reply,
            );
            return;
        };
        if self.channels.len() >= self.config.max_channels {
            refuse(
                self,
                msg.join_ref.clone(),
                json!({"reason": "too many channels joined"}),
                after_reply,
            );
            return;
        }
        let payload = match &msg.payload {
            Payload::Json(v) => v.clone(),
            Payload::Binary(_) => {
                refuse(
                    self,
                    msg.join_ref.clone(),
                    json!({"reason": "join params must be json"}),
                    after_reply,
                );
                return;
            }
        };
        self.next_instance += 1;
        let topic: Arc<str> = Arc::from(msg.topic.as_str());
        let core = Arc::new(ChannelCore {
            topic,
            has_join_ref: msg.join_ref.is_some(),
            push_ref: msg.join_ref.clone().or_else(|| msg.ref_.clone()),
            instance: self.next_instance,
            socket: self.shared.clone(),
            env: self.env.clone(),
            mailbox: Mailbox::new(self.config.channel_mailbox),
            intercept: route.intercept(),
            timers: OnceLock::new(),
            subscription: OnceLock::new(),
            killed: AtomicBool::new(false),
            presence_owner: AtomicU64::new(0),
        });
        let (tx, rx) = oneshot::channel();
        route.spawn(
            core.clone(),
            JoinRequest {
                payload,
                ref_: msg.ref_.clone(),
                after_reply,
            },
            tx,
        );
        // Like Phoenix, the socket handles nothing else until the join is
        // decided, so later messages for the topic find the channel.
        let joined = tokio::select! {
            r = rx => r.unwrap_or(false),
            _ = self.shared.cancel.cancelled() => false,
        };
        if joined {
            self.channels.insert(core);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let (Some(id), Some(topic)) = (self.id_subscription, self.shared.id.as_deref()) {
            self.env.pubsub.unsubscribe(topic, id);
        }
        if !self.shared.is_closed() {
            self.shared.close(CloseReason::Closed);
        }
        self.env.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

//! The messages a connection delivers and the channel state machine
//! (phoenix.js's channel.js and push.js), as methods of the socket's task.

use std::cmp::Reverse;

use fawkes_protocol::{Payload, events};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{ChanEntry, Driver, PendingPush, PushKind, TARGET};
use crate::channel::{ChannelEvent, ChannelState, JoinError, PushError};
use crate::codec::{Incoming, Outgoing, ReplyParts};

impl Driver {
    // ---- messages -------------------------------------------------------

    pub(super) fn on_message(&mut self, msg: Incoming) {
        if msg.ref_.is_some() && msg.ref_ == self.pending_heartbeat {
            self.pending_heartbeat = None;
            self.heartbeat_timeout_at = None;
            self.heartbeat_at = Some(Instant::now() + self.opts.heartbeat_interval);
        }
        let reply = msg.reply().cloned();
        if self.shared.messages.receiver_count() > 0 {
            self.emit_message(&msg);
        }

        if msg.event == events::REPLY {
            // A leave's reply arrives after its channel was removed.
            if let Some(r) = &msg.ref_
                && let Some(p) = self.pushes.get(r)
                && matches!(p.kind, PushKind::Leave(_))
                && p.topic == msg.topic
                && let Some(p) = self.pushes.remove(r)
                && let PushKind::Leave(tx) = p.kind
            {
                let _ = tx.send(match reply {
                    Some(parts) if parts.status == "ok" => Ok(()),
                    Some(parts) => Err(PushError::Reply {
                        status: parts.status,
                        response: parts.response,
                    }),
                    None => Ok(()),
                });
                return;
            }
        }

        let members: Vec<u64> = self
            .channels
            .iter()
            .filter(|(_, c)| c.shared.topic == msg.topic)
            .filter(|(_, c)| match &msg.join_ref {
                // phoenix.js `isMember`: drop messages of another join.
                Some(jr) => c.join_ref.as_ref() == Some(jr),
                None => true,
            })
            .map(|(&id, _)| id)
            .collect();
        if members.is_empty() {
            tracing::trace!(target: TARGET, topic = %msg.topic, event = %msg.event, "no member channel, dropped");
        }
        for id in members {
            if msg.event == events::REPLY {
                let (Some(r), Some(parts)) = (&msg.ref_, &reply) else {
                    tracing::warn!(target: TARGET, topic = %msg.topic, "malformed reply, skipped");
                    continue;
                };
                self.on_reply(id, r, parts.clone());
                continue;
            }
            let Some(entry) = self.channels.get(&id) else {
                continue;
            };
            let ev = ChannelEvent {
                topic: msg.topic.clone(),
                event: msg.event.clone(),
                payload: msg.payload(),
                ref_: msg.ref_.clone(),
                join_ref: msg.join_ref.clone().or_else(|| entry.join_ref.clone()),
            };
            entry.shared.dispatch(&ev);
            match msg.event.as_str() {
                events::CLOSE => self.close_channel(id),
                events::ERROR => self.chan_error(id),
                _ => {}
            }
        }
    }

    pub(super) fn emit_message(&self, msg: &Incoming) {
        let _ = self.shared.messages.send(ChannelEvent {
            topic: msg.topic.clone(),
            event: msg.event.clone(),
            payload: msg.payload(),
            ref_: msg.ref_.clone(),
            join_ref: msg.join_ref.clone(),
        });
    }

    pub(super) fn on_reply(&mut self, id: u64, r: &str, parts: ReplyParts) {
        let is_join = self
            .channels
            .get(&id)
            .is_some_and(|c| c.join_ref.as_deref() == Some(r));
        if is_join {
            self.on_join_reply(id, parts);
            return;
        }
        if !self
            .pushes
            .get(r)
            .is_some_and(|p| p.chan == id && p.buffered.is_none())
        {
            return;
        }
        let Some(p) = self.pushes.remove(r) else {
            return;
        };
        let result = if parts.status == "ok" {
            Ok(parts.response)
        } else {
            Err(PushError::Reply {
                status: parts.status,
                response: parts.response,
            })
        };
        match p.kind {
            PushKind::Push(tx) => {
                let _ = tx.send(result);
            }
            PushKind::Leave(tx) => {
                let _ = tx.send(result.map(|_| ()));
            }
        }
    }

    pub(super) fn on_join_reply(&mut self, id: u64, parts: ReplyParts) {
        let connected = self.is_open();
        let Some(entry) = self.channels.get_mut(&id) else {
            return;
        };
        if entry.join_deadline.is_none() {
            // Already answered or timed out (phoenix.js ignores it too).
            return;
        }
        entry.join_deadline = None;
        let waiters = std::mem::take(&mut entry.join_waiters);
        if parts.status == "ok" {
            entry.shared.set_state(ChannelState::Joined);
            entry.rejoin_at = None;
            entry.rejoin_tries = 0;
            for w in waiters {
                let _ = w.send(Ok(parts.response.clone()));
            }
            self.flush_buffer(id);
        } else {
            entry.shared.set_state(ChannelState::Errored);
            for w in waiters {
                let _ = w.send(Err(JoinError::Refused(parts.response.clone())));
            }
            if connected {
                self.schedule_rejoin(id);
            }
        }
    }

    /// Sends the pushes held while joining, each with a new ref and a fresh
    /// timeout (phoenix.js's `push.send()` restarts both).
    pub(super) fn flush_buffer(&mut self, id: u64) {
        let Some(entry) = self.channels.get_mut(&id) else {
            return;
        };
        let refs = std::mem::take(&mut entry.buffer);
        for old in refs {
            let Some(mut p) = self.pushes.remove(&old) else {
                continue;
            };
            let Some(payload) = p.buffered.take() else {
                continue;
            };
            let join_ref = self.channels.get(&id).and_then(|c| c.join_ref.clone());
            let r = self.make_ref();
            let sent = self.send(&Outgoing {
                join_ref: join_ref.as_deref(),
                ref_: Some(&r),
                topic: &p.topic,
                event: &p.event,
                payload: &payload,
            });
            if let Err(e) = sent {
                if let PushKind::Push(tx) = p.kind {
                    let _ = tx.send(Err(PushError::Encode(e)));
                }
                continue;
            }
            p.deadline = Instant::now() + p.timeout;
            self.add_pending(r, p);
        }
    }

    pub(super) fn add_pending(&mut self, r: String, p: PendingPush) {
        self.push_timers.push(Reverse((p.deadline, r.clone())));
        self.pushes.insert(r, p);
    }

    // ---- channel state machine (phoenix.js channel.js) -------------------

    /// phoenix.js `rejoin`: a new join ref, a fresh timeout, and the join
    /// sent now or at the next open.
    pub(super) fn rejoin(&mut self, id: u64) {
        let Some(entry) = self.channels.get(&id) else {
            return;
        };
        if entry.shared.state() == ChannelState::Leaving {
            return;
        }
        let topic = entry.shared.topic.clone();
        self.leave_open_topic(&topic, id);
        let r = self.make_ref();
        let Some(entry) = self.channels.get_mut(&id) else {
            return;
        };
        // The join ref first, so that a state watcher sees the new one.
        entry.join_ref = Some(r.clone());
        entry.shared.set_join_ref(Some(r));
        entry.shared.set_state(ChannelState::Joining);
        entry.join_deadline = Some(Instant::now() + entry.timeout);
        entry.join_sent = false;
        if self.is_open() {
            self.send_join(id);
        }
    }

    pub(super) fn send_join(&mut self, id: u64) {
        let Some(entry) = self.channels.get_mut(&id) else {
            return;
        };
        entry.join_sent = true;
        let payload = Payload::Json(entry.params.clone());
        let topic = entry.shared.topic.clone();
        let join_ref = entry.join_ref.clone();
        let _ = self.send(&Outgoing {
            join_ref: join_ref.as_deref(),
            ref_: join_ref.as_deref(),
            topic: &topic,
            event: events::JOIN,
            payload: &payload,
        });
    }

    /// Another channel of the same topic that is joined or joining is left
    /// (phoenix.js `leaveOpenTopic`).
    pub(super) fn leave_open_topic(&mut self, topic: &str, except: u64) {
        let dup = self.channels.iter().find(|(id, c)| {
            **id != except
                && c.shared.topic == topic
                && matches!(
                    c.shared.state(),
                    ChannelState::Joined | ChannelState::Joining
                )
        });
        if let Some((&dup, _)) = dup {
            tracing::debug!(target: TARGET, %topic, "leaving duplicate topic");
            let (tx, _) = oneshot::channel();
            let timeout = self.opts.timeout;
            self.leave(dup, timeout, tx);
        }
    }

    /// phoenix.js `onError`: errored, and a rejoin scheduled if connected.
    pub(super) fn chan_error(&mut self, id: u64) {
        let connected = self.is_open();
        let Some(entry) = self.channels.get_mut(&id) else {
            return;
        };
        if entry.shared.state() == ChannelState::Joining {
            reset_join(entry);
        }
        entry.shared.set_state(ChannelState::Errored);
        if connected {
            self.schedule_rejoin(id);
        }
    }

    pub(super) fn schedule_rejoin(&mut self, id: u64) {
        let Some(entry) = self.channels.get_mut(&id) else {
            return;
        };
        let wait = (self.opts.rejoin_after)(entry.rejoin_tries + 1);
        entry.rejoin_at = Some(Instant::now() + wait);
    }

    /// Stops every channel's rejoin timer and backoff (the connection
    /// changed); returns the channels' ids.
    pub(super) fn reset_rejoin_timers(&mut self) -> Vec<u64> {
        for entry in self.channels.values_mut() {
            entry.rejoin_at = None;
            entry.rejoin_tries = 0;
        }
        self.channels.keys().copied().collect()
    }

    /// The connection stopped: every channel not already errored, leaving
    /// or closed gets a `phx_error` from the transport (phoenix.js
    /// `triggerChanError`); the rejoin waits for the next open.
    pub(super) fn trigger_chan_error(&mut self, reason: &str) {
        for id in self.reset_rejoin_timers() {
            let Some(entry) = self.channels.get_mut(&id) else {
                continue;
            };
            if matches!(
                entry.shared.state(),
                ChannelState::Errored | ChannelState::Leaving | ChannelState::Closed
            ) {
                continue;
            }
            entry.shared.dispatch(&ChannelEvent {
                topic: entry.shared.topic.clone(),
                event: events::ERROR.to_owned(),
                payload: Payload::Json(json!({"source": "transport", "reason": reason})),
                ref_: None,
                join_ref: entry.join_ref.clone(),
            });
            self.chan_error(id);
        }
    }

    /// phoenix.js `onClose`: closed, removed from the socket; its streams end.
    pub(super) fn close_channel(&mut self, id: u64) {
        let Some(mut entry) = self.channels.remove(&id) else {
            return;
        };
        entry.shared.set_state(ChannelState::Closed);
        entry.shared.close_streams();
        for w in entry.join_waiters.drain(..) {
            let _ = w.send(Err(JoinError::Closed));
        }
        for r in entry.buffer.drain(..) {
            if let Some(p) = self.pushes.remove(&r)
                && let PushKind::Push(tx) = p.kind
            {
                let _ = tx.send(Err(PushError::Closed));
            }
        }
    }
}

/// phoenix.js `joinPush.reset()`: the join ref is forgotten, so a late reply
/// to it no longer matches.
pub(super) fn reset_join(entry: &mut ChanEntry) {
    entry.join_ref = None;
    entry.shared.set_join_ref(None);
    entry.join_deadline = None;
    entry.join_sent = false;
}

//! The channel task: joins, then runs one callback at a time until the
//! channel leaves, stops, crashes, is replaced or its socket closes.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use fawkes_protocol::{Frame, Message, Payload, Ref, events};
use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Channel, Context, HandleResult, Reply, StopReason};
use crate::endpoint::Shared;
use crate::mailbox::{Mailbox, SendError};
use crate::pubsub::{Broadcast, EncodedBroadcast, Subscriber, SubscriptionId};
use crate::socket::{SocketShared, reply_frame};

/// A client message for the channel.
pub(crate) struct Incoming {
    pub(crate) event: String,
    pub(crate) payload: Payload,
    pub(crate) ref_: Option<Ref>,
}

/// What a channel task receives. Kept small: every variant is a pointer.
pub(crate) enum ChannelMsg {
    In(Box<Incoming>),
    Out(Arc<Broadcast>),
    Info(Box<dyn Any + Send>),
    /// A `phx_leave`: its join_ref and ref.
    Leave(Box<(Option<Ref>, Option<Ref>)>),
}

/// The part of a channel instance its socket, its subscription and its
/// [`Context`] share.
pub(crate) struct ChannelCore {
    pub(crate) topic: Arc<str>,
    /// The join ref pushes and replies carry: the join ref as received, else
    /// the join's ref. Stored once: the two are the same on most joins.
    pub(crate) push_ref: Option<Ref>,
    /// Whether the join carried a join ref (then it is `push_ref`).
    pub(crate) has_join_ref: bool,
    pub(crate) instance: u64,
    pub(crate) socket: Arc<SocketShared>,
    pub(crate) env: Arc<Shared>,
    pub(crate) mailbox: Mailbox<ChannelMsg>,
    pub(crate) intercept: &'static [&'static str],
    /// Stops the instance's timers; made on the first `send_after`, a child
    /// of the socket's token. The task itself watches the socket's token
    /// and its mailbox, closed by [`kill`](Self::kill).
    pub(crate) timers: OnceLock<CancellationToken>,
    pub(crate) subscription: OnceLock<SubscriptionId>,
    /// Replaced by a duplicate join: no terminate, nothing more on the wire.
    pub(crate) killed: AtomicBool,
    /// The owner of what the channel tracks in presence; 0 until it tracks.
    pub(crate) presence_owner: AtomicU64,
}

impl ChannelCore {
    /// The join ref as received: `phx_close` and `phx_error` carry it.
    pub(crate) fn join_ref(&self) -> Option<&Ref> {
        if self.has_join_ref {
            self.push_ref.as_ref()
        } else {
            None
        }
    }

    /// The token that stops the instance's timers.
    pub(crate) fn timers(&self) -> &CancellationToken {
        self.timers.get_or_init(|| self.socket.cancel.child_token())
    }

    fn stop_timers(&self) {
        if let Some(timers) = self.timers.get() {
            timers.cancel();
        }
    }

    /// Queues a frame for the client unless the instance was replaced.
    pub(crate) fn send_frame(&self, frame: Frame) {
        if !self.killed.load(Ordering::Acquire) {
            self.socket.push(frame);
        }
    }

    /// `phx_close` / `phx_error`: ref = join_ref = the join ref as received.
    pub(crate) fn control_frame(&self, event: &str, payload: Value) -> Option<Frame> {
        let msg = Message {
            join_ref: self.join_ref().cloned(),
            ref_: self.join_ref().cloned(),
            topic: self.topic.to_string(),
            event: event.to_owned(),
            payload: Payload::Json(payload),
        };
        match self.socket.serializer.encode_push(&msg) {
            Ok(frame) => Some(frame),
            Err(err) => {
                tracing::error!(target: "fawkes::channel", %err, "cannot encode {event}");
                None
            }
        }
    }

    fn control(&self, event: &str, payload: Value) {
        if let Some(frame) = self.control_frame(event, payload) {
            self.send_frame(frame);
        }
    }

    pub(crate) fn reply(&self, ref_: Option<Ref>, reply: Reply) {
        if let Some(frame) = reply_frame(
            &self.socket,
            self.push_ref.clone(),
            ref_,
            &self.topic,
            &reply.status,
            reply.response,
        ) {
            self.send_frame(frame);
        }
    }

    /// Kills the instance for a duplicate join (PROTOCOL §4.6): it leaves the
    /// topic at once, pushes nothing more and its terminate does not run.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        if let Some(id) = self.subscription.get() {
            self.env.pubsub.unsubscribe(&self.topic, *id);
        }
        // The task finds its mailbox closed and ends; what was queued is
        // dropped unanswered, as the instance sends nothing more.
        drop(self.mailbox.close());
        self.stop_timers();
    }
}

impl Subscriber for ChannelCore {
    fn deliver(&self, msg: &Arc<Broadcast>, encoded: &mut EncodedBroadcast) {
        if self.intercept.contains(&msg.event.as_str()) {
            // Policy: an intercepting channel that cannot keep up with
            // broadcasts is a slow client; its socket is closed.
            match self.mailbox.try_send(ChannelMsg::Out(msg.clone())) {
                Ok(()) | Err(SendError::Closed(_)) => {}
                Err(SendError::Full(_)) => {
                    tracing::warn!(target: "fawkes::channel", topic = %self.topic, "mailbox full, closing slow client");
                    self.socket.close(crate::socket::CloseReason::SlowClient);
                }
            }
        } else if let Some(frame) = encoded.frame(self.socket.serializer, msg) {
            self.send_frame(frame);
        }
    }
}

/// A join handed to a new channel task.
pub(crate) struct JoinRequest {
    pub(crate) payload: Value,
    pub(crate) ref_: Option<Ref>,
    /// A frame to send right after the join reply: the `phx_close` of the
    /// instance this join replaces (PROTOCOL §4.6).
    pub(crate) after_reply: Option<Frame>,
}

/// A route's channel, with its type erased for the socket's router.
pub(crate) trait ChannelFactory: Send + Sync {
    fn intercept(&self) -> &'static [&'static str];
    fn spawn(&self, core: Arc<ChannelCore>, join: JoinRequest, joined: oneshot::Sender<bool>);
}

/// The prototype a route clones for every join.
pub(crate) struct Route<C>(pub(crate) C);

impl<C: Channel> ChannelFactory for Route<C> {
    fn intercept(&self) -> &'static [&'static str] {
        C::INTERCEPT
    }

    fn spawn(&self, core: Arc<ChannelCore>, join: JoinRequest, joined: oneshot::Sender<bool>) {
        let span = tracing::debug_span!("channel", topic = %core.topic, join_ref = ?core.push_ref);
        let tracker = core.env.tracker.clone();
        let task = run(self.0.clone(), core, Box::new(join), joined);
        // A disabled span still takes 40 bytes in every task (see the
        // memory transport).
        if span.is_disabled() {
            tracker.spawn(task);
        } else {
            tracker.spawn(task.instrument(span));
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// How the channel's loop ended.
enum Exit {
    /// Terminate with this reason, then send `phx_close` or `phx_error` as
    /// the reason says; `close_first` puts `phx_close` before terminate.
    Stop(StopReason),
    /// The client left: reply ok, `phx_close`, then terminate.
    Leave(Option<Ref>),
    /// The socket closed: terminate, nothing on the wire.
    SocketClosed(StopReason),
    /// Replaced by a duplicate join: nothing at all.
    Killed,
}

/// Removes what a channel tracks when its task ends, however it ends
/// (PROTOCOL §7.3): after terminate, which may still track or untrack.
struct UntrackOnExit(Arc<ChannelCore>);

impl Drop for UntrackOnExit {
    fn drop(&mut self) {
        let owner = self.0.presence_owner.load(Ordering::Relaxed);
        if owner != 0 {
            self.0.env.presence.tracker().untrack_owner(owner);
        }
    }
}

/// The channel task. Its future is what an idle channel costs, so it keeps
/// only the waiting state: the join (request and state), the callbacks and
/// the end are boxed.
// Not an `async fn`: it would store its arguments twice in the task.
#[allow(clippy::manual_async_fn)]
fn run<C: Channel>(
    mut chan: C,
    core: Arc<ChannelCore>,
    join: Box<JoinRequest>,
    joined: oneshot::Sender<bool>,
) -> impl Future<Output = ()> + Send {
    async move {
        // `untrack.0` is the core: one pointer fewer in the task.
        let untrack = UntrackOnExit(core);
        let Some(mut ctx) = Box::pin(join_channel(&mut chan, &untrack.0, join, joined)).await
        else {
            return;
        };
        // The loop is here, not in a function of its own: a future per
        // call level would cost its own copy of the references.
        let exit = loop {
            let msg = tokio::select! {
                biased;
                _ = untrack.0.socket.cancel.cancelled() => break socket_closed(&untrack.0),
                msg = untrack.0.mailbox.recv() => match msg {
                    Some(msg) => msg,
                    // Closed by `kill`.
                    None => break Exit::Killed,
                },
            };
            // Boxed: a callback's state is not kept while the channel idles.
            if let Some(exit) = Box::pin(handle(&mut chan, &untrack.0, &mut ctx, msg)).await {
                break exit;
            }
        };
        Box::pin(finish(&mut chan, &untrack.0, &mut ctx, exit)).await;
    }
}

/// The exit once the socket's token is cancelled.
fn socket_closed(core: &ChannelCore) -> Exit {
    if core.killed.load(Ordering::Acquire) {
        return Exit::Killed;
    }
    let reason = core
        .socket
        .close_reason()
        .map_or("draining", |r| r.stop_reason());
    Exit::SocketClosed(StopReason::Shutdown(reason.into()))
}

/// How long a join waits for its topic's subscription on the cluster
/// backend before answering anyway.
const CLUSTER_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `join` and answers it; the context if the channel joined.
async fn join_channel<C: Channel>(
    chan: &mut C,
    core: &Arc<ChannelCore>,
    join: Box<JoinRequest>,
    joined: oneshot::Sender<bool>,
) -> Option<Context<C>> {
    // Unboxed here, so the box is freed with the join's state.
    let join = *join;
    let mut ctx = Context::new(core.clone());
    let join_ref = core.join_ref().cloned();
    let outcome = AssertUnwindSafe(chan.join(&core.topic, join.payload, &mut ctx))
        .catch_unwind()
        .await;
    let (status, response) = match outcome {
        Ok(Ok(response)) => {
            // PROTOCOL §4.8: subscribe before the ok reply, so the client
            // gets every broadcast made after it saw the reply.
            let id = core.env.pubsub.subscribe(&core.topic, core.clone());
            let _ = core.subscription.set(id);
            // Across nodes too, once the adapter's subscription is in place;
            // bounded, so a slow cluster backend delays joins at most this.
            if let Some(ready) = core.env.pubsub.ready(&core.topic) {
                let _ = tokio::time::timeout(CLUSTER_READY_WAIT, ready).await;
            }
            ("ok", response)
        }
        Ok(Err(response)) => ("error", response),
        Err(panic) => {
            tracing::error!(target: "fawkes::channel", topic = %core.topic, panic = panic_message(&*panic), "join crashed");
            ("error", json!({"reason": "join crashed"}))
        }
    };
    if let Some(frame) = reply_frame(
        &core.socket,
        join_ref,
        join.ref_,
        &core.topic,
        status,
        Payload::Json(response),
    ) {
        core.socket.push(frame);
    }
    if let Some(frame) = join.after_reply {
        core.socket.push(frame);
    }
    if status != "ok" {
        let _ = joined.send(false);
        core.mailbox.close();
        return None;
    }
    core.env.channels.fetch_add(1, Ordering::Relaxed);
    let _ = joined.send(true);
    // PROTOCOL §4.14: pushes made during join follow the reply.
    ctx.joined();
    Some(ctx)
}

/// Runs the callback for one message; the exit if the channel ends.
async fn handle<C: Channel>(
    chan: &mut C,
    core: &ChannelCore,
    ctx: &mut Context<C>,
    msg: ChannelMsg,
) -> Option<Exit> {
    let (result, ref_) = match msg {
        ChannelMsg::In(incoming) => {
            let Incoming {
                event,
                payload,
                ref_,
            } = *incoming;
            ctx.set_ref(ref_.clone());
            let r = AssertUnwindSafe(chan.handle_in(&event, payload, ctx))
                .catch_unwind()
                .await;
            (r, ref_)
        }
        ChannelMsg::Out(msg) => {
            ctx.set_ref(None);
            let r = AssertUnwindSafe(chan.handle_out(&msg.event, &msg.payload, ctx))
                .catch_unwind()
                .await;
            (r, None)
        }
        ChannelMsg::Info(info) => {
            ctx.set_ref(None);
            let Ok(info) = info.downcast::<C::Info>() else {
                return None;
            };
            let r = AssertUnwindSafe(chan.handle_info(*info, ctx))
                .catch_unwind()
                .await;
            (r, None)
        }
        ChannelMsg::Leave(leave) => return Some(Exit::Leave(leave.1)),
    };
    match result {
        Ok(HandleResult::NoReply) => None,
        Ok(HandleResult::Reply(reply)) => {
            send_reply(core, ref_, reply);
            None
        }
        Ok(HandleResult::Stop(reason, reply)) => {
            if let Some(reply) = reply {
                send_reply(core, ref_, reply);
            }
            Some(Exit::Stop(reason))
        }
        Err(panic) => {
            let message = panic_message(&*panic);
            tracing::error!(target: "fawkes::channel", topic = %core.topic, panic = %message, "channel crashed");
            Some(Exit::Stop(StopReason::Error(message)))
        }
    }
}

fn send_reply(core: &ChannelCore, ref_: Option<Ref>, reply: Reply) {
    if ref_.is_none() {
        tracing::warn!(target: "fawkes::channel", topic = %core.topic, "reply without a client message to answer; dropped");
        return;
    }
    core.reply(ref_, reply);
}

async fn terminate<C: Channel>(chan: &mut C, ctx: &mut Context<C>, reason: &StopReason) {
    ctx.set_ref(None);
    if let Err(panic) = AssertUnwindSafe(chan.terminate(reason, ctx))
        .catch_unwind()
        .await
    {
        tracing::error!(target: "fawkes::channel", panic = panic_message(&*panic), "terminate crashed");
    }
}

/// Sends the exit's frames in Phoenix's order (PROTOCOL §4.5, §4.7), freeing
/// the topic together with `phx_close` / `phx_error`.
async fn finish<C: Channel>(
    chan: &mut C,
    core: &Arc<ChannelCore>,
    ctx: &mut Context<C>,
    exit: Exit,
) {
    // Leave the topic first: nothing broadcast after this point reaches us.
    if let Some(id) = core.subscription.get() {
        core.env.pubsub.unsubscribe(&core.topic, *id);
    }
    match exit {
        Exit::Leave(ref_) => {
            core.reply(ref_, Reply::status("ok"));
            core.control(events::CLOSE, json!({}));
            release(core);
            terminate(chan, ctx, &StopReason::Shutdown("left".into())).await;
        }
        Exit::Stop(reason) if reason.is_orderly() => {
            core.control(events::CLOSE, json!({}));
            release(core);
            terminate(chan, ctx, &reason).await;
        }
        Exit::Stop(reason) => {
            terminate(chan, ctx, &reason).await;
            core.control(events::ERROR, json!({"reason": "channel_crash"}));
            release(core);
        }
        Exit::SocketClosed(reason) => {
            terminate(chan, ctx, &reason).await;
            release(core);
        }
        Exit::Killed => release(core),
    }
    core.stop_timers();
}

/// Frees the topic on the socket: the socket learns it in the same batch as
/// the `phx_close` / `phx_error` just queued, so the client can rejoin at once.
fn release(core: &ChannelCore) {
    // Messages that raced with the end are answered as for a topic without a
    // channel (PROTOCOL §4.3 step 5).
    let killed = core.killed.load(Ordering::Acquire);
    for msg in core.mailbox.close() {
        if killed {
            break;
        }
        let frame = match msg {
            ChannelMsg::In(incoming) => reply_frame(
                &core.socket,
                None,
                incoming.ref_,
                &core.topic,
                "error",
                Payload::Json(json!({"reason": "unmatched topic"})),
            ),
            ChannelMsg::Leave(leave) => {
                let (join_ref, ref_) = *leave;
                reply_frame(
                    &core.socket,
                    join_ref,
                    ref_,
                    &core.topic,
                    "ok",
                    Payload::empty(),
                )
            }
            ChannelMsg::Out(_) | ChannelMsg::Info(_) => None,
        };
        if let Some(frame) = frame {
            core.socket.push(frame);
        }
    }
    core.env.channels.fetch_sub(1, Ordering::Relaxed);
    core.socket
        .push_event(crate::socket::SocketEvent::ChannelExited {
            topic: core.topic.clone(),
            instance: core.instance,
        });
}

//! What the component answers: routes each iq to [`disco`],
//! [`commands`] (XEP-0050) or [`publish`]
//! (XEP-0357) and sends the reply to the connection's writer. Commands and
//! publishes wait on the core, so they run in tasks of their own, at most
//! `max_inflight` at once, holding at most [`HELD_BYTES`] of parsed
//! stanzas between them.

use std::sync::Arc;

use pushbridge_api::Context;
use tokio::sync::{mpsc, Semaphore};

use crate::registry::Registry;
use crate::stanza::{Req, NS_COMMANDS, NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PUBSUB};
use crate::xml::Element;
use crate::{commands, disco, publish, XmppConfig};

/// Bytes of parsed stanzas (see [`Element::footprint`]) that commands and
/// publishes in progress may hold at once: a parsed stanza takes many
/// times its size, so `max_inflight` alone would allow gigabytes.
pub const HELD_BYTES: usize = 32 << 20;

/// Answers stanzas; replies go to the connection's writer.
pub struct Service {
    ctx: Context<XmppConfig>,
    /// Replies to the connection's writer.
    out: mpsc::Sender<Element>,
    registry: Registry,
    /// One permit per byte of payload held by a task in progress
    /// ([`HELD_BYTES`] in all); a task's permits go with it.
    held: Arc<Semaphore>,
}

impl Service {
    /// A service answering for `ctx`'s adapter, replying into `out`.
    pub fn new(ctx: Context<XmppConfig>, out: mpsc::Sender<Element>) -> Self {
        Self {
            registry: Registry::new(ctx.clone()),
            ctx,
            out,
            held: Arc::new(Semaphore::new(HELD_BYTES)),
        }
    }

    /// The device registry behind the commands and publishes.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn send_now(&self, e: Element) {
        if self.out.try_send(e).is_err() {
            tracing::warn!(adapter = self.ctx.name(), "XMPP reply queue full; reply dropped");
        }
    }

    /// Handle one stanza. Anything that waits on the core runs in its own
    /// task (at most `max_inflight`, counted by `inflight`), so the stream
    /// never stalls.
    pub fn handle(self: &Arc<Self>, mut stanza: Element, inflight: &Arc<Semaphore>) {
        if stanza.local() != "iq" {
            return; // messages and presence are not for us
        }
        let typ = stanza.get("type").unwrap_or("").to_owned();
        if typ != "get" && typ != "set" {
            return; // results and errors need no answer
        }
        let req = Req {
            id: stanza.get("id").unwrap_or("").to_owned(),
            from: stanza.get("from").unwrap_or("").to_owned(),
            to: stanza.get("to").unwrap_or(&self.ctx.config().domain).to_owned(),
        };
        let Some(payload) = stanza.take_first_element() else {
            self.send_now(req.error("modify", "bad-request", Some("empty iq")));
            return;
        };
        match (typ.as_str(), payload.local(), payload.ns()) {
            ("get", "query", Some(NS_DISCO_INFO)) => self.send_now(req.result(Some(disco::info(&payload)))),
            ("get", "query", Some(NS_DISCO_ITEMS)) => {
                let reply = disco::items(&payload, &req.to);
                self.send_now(req.result(Some(reply)))
            }
            ("set", "command", Some(NS_COMMANDS)) | ("set", "pubsub", Some(NS_PUBSUB)) => {
                let bytes = u32::try_from(payload.footprint().min(HELD_BYTES)).unwrap_or(u32::MAX);
                let permits = inflight
                    .clone()
                    .try_acquire_owned()
                    .and_then(|one| Ok((one, self.held.clone().try_acquire_many_owned(bytes)?)));
                let Ok(permits) = permits else {
                    self.send_now(req.error("wait", "resource-constraint", Some("too many requests in progress")));
                    return;
                };
                let svc = self.clone();
                tokio::spawn(async move {
                    let reply = svc.answer(&req, &payload).await;
                    let _ = svc.out.send(reply).await;
                    drop(permits);
                });
            }
            _ => self.send_now(req.error("cancel", "service-unavailable", None)),
        }
    }

    /// The reply to a command or a publish (`payload` of `req`).
    async fn answer(&self, req: &Req, payload: &Element) -> Element {
        if payload.local() == "command" {
            return commands::execute(&self.registry, req, payload).await;
        }
        let reply = publish::publish(&self.ctx, &self.registry, req, payload).await;
        let outcome = reply
            .find("error", None)
            .and_then(|e| e.elements().next())
            .map(|c| c.local().to_owned())
            .unwrap_or_else(|| "result".to_owned());
        // Debug-formatted: peer data cannot forge log lines.
        tracing::info!(
            adapter = self.ctx.name(),
            from = ?req.from,
            id = ?req.id,
            outcome,
            "XEP-0357 publish answered"
        );
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::{NS_DATA, NS_PUSH};
    use crate::test_support::*;
    use pushbridge_api::Event;
    use std::time::Duration;

    /// Namespaces are matched as resolved, not as spelled: a publish using
    /// prefixes (legal XML, unusual from servers) works like the plain one,
    /// and a `pubsub` element in another namespace is not taken for one.
    #[tokio::test]
    async fn publish_with_prefixed_namespaces_is_understood() {
        let mut f = fixture();
        let (node, secret) = register_as(&f, "alice@localhost/phone", "d1").await.unwrap();
        let stanza = read_stanza(&format!(
            "<iq type='set' id='px' from='localhost' to='push.localhost'>\
             <ps:pubsub xmlns:ps='{NS_PUBSUB}'><ps:publish node='{node}'><ps:item>\
             <n:notification xmlns:n='{NS_PUSH}'><d:x xmlns:d='{NS_DATA}' type='submit'>\
             <d:field var='FORM_TYPE'><d:value>urn:xmpp:push:summary</d:value></d:field>\
             <d:field var='message-count'><d:value>4</d:value></d:field>\
             <d:field var='last-message-sender'><d:value>bob@localhost</d:value></d:field>\
             </d:x></n:notification></ps:item></ps:publish>\
             <ps:publish-options><x xmlns='{NS_DATA}' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='secret'><value>{secret}</value></field></x></ps:publish-options>\
             </ps:pubsub></iq>"
        ))
        .await;
        let inflight = Arc::new(Semaphore::new(8));
        f.svc.handle(stanza, &inflight);
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.get("id"), r.get("type")), (Some("px"), Some("result")), "{r:?}");
        match f.events.lock().unwrap().last().unwrap() {
            Event::Message(m) => {
                assert_eq!(m.from, "bob@localhost");
                assert_eq!(m.badge, Some(4));
            }
            other => panic!("{other:?}"),
        }
        // The same shape in a foreign namespace is not a pubsub publish.
        let stanza = read_stanza(&format!(
            "<iq type='set' id='py' from='localhost' to='push.localhost'>\
             <p:pubsub xmlns:p='urn:example:not-pubsub'><p:publish node='{node}'/></p:pubsub></iq>"
        ))
        .await;
        f.svc.handle(stanza, &inflight);
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.get("id"), r.get("type")), (Some("py"), Some("error")), "{r:?}");
    }

    #[tokio::test]
    async fn publishes_beyond_max_inflight_answer_resource_constraint() {
        let mut f = fixture();
        let none_free = Arc::new(Semaphore::new(0));
        f.svc
            .handle(iq("set", "p9", publish_stanza("n", Some("s"), &[])), &none_free);
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.get("id"), Some("p9"));
        let (typ, cond, _) = condition(&r);
        assert_eq!((typ.as_str(), cond.as_str()), ("wait", "resource-constraint"));
    }

    #[tokio::test]
    async fn publishes_held_in_progress_are_bounded_in_bytes() {
        let mut f = fixture();
        let (node, secret) = register_as(&f, "alice@localhost/phone", "d1").await.unwrap();
        f.core(Core::Silent);
        let inflight = Arc::new(Semaphore::new(8));
        // Over half the budget each: the first is held by the core, the
        // second does not fit beside it, a small one still does.
        let big = "x".repeat(HELD_BYTES / 2 + 1);
        let publish = |id: &str, junk: &str| iq("set", id, publish_stanza(&node, Some(&secret), &[("junk", junk)]));
        f.svc.handle(publish("big1", &big), &inflight);
        f.svc.handle(publish("big2", &big), &inflight);
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.get("id"), Some("big2"));
        let (typ, cond, _) = condition(&r);
        assert_eq!((typ.as_str(), cond.as_str()), ("wait", "resource-constraint"));
        f.svc.handle(publish("small", "y"), &inflight);
        tokio::time::timeout(Duration::from_secs(5), async {
            while f
                .events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| matches!(e, Event::Message(_)))
                .count()
                < 2
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the small publish reaches the core");
        assert_eq!(inflight.available_permits(), 6, "big1 and small in progress");
    }

    #[tokio::test]
    async fn a_publish_the_core_never_answers_does_not_stall_other_stanzas() {
        let mut f = fixture();
        let (node, secret) = register_as(&f, "alice@localhost/phone", "d1").await.unwrap();
        f.core(Core::Silent);
        let inflight = Arc::new(Semaphore::new(8));
        f.svc
            .handle(iq("set", "p1", publish_stanza(&node, Some(&secret), &[])), &inflight);
        // The publish reached the core, which sits on it.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !matches!(f.events.lock().unwrap().last(), Some(Event::Message(_))) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the publish reaches the core");
        // Still, disco is answered (first: the publish has no answer).
        f.svc.handle(disco_iq("d1"), &inflight);
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .expect("disco answered while a publish hangs")
            .unwrap();
        assert_eq!((r.get("id"), r.get("type")), (Some("d1"), Some("result")), "{r:?}");
        assert_eq!(inflight.available_permits(), 7, "the publish still holds its slot");
        // And so is a registration command.
        f.svc.handle(
            iq(
                "set",
                "c1",
                command("register-push-apns", &[("token", TOKEN), ("device-id", "d2")]),
            ),
            &inflight,
        );
        let r = tokio::time::timeout(Duration::from_secs(5), f.out.recv())
            .await
            .expect("command answered while a publish hangs")
            .unwrap();
        assert_eq!((r.get("id"), r.get("type")), (Some("c1"), Some("result")), "{r:?}");
    }
}

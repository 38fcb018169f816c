//! Building blocks of the component's answers: the namespaces it speaks,
//! the addressing of an iq request and its result or error reply
//! (RFC 6120 §8.2.3, §8.3), JIDs, and XEP-0004 data forms.

use std::collections::HashMap;

use crate::xml::Element;

/// XEP-0030 service discovery, info.
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030 service discovery, items.
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0050 ad-hoc commands.
pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
/// XEP-0060 publish-subscribe.
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// XEP-0357 push notifications.
pub const NS_PUSH: &str = "urn:xmpp:push:0";
/// XEP-0004 data forms.
pub const NS_DATA: &str = "jabber:x:data";
/// RFC 6120 stanza error conditions.
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// `FORM_TYPE` of the XEP-0357 notification summary.
pub const FORM_SUMMARY: &str = "urn:xmpp:push:summary";
/// `FORM_TYPE` of XEP-0060 publish options (where the push secret travels).
pub const FORM_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// The addressing of a request, to answer it.
#[derive(Debug, Clone)]
pub struct Req {
    /// The iq's `id`, echoed in the reply.
    pub id: String,
    /// The sender's JID (the reply goes there).
    pub from: String,
    /// The JID the request was sent to (the reply comes from there).
    pub to: String,
}

impl Req {
    fn reply(&self, typ: &str) -> Element {
        Element::new("iq")
            .attr("type", typ)
            .attr("id", &self.id)
            .attr("from", &self.to)
            .attr("to", &self.from)
    }

    /// An iq `result`, with `payload` as its child when given.
    pub fn result(&self, payload: Option<Element>) -> Element {
        let r = self.reply("result");
        match payload {
            Some(p) => r.child(p),
            None => r,
        }
    }

    /// An error reply: `typ` (cancel, modify, wait, auth), a defined
    /// condition, and an optional human-readable text.
    pub fn error(&self, typ: &str, condition: &str, text: Option<&str>) -> Element {
        let mut err = Element::new("error")
            .attr("type", typ)
            .child(Element::new(condition).attr("xmlns", NS_STANZAS));
        if let Some(t) = text {
            err = err.child(Element::new("text").attr("xmlns", NS_STANZAS).text(t));
        }
        self.reply("error").child(err)
    }
}

/// The bare JID (no resource), lower-cased.
pub fn bare(jid: &str) -> String {
    jid.split('/').next().unwrap_or(jid).to_lowercase()
}

/// The fields of a data form: var → first value.
pub fn fields(form: &Element) -> HashMap<String, String> {
    form.elements()
        .filter(|f| f.local() == "field")
        .filter_map(|f| {
            let var = f.get("var")?.to_owned();
            let value = f.find("value", None).map(|v| v.text_content()).unwrap_or_default();
            Some((var, value))
        })
        .collect()
}

/// A data form field with one value.
pub fn field(var: &str, value: &str) -> Element {
    Element::new("field")
        .attr("var", var)
        .child(Element::new("value").text(value))
}

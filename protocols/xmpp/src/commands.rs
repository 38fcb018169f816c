//! The registration commands (XEP-0050 ad-hoc commands): a bare execute
//! gets the form to fill, a submitted form registers or unregisters a
//! device in the [`Registry`] and is answered with a result form.
//!
//! - `register-push-apns`: fields `token` (required), `device-id`,
//!   `topic`, `sandbox`; answers `node` and `secret`.
//! - `v1-register-push` (mod_push_appserver's dialect): fields `type`
//!   (`apns`), `node` (the device id), `token`; answers `jid`, `node` and
//!   `secret`.
//! - `unregister-push-apns`: fields `token` or `device-id`; answers
//!   `removed` (how many).

use std::collections::HashMap;

use pushbridge_api::Environment;

use crate::registry::{random_hex, Registry, RegistryError};
use crate::stanza::{bare, field, fields, Req, NS_COMMANDS, NS_DATA};
use crate::xml::Element;

/// The registration commands, with their names for disco#items.
pub const COMMANDS: [(&str, &str); 3] = [
    ("register-push-apns", "Register an APNS device for push notifications"),
    ("unregister-push-apns", "Unregister an APNS device"),
    ("v1-register-push", "Register a device (mod_push_appserver dialect)"),
];

/// Why a command is answered with an error.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error("unknown command")]
    UnknownCommand,
    #[error("the request has no usable sender JID")]
    NoSender,
    #[error("field '{0}' is required")]
    Missing(&'static str),
    #[error("field 'token' or 'device-id' is required")]
    NoDevice,
    #[error("field 'type' must be apns, got {0:?}")]
    NotApns(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl CommandError {
    /// The iq error answering `req`.
    fn reply(&self, req: &Req) -> Element {
        let (typ, condition) = match self {
            Self::UnknownCommand => ("cancel", "item-not-found"),
            Self::NoSender | Self::Missing(_) | Self::NoDevice => ("modify", "bad-request"),
            Self::NotApns(_) => ("modify", "not-acceptable"),
            Self::Registry(e) => return e.reply(req),
        };
        req.error(typ, condition, Some(&self.to_string()))
    }
}

/// Values of a submitted form's answer: var → value.
type Answer = Vec<(&'static str, String)>;

/// Execute a `<command/>` (XEP-0050) sent in `req`: the iq reply.
pub async fn execute(registry: &Registry, req: &Req, cmd: &Element) -> Element {
    match run(registry, req, cmd).await {
        Ok(reply) => reply,
        Err(e) => e.reply(req),
    }
}

async fn run(registry: &Registry, req: &Req, cmd: &Element) -> Result<Element, CommandError> {
    let node = cmd.get("node").unwrap_or("");
    if !COMMANDS.iter().any(|(n, _)| *n == node) {
        return Err(CommandError::UnknownCommand);
    }
    let session = cmd.get("sessionid").map(str::to_owned).unwrap_or_else(|| random_hex(8));
    let head = |status: &str| {
        Element::new("command")
            .attr("xmlns", NS_COMMANDS)
            .attr("node", node)
            .attr("sessionid", &session)
            .attr("status", status)
    };
    if cmd.get("action") == Some("cancel") {
        return Ok(req.result(Some(head("canceled"))));
    }
    let Some(form) = cmd
        .find("x", Some(NS_DATA))
        .filter(|x| x.get("type").unwrap_or("submit") == "submit")
    else {
        // A bare execute: hand out the form to fill.
        let actions = Element::new("actions")
            .attr("execute", "complete")
            .child(Element::new("complete"));
        return Ok(req.result(Some(head("executing").child(actions).child(form_to_fill(node)))));
    };
    let f = fields(form);
    let jid = bare(&req.from);
    if jid.is_empty() || jid.contains(char::is_whitespace) {
        return Err(CommandError::NoSender);
    }
    let answer = match node {
        "register-push-apns" => register(registry, &jid, &f).await?,
        "v1-register-push" => register_v1(registry, req, &jid, &f).await?,
        _ => unregister(registry, &jid, &f).await?,
    };
    Ok(req.result(Some(head("completed").child(result_form(&answer)))))
}

/// A field's value unless it is absent or empty.
fn given<'f>(f: &'f HashMap<String, String>, var: &str) -> Option<&'f String> {
    f.get(var).filter(|v| !v.is_empty())
}

fn required<'f>(f: &'f HashMap<String, String>, var: &'static str) -> Result<&'f String, CommandError> {
    given(f, var).ok_or(CommandError::Missing(var))
}

/// `register-push-apns`.
async fn register(registry: &Registry, jid: &str, f: &HashMap<String, String>) -> Result<Answer, CommandError> {
    let token = required(f, "token")?;
    let device_id = given(f, "device-id").cloned();
    let env = match f.get("sandbox").map(String::as_str) {
        Some("true" | "1") => Some(Environment::Sandbox),
        Some("false" | "0") => Some(Environment::Production),
        _ => None,
    };
    let n = registry
        .register(jid, token, device_id, f.get("topic").cloned(), env)
        .await?;
    Ok(vec![("node", n.node), ("secret", n.secret)])
}

/// `v1-register-push`.
async fn register_v1(
    registry: &Registry,
    req: &Req,
    jid: &str,
    f: &HashMap<String, String>,
) -> Result<Answer, CommandError> {
    match f.get("type").map(String::as_str) {
        Some("apns") => {}
        other => return Err(CommandError::NotApns(other.unwrap_or("").to_owned())),
    }
    let device = required(f, "node")?;
    let token = required(f, "token")?;
    let n = registry.register(jid, token, Some(device.clone()), None, None).await?;
    Ok(vec![("jid", req.to.clone()), ("node", n.node), ("secret", n.secret)])
}

/// `unregister-push-apns`.
async fn unregister(registry: &Registry, jid: &str, f: &HashMap<String, String>) -> Result<Answer, CommandError> {
    let token = given(f, "token");
    let device_id = given(f, "device-id");
    if token.is_none() && device_id.is_none() {
        return Err(CommandError::NoDevice);
    }
    let removed = registry
        .unregister(jid, token.map(String::as_str), device_id.map(String::as_str))
        .await?;
    Ok(vec![("removed", removed.to_string())])
}

/// The `result` form of a completed command.
fn result_form(answer: &Answer) -> Element {
    let mut x = Element::new("x").attr("xmlns", NS_DATA).attr("type", "result");
    for (var, value) in answer {
        x = x.child(field(var, value));
    }
    x
}

/// The form a bare execute of command `node` is answered with.
fn form_to_fill(node: &str) -> Element {
    let mut x = Element::new("x").attr("xmlns", NS_DATA).attr("type", "form");
    let text = |var: &str, label: &str, required: bool| {
        let mut f = Element::new("field")
            .attr("var", var)
            .attr("type", "text-single")
            .attr("label", label);
        if required {
            f = f.child(Element::new("required"));
        }
        f
    };
    match node {
        "register-push-apns" => {
            x = x
                .child(text("token", "APNS device token (hex)", true))
                .child(text("device-id", "Device id", false))
        }
        "v1-register-push" => {
            x = x
                .child(text("type", "Push type (apns)", true))
                .child(text("node", "Device id", true))
                .child(text("token", "APNS device token (hex)", true))
        }
        _ => {
            x = x
                .child(text("token", "APNS device token (hex)", false))
                .child(text("device-id", "Device id", false))
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use pushbridge_api::Event;

    #[tokio::test]
    async fn register_reuse_and_unregister() {
        let f = fixture();
        let r = f
            .execute(
                &req(),
                &command("register-push-apns", &[("token", TOKEN), ("device-id", "d1")]),
            )
            .await;
        let got = result_fields(&r);
        let (node, secret) = (got["node"].clone(), got["secret"].clone());
        assert_eq!(node.len(), 24);
        assert_eq!(secret.len(), 36);
        assert_eq!(r.get("to"), Some("Alice@Localhost/phone"));
        assert_eq!(r.get("from"), Some("push.localhost"));
        match &f.events.lock().unwrap()[0] {
            Event::Register { user, device } => {
                assert_eq!(user.as_str(), "xmpp:alice@localhost");
                assert_eq!(device.token.as_str(), TOKEN);
            }
            other => panic!("{other:?}"),
        }
        // The same device again: same node and secret.
        let again = f
            .execute(
                &req(),
                &command("register-push-apns", &[("token", TOKEN), ("device-id", "d1")]),
            )
            .await;
        assert_eq!(result_fields(&again)["node"], node);
        assert_eq!(result_fields(&again)["secret"], secret);
        // Unregister by device id.
        let un = f
            .execute(&req(), &command("unregister-push-apns", &[("device-id", "d1")]))
            .await;
        assert_eq!(result_fields(&un)["removed"], "1");
        assert!(matches!(
            f.events.lock().unwrap().last(),
            Some(Event::Unregister { .. })
        ));
        assert!(f.ctx.state_get(&format!("node:{node}")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_forms_are_explained() {
        let f = fixture();
        let r = f
            .execute(&req(), &command("register-push-apns", &[("token", "xyz")]))
            .await;
        let (typ, cond, text) = condition(&r);
        assert_eq!((typ.as_str(), cond.as_str()), ("modify", "not-acceptable"));
        assert!(text.contains("token"), "{text}");
        let r = f.execute(&req(), &command("register-push-apns", &[])).await;
        assert_eq!(condition(&r).1, "bad-request");
        let r = f
            .execute(
                &req(),
                &command("v1-register-push", &[("type", "fcm"), ("node", "n"), ("token", TOKEN)]),
            )
            .await;
        assert_eq!(condition(&r).1, "not-acceptable");
        let r = f
            .execute(
                &req(),
                &command("v1-register-push", &[("type", "apns"), ("token", TOKEN)]),
            )
            .await;
        assert!(condition(&r).2.contains("'node'"));
        let r = f.execute(&req(), &command("unregister-push-apns", &[])).await;
        assert_eq!(condition(&r).1, "bad-request");
        let r = f.execute(&req(), &command("no-such-command", &[])).await;
        assert_eq!(condition(&r).1, "item-not-found");
        // A bare execute gets the form to fill.
        let bare_exec = Element::new("command")
            .attr("xmlns", NS_COMMANDS)
            .attr("node", "register-push-apns")
            .attr("action", "execute");
        let r = f.execute(&req(), &bare_exec).await;
        let cmd = r.find("command", Some(NS_COMMANDS)).unwrap();
        assert_eq!(cmd.get("status"), Some("executing"));
        let form = cmd.find("x", Some(NS_DATA)).unwrap();
        assert_eq!(form.get("type"), Some("form"));
        assert!(form.elements().any(|f| f.get("var") == Some("token")));
        assert!(f.events.lock().unwrap().is_empty(), "nothing reached the core");
    }

    #[tokio::test]
    async fn v1_register_push_answers_jid_node_secret() {
        let f = fixture();
        let r = f
            .execute(
                &req(),
                &command(
                    "v1-register-push",
                    &[("type", "apns"), ("node", "dev-7"), ("token", TOKEN)],
                ),
            )
            .await;
        let got = result_fields(&r);
        assert_eq!(got["jid"], "push.localhost");
        assert!(!got["node"].is_empty() && !got["secret"].is_empty());
    }
}

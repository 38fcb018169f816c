//! Service discovery (XEP-0030): the component says it is a XEP-0357 push
//! service (`pubsub`/`push` identity) with ad-hoc commands, and lists the
//! registration commands under the commands node (XEP-0050 §2.2).

use crate::commands::COMMANDS;
use crate::stanza::{NS_COMMANDS, NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PUSH};
use crate::xml::Element;

/// The disco#info answer to `query`: identity and features.
pub fn info(query: &Element) -> Element {
    let mut q = Element::new("query").attr("xmlns", NS_DISCO_INFO);
    if let Some(node) = query.get("node") {
        q = q.attr("node", node);
    }
    q.child(
        Element::new("identity")
            .attr("category", "pubsub")
            .attr("type", "push")
            .attr("name", "pushbridge"),
    )
    .child(Element::new("feature").attr("var", NS_PUSH))
    .child(Element::new("feature").attr("var", NS_COMMANDS))
    .child(Element::new("feature").attr("var", NS_DISCO_INFO))
    .child(Element::new("feature").attr("var", NS_DISCO_ITEMS))
}

/// The disco#items answer to `query`: the commands (at `domain`) when it
/// asks for the commands node, else nothing.
pub fn items(query: &Element, domain: &str) -> Element {
    let mut q = Element::new("query").attr("xmlns", NS_DISCO_ITEMS);
    if let Some(node) = query.get("node") {
        q = q.attr("node", node);
        if node == NS_COMMANDS {
            for (n, name) in COMMANDS {
                q = q.child(
                    Element::new("item")
                        .attr("jid", domain)
                        .attr("node", n)
                        .attr("name", name),
                );
            }
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disco_says_push_and_commands() {
        let info = info(&Element::new("query").attr("xmlns", NS_DISCO_INFO));
        let id = info.find("identity", None).unwrap();
        assert_eq!((id.get("category"), id.get("type")), (Some("pubsub"), Some("push")));
        let features: Vec<&str> = info.elements().filter_map(|e| e.get("var")).collect();
        assert!(features.contains(&NS_PUSH) && features.contains(&NS_COMMANDS));
        let items = items(
            &Element::new("query")
                .attr("xmlns", NS_DISCO_ITEMS)
                .attr("node", NS_COMMANDS),
            "push.localhost",
        );
        let nodes: Vec<&str> = items.elements().filter_map(|e| e.get("node")).collect();
        assert_eq!(
            nodes,
            ["register-push-apns", "unregister-push-apns", "v1-register-push"]
        );
    }
}

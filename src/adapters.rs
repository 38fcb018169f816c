//! The adapters this build knows. Adding one: a field in
//! [`AdaptersConfig`] and one line in [`AdaptersConfig::spawn_all`] and
//! [`AdaptersConfig::check`].

use pushbridge_api::Adapter;
use serde::Deserialize;

use crate::supervisor::{spawn_all, AdapterDeps};

/// `[adapters]`: zero or more instances of each adapter kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptersConfig {
    /// `[[adapters.line]]`
    #[serde(default)]
    pub line: Vec<pushbridge_line::LineConfig>,
    /// `[[adapters.xmpp]]`
    #[serde(default)]
    pub xmpp: Vec<pushbridge_xmpp::XmppConfig>,
    /// `[[adapters.irc]]`
    #[serde(default)]
    pub irc: Vec<pushbridge_irc::IrcConfig>,
}

impl AdaptersConfig {
    /// Start every configured adapter instance under supervision.
    pub fn spawn_all(&self, deps: &AdapterDeps) {
        spawn_all::<pushbridge_line::LineAdapter>(&self.line, deps);
        spawn_all::<pushbridge_xmpp::XmppAdapter>(&self.xmpp, deps);
        spawn_all::<pushbridge_irc::IrcAdapter>(&self.irc, deps);
    }

    /// Check every instance; the error names the section.
    pub fn check(&self) -> Result<(), String> {
        check_each::<pushbridge_line::LineAdapter>(&self.line)?;
        check_each::<pushbridge_xmpp::XmppAdapter>(&self.xmpp)?;
        check_each::<pushbridge_irc::IrcAdapter>(&self.irc)?;
        Ok(())
    }

    /// `(kind, instance name)` of every configured instance.
    pub fn instances(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        names::<pushbridge_line::LineAdapter>(&self.line, &mut out);
        names::<pushbridge_xmpp::XmppAdapter>(&self.xmpp, &mut out);
        names::<pushbridge_irc::IrcAdapter>(&self.irc, &mut out);
        out
    }
}

fn check_each<A: Adapter>(configs: &[A::Config]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in configs.iter().enumerate() {
        A::check(c).map_err(|e| format!("adapters.{}[{i}]: {e}", A::KIND))?;
        let name = A::instance_name(c);
        if A::KIND != "line" && !seen.insert(name.clone()) {
            return Err(format!(
                "adapters.{}[{i}]: instance name {name:?} is used twice",
                A::KIND
            ));
        }
    }
    Ok(())
}

fn names<A: Adapter>(configs: &[A::Config], out: &mut Vec<(&'static str, String)>) {
    out.extend(configs.iter().map(|c| (A::KIND, A::instance_name(c))));
}

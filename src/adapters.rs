//! The adapters this build knows: one line each in the [`adapters!`] list
//! below. The macro generates, from that one place, the `[adapters]`
//! config section, starting every instance, checking every instance, and
//! listing them, so forgetting one of those cannot compile.

use pushbridge_api::Adapter;
use serde::Deserialize;

use crate::config::ConfigError;
use crate::supervisor::{spawn_all, AdapterDeps};

/// Declares the known adapters: `field => AdapterType`, where `field` is
/// the adapter's `KIND` (the `[[adapters.<KIND>]]` section name; a unit
/// test checks they agree).
macro_rules! adapters {
    ($( $(#[$doc:meta])* $field:ident => $adapter:ty ),* $(,)?) => {
        /// `[adapters]`: zero or more instances of each adapter kind.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct AdaptersConfig {
            $( $(#[$doc])* #[serde(default)] pub $field: Vec<<$adapter as Adapter>::Config>, )*
        }

        impl AdaptersConfig {
            /// Start every configured adapter instance under supervision.
            pub fn spawn_all(&self, deps: &AdapterDeps) {
                $( spawn_all::<$adapter>(&self.$field, deps); )*
            }

            /// Check every instance; the error names the section and key.
            pub fn check(&self) -> Result<(), ConfigError> {
                $( check_each::<$adapter>(&self.$field)?; )*
                Ok(())
            }

            /// `(kind, instance name)` of every configured instance.
            pub fn instances(&self) -> Vec<(&'static str, String)> {
                let mut out = Vec::new();
                $( out.extend(self.$field.iter().map(|c| (<$adapter>::KIND, <$adapter>::instance_name(c)))); )*
                out
            }

            /// `(section name, KIND)` of every known adapter.
            #[cfg(test)]
            fn kinds() -> Vec<(&'static str, &'static str)> {
                vec![$( (stringify!($field), <$adapter>::KIND) ),*]
            }
        }
    };
}

adapters! {
    /// `[[adapters.line]]`: the line protocol over TCP.
    line => pushbridge_line::LineAdapter,
    /// `[[adapters.xmpp]]`: XEP-0114 component + XEP-0357 App Server.
    xmpp => pushbridge_xmpp::XmppAdapter,
    /// `[[adapters.irc]]`: IRC watcher bot.
    irc => pushbridge_irc::IrcAdapter,
    /// `[[adapters.matrix]]`: Matrix push gateway (Push Gateway API v1).
    matrix => pushbridge_matrix::MatrixAdapter,
}

fn check_each<A: Adapter>(configs: &[A::Config]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in configs.iter().enumerate() {
        let section = || format!("adapters.{}[{i}]", A::KIND);
        A::check(c).map_err(|source| ConfigError::Adapter {
            section: section(),
            source,
        })?;
        let name = A::instance_name(c);
        if A::UNIQUE_NAMES && !seen.insert(name.clone()) {
            return Err(ConfigError::DuplicateInstance {
                section: section(),
                name,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example's commented-out Matrix section works once uncommented.
    #[test]
    fn the_example_matrix_section_parses_when_uncommented() {
        let text = include_str!("../config.toml.example");
        let start = text
            .find("# [[adapters.matrix]]")
            .expect("a matrix section in the example");
        let section: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let full = format!("{}\n{section}", &text[..start]);
        let c = crate::config::Config::parse(&full, std::path::Path::new("example")).expect("parses");
        c.check().expect("checks");
        let m = &c.adapters.matrix[0];
        assert_eq!(m.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(m.outcome_timeout, 10);
        assert_eq!(m.apps.len(), 2);
        assert_eq!(c.adapters.instances().last().map(|i| i.0), Some("matrix"));
    }

    #[test]
    fn section_names_are_the_adapter_kinds() {
        for (field, kind) in AdaptersConfig::kinds() {
            assert_eq!(field, kind);
        }
    }
}

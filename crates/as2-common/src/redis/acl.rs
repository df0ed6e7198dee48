//! One Redis ACL user per service, derived from the key groups ([`KeyGroup`]).
//!
//! Each service may touch only its own keys: the edge its dedup records (it cannot write
//! a partnership), routing the partnerships (and publish their change events), mdn its
//! delivery jobs, the sender its outbound messages. Every user gets the same commands:
//! reads and writes on data, key space commands (TTL, rename, scan for the layout
//! migration), transactions and scripts, connection commands and the cluster topology,
//! never a dangerous one (`FLUSHALL`, `KEYS`, `CONFIG`, `DEBUG`, `MIGRATE`, `ACL`,
//! `CLIENT KILL`, ...). Routing also gets pub/sub on its events channel.
//!
//! `as2ctl redis acl` prints the `ACL SETUSER` lines ([`setuser_commands`]); the test
//! below and `services/edge/tests/redis_acl.rs` run them against a real `redis-server`.

use super::{KeyGroup, KeyNamespace, glob_escape};

/// A service and what its Redis user may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceUser {
    /// The service (`edge`, `routing`, `mdn`, `sender`): the user is `{prefix}-{service}`.
    pub service: &'static str,
    /// Its key group.
    pub group: KeyGroup,
    /// Whether it publishes and subscribes to the partnership change events.
    pub partnership_events: bool,
}

/// The services that use Redis, with their users.
pub const SERVICE_USERS: [ServiceUser; 4] = [
    ServiceUser {
        service: "edge",
        group: KeyGroup::Dedup,
        partnership_events: false,
    },
    ServiceUser {
        service: "routing",
        group: KeyGroup::Partnerships,
        partnership_events: true,
    },
    ServiceUser {
        service: "mdn",
        group: KeyGroup::MdnDelivery,
        partnership_events: false,
    },
    ServiceUser {
        service: "sender",
        group: KeyGroup::Outbound,
        partnership_events: false,
    },
];

/// The command rules of every user, in order (later rules override earlier ones).
pub const COMMAND_RULES: &[&str] = &[
    "-@all",
    "+@connection",
    "+@read",
    "+@write",
    "+@keyspace",
    "+@transaction",
    "+evalsha",
    "+eval",
    "+script|load",
    "+script|exists",
    "-@dangerous",
    "+cluster|slots",
    "+cluster|shards",
    // The dedup scripts read Redis's clock for their leases.
    "+time",
];

/// The extra command rules of a user that follows the partnership change events.
pub const PARTNERSHIP_EVENT_RULES: &[&str] = &["+publish", "+subscribe", "+unsubscribe"];

/// The pub/sub channel of partnership change events (not a key: in a cluster it
/// reaches the subscribers of every node).
pub fn partnership_events_channel(namespace: &KeyNamespace) -> String {
    namespace.key("partnership-events")
}

impl ServiceUser {
    /// The user's name, `{prefix}-{service}`.
    pub fn name(&self, namespace: &KeyNamespace) -> String {
        format!("{}-{}", namespace.prefix(), self.service)
    }

    /// The key patterns: the group's, and its keys' names before hash tags (which the
    /// service's start-up migration moves; drop them once every replica runs a version
    /// with hash tags and the old keys are gone).
    pub fn key_patterns(&self, namespace: &KeyNamespace) -> Vec<String> {
        std::iter::once(self.group.pattern(namespace))
            .chain(self.group.legacy_pattern(namespace))
            .collect()
    }

    /// The arguments after `ACL SETUSER`: `reset on >{password}`, the key and channel
    /// patterns, the command rules.
    pub fn setuser_arguments(&self, namespace: &KeyNamespace, password: &str) -> Vec<String> {
        let mut arguments = vec![
            self.name(namespace),
            "reset".to_owned(),
            "on".to_owned(),
            format!(">{password}"),
        ];
        arguments.extend(
            self.key_patterns(namespace)
                .into_iter()
                .map(|pattern| format!("~{pattern}")),
        );
        if self.partnership_events {
            arguments.push(format!(
                "&{}",
                glob_escape(&partnership_events_channel(namespace))
            ));
        }
        arguments.extend(COMMAND_RULES.iter().map(|rule| (*rule).to_owned()));
        if self.partnership_events {
            arguments.extend(
                PARTNERSHIP_EVENT_RULES
                    .iter()
                    .map(|rule| (*rule).to_owned()),
            );
        }
        arguments
    }
}

/// The `ACL SETUSER` command of every service user, one line each, with
/// `password(service)` as its password.
pub fn setuser_commands(
    namespace: &KeyNamespace,
    password: impl Fn(&str) -> String,
) -> Vec<String> {
    SERVICE_USERS
        .iter()
        .map(|user| {
            format!(
                "ACL SETUSER {}",
                user.setuser_arguments(namespace, &password(user.service))
                    .join(" ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_its_own_group_and_only_routing_has_the_events() {
        let namespace = KeyNamespace::new("as2").unwrap();
        let lines = setuser_commands(&namespace, |service| format!("{service}-secret"));
        assert_eq!(
            lines[0],
            "ACL SETUSER as2-edge reset on >edge-secret ~as2:dedup:* -@all +@connection +@read \
             +@write +@keyspace +@transaction +evalsha +eval +script|load +script|exists \
             -@dangerous +cluster|slots +cluster|shards +time"
        );
        assert!(lines[1].starts_with(
            "ACL SETUSER as2-routing reset on >routing-secret ~as2:{partnership}* \
             ~as2:partnership* &as2:partnership-events -@all"
        ));
        assert!(lines[1].ends_with("+publish +subscribe +unsubscribe"));
        assert!(lines[2].contains(" ~as2:{mdn}* ~as2:mdn:* -@all"));
        assert!(lines[3].contains(" ~as2:{sender}* ~as2:sender:* -@all"));
        for line in &lines[2..] {
            assert!(!line.contains('&'), "{line}");
        }
    }

    #[test]
    fn glob_characters_of_the_prefix_are_escaped() {
        let namespace = KeyNamespace::new("a*b").unwrap();
        let edge = SERVICE_USERS[0].setuser_arguments(&namespace, "x");
        assert!(edge.contains(&"~a\\*b:dedup:*".to_owned()), "{edge:?}");
        assert_eq!(edge[0], "a*b-edge");
    }

    #[test]
    fn the_group_patterns_match_the_keys_of_the_group() {
        let namespace = KeyNamespace::new("as2").unwrap();
        assert_eq!(
            KeyGroup::Partnerships.key(&namespace, ":acme"),
            "as2:{partnership}:acme"
        );
        assert_eq!(
            KeyGroup::Partnerships.key(&namespace, "-pairs"),
            "as2:{partnership}-pairs"
        );
        assert_eq!(
            KeyGroup::MdnDelivery.key(&namespace, ":jobs"),
            "as2:{mdn}:jobs"
        );
        assert_eq!(
            KeyGroup::Outbound.key(&namespace, ":awaiting-mdn"),
            "as2:{sender}:awaiting-mdn"
        );
        assert_eq!(KeyGroup::Dedup.key(&namespace, ":ab12"), "as2:dedup:ab12");
    }
}

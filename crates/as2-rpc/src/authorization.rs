//! Who may call which RPC: the one permissions table of the gateway's gRPC APIs.
//!
//! Every gRPC server of the gateway authenticates its callers by their client
//! certificate (mutual TLS) and looks the RPC up here before the service sees the call
//! (`as2_common::grpc`). A caller's [`Role`] comes from its certificate's subject common
//! name: `edge`, or `operator:alice` for a named holder of a role (the part after the
//! colon only identifies the holder in the audit log).
//!
//! | RPC | edge | routing | mdn | sender | operator | console | certificate-exchange |
//! |---|---|---|---|---|---|---|---|
//! | `RoutingService/CreatePartnership` | | | | | yes | | |
//! | `RoutingService/UpdatePartnership` | | | | | yes | | yes |
//! | `RoutingService/DeletePartnership` | | | | | yes | | |
//! | `RoutingService/GetPartnership` | | | | yes | yes | yes | yes |
//! | `RoutingService/ListPartnerships` | | | | | yes | yes | yes |
//! | `RoutingService/ResolvePartnership` | yes | | | | yes | yes | |
//! | `RoutingService/WatchPartnerships` | yes | | | | | | |
//! | `MdnDeliveryService/EnqueueMdnDelivery` | yes | | | | | | |
//! | `MdnDeliveryService/GetDeliveryStatus` | | | | | yes | yes | |
//! | `MdnDeliveryService/ListDeliveries` | | | | | yes | yes | |
//! | `OutboundService/ReconcileMdn` | yes | | | | | | |
//! | `grpc.health.v1.Health/*` | yes | yes | yes | yes | yes | yes | yes |
//!
//! An RPC that is not in the table is refused for everyone, so a new RPC is closed
//! until it gets its row (a test checks that every RPC of the proto descriptors has one).

use std::fmt;
use std::str::FromStr;

/// What a caller of the gateway's gRPC APIs is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The AS2 edge: resolves and watches routes, enqueues MDNs, hands over partners'
    /// MDNs to the sender.
    Edge,
    /// The routing service (it calls no one today; its certificate serves its API).
    Routing,
    /// The MDN service (it calls no one today; its certificate serves its API).
    Mdn,
    /// The outbound sender: reads partnerships.
    Sender,
    /// A person or tool administering the gateway (`as2ctl`): the only role that
    /// creates, changes or deletes partnerships.
    Operator,
    /// The operator console: reads partnerships and deliveries.
    Console,
    /// Certificate exchange: reads partnerships and updates their certificates.
    CertificateExchange,
}

impl Role {
    /// Every role, in the order of the table above.
    pub const ALL: [Role; 7] = [
        Role::Edge,
        Role::Routing,
        Role::Mdn,
        Role::Sender,
        Role::Operator,
        Role::Console,
        Role::CertificateExchange,
    ];

    /// The role's name, as it appears in certificate common names.
    pub fn name(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Routing => "routing",
            Role::Mdn => "mdn",
            Role::Sender => "sender",
            Role::Operator => "operator",
            Role::Console => "console",
            Role::CertificateExchange => "certificate-exchange",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.name() == name)
            .ok_or_else(|| format!("{name:?} is not a role of the gateway"))
    }
}

/// An authenticated caller: the certificate's common name and the role it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The full common name, e.g. `operator:alice`; what the audit log records.
    pub identity: String,
    /// The role the common name starts with.
    pub role: Role,
}

impl Caller {
    /// Reads the caller from a certificate common name: `role` or `role:holder`.
    pub fn from_common_name(common_name: &str) -> Result<Self, String> {
        let role = common_name
            .split_once(':')
            .map_or(common_name, |(role, _)| role);
        let role = role.parse().map_err(|reason| {
            format!("certificate common name {common_name:?} names no role: {reason}")
        })?;
        Ok(Self {
            identity: common_name.to_owned(),
            role,
        })
    }
}

const EDGE: Role = Role::Edge;
const SENDER: Role = Role::Sender;
const OPERATOR: Role = Role::Operator;
const CONSOLE: Role = Role::Console;
const CEM: Role = Role::CertificateExchange;

/// The permissions table: each RPC by its full gRPC path, with the roles that may call it.
pub const PERMISSIONS: &[(&str, &[Role])] = &[
    (
        "/as2.routing.v1.RoutingService/CreatePartnership",
        &[OPERATOR],
    ),
    (
        "/as2.routing.v1.RoutingService/UpdatePartnership",
        &[OPERATOR, CEM],
    ),
    (
        "/as2.routing.v1.RoutingService/DeletePartnership",
        &[OPERATOR],
    ),
    (
        "/as2.routing.v1.RoutingService/GetPartnership",
        &[SENDER, OPERATOR, CONSOLE, CEM],
    ),
    (
        "/as2.routing.v1.RoutingService/ListPartnerships",
        &[OPERATOR, CONSOLE, CEM],
    ),
    (
        "/as2.routing.v1.RoutingService/ResolvePartnership",
        &[EDGE, OPERATOR, CONSOLE],
    ),
    ("/as2.routing.v1.RoutingService/WatchPartnerships", &[EDGE]),
    ("/as2.mdn.v1.MdnDeliveryService/EnqueueMdnDelivery", &[EDGE]),
    (
        "/as2.mdn.v1.MdnDeliveryService/GetDeliveryStatus",
        &[OPERATOR, CONSOLE],
    ),
    (
        "/as2.mdn.v1.MdnDeliveryService/ListDeliveries",
        &[OPERATOR, CONSOLE],
    ),
    ("/as2.sender.v1.OutboundService/ReconcileMdn", &[EDGE]),
    ("/grpc.health.v1.Health/Check", &Role::ALL),
    ("/grpc.health.v1.Health/Watch", &Role::ALL),
];

/// The roles that may call the RPC at `path` (`/package.Service/Method`); `None` for an
/// RPC the table does not know.
pub fn allowed_roles(path: &str) -> Option<&'static [Role]> {
    PERMISSIONS
        .iter()
        .find(|(rpc, _)| *rpc == path)
        .map(|(_, roles)| *roles)
}

/// Whether `caller` may call the RPC at `path`; the refusal says why, for the
/// `PERMISSION_DENIED` status.
pub fn authorize(caller: &Caller, path: &str) -> Result<(), String> {
    match allowed_roles(path) {
        Some(roles) if roles.contains(&caller.role) => Ok(()),
        Some(_) => Err(format!(
            "{} (role {}) may not call {path}",
            caller.identity, caller.role
        )),
        None => Err(format!("{path} is not an RPC of the gateway")),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Every RPC of the gateway's proto packages, as `/package.Service/Method`.
    fn rpcs_in_descriptors() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut rpcs = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    rpcs.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        rpcs
    }

    #[test]
    fn every_rpc_in_the_descriptors_has_a_row_and_every_row_an_rpc() {
        let rpcs = rpcs_in_descriptors();
        assert!(rpcs.len() >= 11, "{rpcs:?}");
        for rpc in &rpcs {
            assert!(allowed_roles(rpc).is_some(), "{rpc} has no permissions row");
        }
        for (row, _) in PERMISSIONS {
            assert!(
                rpcs.iter().any(|rpc| rpc == row) || row.starts_with("/grpc.health.v1."),
                "{row} is not an RPC of the descriptors"
            );
        }
    }

    #[test]
    fn only_the_operator_changes_partnerships() {
        for rpc in ["CreatePartnership", "DeletePartnership"] {
            let path = format!("/as2.routing.v1.RoutingService/{rpc}");
            assert_eq!(allowed_roles(&path), Some(&[Role::Operator][..]));
        }
    }

    #[test]
    fn common_names_name_roles() {
        let caller = Caller::from_common_name("operator:alice").unwrap();
        assert_eq!(caller.role, Role::Operator);
        assert_eq!(caller.identity, "operator:alice");
        assert_eq!(Caller::from_common_name("edge").unwrap().role, Role::Edge);
        let refusal = Caller::from_common_name("admin").unwrap_err();
        assert!(refusal.contains("names no role"), "{refusal}");
        assert!(Caller::from_common_name("").is_err());
        assert!(Caller::from_common_name(":edge").is_err());
    }

    #[test]
    fn refusals_say_who_and_what() {
        let edge = Caller::from_common_name("edge").unwrap();
        let refusal =
            authorize(&edge, "/as2.routing.v1.RoutingService/CreatePartnership").unwrap_err();
        assert_eq!(
            refusal,
            "edge (role edge) may not call /as2.routing.v1.RoutingService/CreatePartnership"
        );
        let unknown = authorize(&edge, "/as2.routing.v1.RoutingService/Nope").unwrap_err();
        assert!(unknown.contains("is not an RPC"), "{unknown}");
    }
}

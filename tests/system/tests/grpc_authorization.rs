//! Every RPC of the gateway's gRPC APIs, called by every identity, against the real
//! routing service, MDN service and sender serving over mutual TLS (real Redis, a real
//! Kafka-protocol broker, real OpenSSL on both sides).
//!
//! The RPCs come from the proto descriptors, so an RPC added later is covered (and is
//! refused until the permissions table has its row). For each call the answer must be:
//! `UNAUTHENTICATED` without a certificate, with one of another CA, with an expired one;
//! `PERMISSION_DENIED` for a certificate whose role the table does not allow (or that
//! names no role); and anything else (the service's own answer to an empty request) for
//! an allowed role. Partnership changes land in the audit log with the caller.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use as2_common::config::GrpcTlsConfig;
use as2_common::grpc::local_ca::{LocalCa, Validity};
use as2_common::grpc::tls::CredentialFiles;
use as2_common::grpc::{ChannelSettings, GrpcSecurity};
use as2_common::runtime::ServiceHandle;
use as2_rpc::authorization::{Role, allowed_roles};
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{
    CreatePartnershipRequest, DeletePartnershipRequest, Partnership, UpdatePartnershipRequest,
};
use as2_testkit::{KafkaBroker, RedisServer};
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;

/// Who calls, with what the answer must be.
struct Caller {
    name: String,
    security: Option<GrpcSecurity>,
    expect: Expect,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// As the permissions table says for this role.
    Role(Role),
    /// `UNAUTHENTICATED` for every RPC.
    Unauthenticated,
    /// `PERMISSION_DENIED` for every RPC.
    Denied,
}

fn security(files: &CredentialFiles) -> GrpcSecurity {
    GrpcSecurity::from_config(&GrpcTlsConfig::mutual_tls(
        &files.certificate,
        &files.key,
        &files.ca,
    ))
    .unwrap()
}

fn tls(files: &CredentialFiles) -> GrpcTlsConfig {
    GrpcTlsConfig::mutual_tls(&files.certificate, &files.key, &files.ca)
}

/// A credential of `ca` named `common_name`, in its own files under `directory`.
fn credential(
    ca: &LocalCa,
    directory: &Path,
    file_name: &str,
    common_name: &str,
    validity: Validity,
) -> CredentialFiles {
    let files = CredentialFiles {
        certificate: directory.join(format!("{file_name}.crt")),
        key: directory.join(format!("{file_name}.key")),
        ca: directory.join("ca.crt"),
    };
    ca.write_credential(&files, common_name, &["127.0.0.1"], validity)
        .unwrap();
    files
}

/// A raw call of `path` with an empty request message; the response, whatever its type,
/// decodes as `()` (prost skips unknown fields).
async fn call(channel: Channel, path: &str, server_streaming: bool) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    if server_streaming {
        grpc.server_streaming(tonic::Request::new(()), path, codec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(tonic::Request::new(()), path, codec)
            .await
            .map(|_| ())
    }
}

/// Every RPC in the descriptors as (package, path, server streaming), plus health.
fn rpcs() -> Vec<(String, String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(as2_rpc::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                rpcs.push((
                    file.package().to_owned(),
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    method.server_streaming(),
                ));
            }
        }
    }
    rpcs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_identity_as_the_permissions_table_says() {
    let redis = RedisServer::start();
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(dir.path(), "authorization test CA").unwrap();
    let server_credential = |name: &str| {
        ca.ensure_credential(dir.path(), name, name, &["127.0.0.1"])
            .unwrap()
    };

    let mut routing_config = as2_routing::RoutingConfig::local(redis.url(), "authz");
    routing_config.grpc.tls = tls(&server_credential("routing"));
    let routing = as2_routing::RoutingServer::bind(routing_config)
        .await
        .unwrap();
    let routing_url = format!("https://{}", routing.grpc_addr().unwrap());
    let routing = ServiceHandle::spawn("routing", |stop| routing.serve(stop));

    let mut mdn_config = as2_mdn::MdnConfig::local(redis.url(), "authz");
    mdn_config.grpc.tls = tls(&server_credential("mdn"));
    mdn_config.delivery.workers = 0;
    let mdn = as2_mdn::MdnServer::bind(mdn_config).await.unwrap();
    let mdn_url = format!("https://{}", mdn.grpc_addr().unwrap());
    let mdn = ServiceHandle::spawn("mdn", |stop| mdn.serve(stop));

    let keys = tempfile::tempdir().unwrap();
    let mut sender_config = as2_sender::SenderConfig::local(
        redis.url(),
        "authz",
        broker.bootstrap_servers(),
        routing_url.clone(),
        keys.path(),
    );
    sender_config.grpc.tls = tls(&server_credential("sender"));
    let sender = as2_sender::SenderServer::bind(sender_config).await.unwrap();
    let sender_url = format!("https://{}", sender.grpc_addr().unwrap());
    let sender = ServiceHandle::spawn("sender", |stop| sender.serve(stop));

    // The callers: one per role, and the ones that must not get in.
    let mut callers: Vec<Caller> = Role::ALL
        .into_iter()
        .map(|role| {
            let common_name = match role {
                Role::Operator => "operator:alice".to_owned(),
                other => other.name().to_owned(),
            };
            let files = credential(
                &ca,
                dir.path(),
                &format!("client-{role}"),
                &common_name,
                Validity::default(),
            );
            Caller {
                name: common_name,
                security: Some(security(&files)),
                expect: Expect::Role(role),
            }
        })
        .collect();
    let expired = credential(
        &ca,
        dir.path(),
        "expired-operator",
        "operator",
        Validity {
            not_before_days: -30,
            not_after_days: -1,
        },
    );
    callers.push(Caller {
        name: "an expired operator certificate".to_owned(),
        security: Some(security(&expired)),
        expect: Expect::Unauthenticated,
    });
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger_ca = LocalCa::load_or_create(stranger_dir.path(), "another CA").unwrap();
    let mut stranger = credential(
        &stranger_ca,
        stranger_dir.path(),
        "operator",
        "operator",
        Validity::default(),
    );
    // It trusts our CA (so it reaches the server) but is issued by another one.
    stranger.ca = dir.path().join("ca.crt");
    callers.push(Caller {
        name: "an operator certificate of another CA".to_owned(),
        security: Some(security(&stranger)),
        expect: Expect::Unauthenticated,
    });
    let roleless = credential(&ca, dir.path(), "admin", "admin", Validity::default());
    callers.push(Caller {
        name: "a certificate that names no role".to_owned(),
        security: Some(security(&roleless)),
        expect: Expect::Denied,
    });
    callers.push(Caller {
        name: "no client certificate".to_owned(),
        security: None,
        expect: Expect::Unauthenticated,
    });

    let url_of = |package: &str| match package {
        "as2.routing.v1" => routing_url.clone(),
        "as2.mdn.v1" => mdn_url.clone(),
        "as2.sender.v1" => sender_url.clone(),
        other => panic!("no server for package {other}"),
    };
    let mut targets = rpcs();
    assert!(targets.len() >= 11, "{targets:?}");
    for url in [&routing_url, &mdn_url, &sender_url] {
        targets.push((
            format!("health at {url}"),
            "/grpc.health.v1.Health/Check".to_owned(),
            false,
        ));
    }

    let mut checked = 0;
    let mut failures = Vec::new();
    for caller in &callers {
        for (package, path, server_streaming) in &targets {
            let url = match package.strip_prefix("health at ") {
                Some(url) => url.to_owned(),
                None => url_of(package),
            };
            let outcome = match &caller.security {
                Some(security) => {
                    let channel = as2_common::grpc::connect(
                        "service",
                        &url,
                        ChannelSettings::default(),
                        security,
                    )
                    .await
                    .unwrap_or_else(|error| panic!("{} cannot connect: {error}", caller.name));
                    call(channel, path, *server_streaming).await
                }
                None => {
                    call(
                        no_certificate_channel(&url, dir.path()).await,
                        path,
                        *server_streaming,
                    )
                    .await
                }
            };
            let code = outcome.as_ref().err().map_or(Code::Ok, tonic::Status::code);
            let acceptable = match caller.expect {
                Expect::Unauthenticated => code == Code::Unauthenticated,
                Expect::Denied => code == Code::PermissionDenied,
                Expect::Role(role) => {
                    let allowed = allowed_roles(path).is_some_and(|roles| roles.contains(&role));
                    if allowed {
                        !matches!(code, Code::PermissionDenied | Code::Unauthenticated)
                    } else {
                        code == Code::PermissionDenied
                    }
                }
            };
            if !acceptable {
                failures.push(format!("{} -> {path}: {outcome:?}", caller.name));
            }
            if let Err(status) = &outcome
                && matches!(
                    status.code(),
                    Code::PermissionDenied | Code::Unauthenticated
                )
            {
                assert!(!status.message().is_empty(), "a refusal without a reason");
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, callers.len() * targets.len());

    // The edge is refused CreatePartnership with a reason that names it and the RPC.
    let edge = callers
        .iter()
        .find(|caller| caller.name == "edge")
        .and_then(|caller| caller.security.clone())
        .unwrap();
    let mut as_edge = RoutingServiceClient::new(
        as2_common::grpc::connect("routing", &routing_url, ChannelSettings::default(), &edge)
            .await
            .unwrap(),
    );
    let refusal = as_edge
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(partnership()),
        })
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), Code::PermissionDenied);
    assert_eq!(
        refusal.message(),
        "edge (role edge) may not call /as2.routing.v1.RoutingService/CreatePartnership"
    );

    // The operator's changes are in the audit log, with who made them.
    let operator = callers
        .iter()
        .find(|caller| caller.name == "operator:alice")
        .and_then(|caller| caller.security.clone())
        .unwrap();
    let mut as_operator = RoutingServiceClient::new(
        as2_common::grpc::connect(
            "routing",
            &routing_url,
            ChannelSettings::default(),
            &operator,
        )
        .await
        .unwrap(),
    );
    let created = as_operator
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(partnership()),
        })
        .await
        .unwrap()
        .into_inner()
        .partnership
        .unwrap();
    let mut changed = created.clone();
    changed.display_name = "renamed".to_owned();
    as_operator
        .update_partnership(UpdatePartnershipRequest {
            partnership: Some(changed),
            expected_revision: 1,
        })
        .await
        .unwrap();
    as_operator
        .delete_partnership(DeletePartnershipRequest {
            id: created.id.clone(),
            expected_revision: 2,
        })
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("authz:{partnership}-audit")
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let log: Vec<(String, String, String, String)> = entries
        .ids
        .iter()
        .map(|entry| {
            let field = |name: &str| entry.get::<String>(name).unwrap();
            (
                field("action"),
                field("caller"),
                field("partnership"),
                field("revision"),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, String)> =
        [("create", "1"), ("update", "2"), ("delete", "2")]
            .into_iter()
            .map(|(action, revision)| {
                (
                    action.to_owned(),
                    "operator:alice".to_owned(),
                    created.id.clone(),
                    revision.to_owned(),
                )
            })
            .collect();
    assert_eq!(log, expected);

    for service in [sender, mdn, routing] {
        tokio::time::timeout(Duration::from_secs(30), service.stop())
            .await
            .unwrap()
            .unwrap();
    }
}

fn partnership() -> Partnership {
    Partnership {
        id: "audited".to_owned(),
        as2_from: "audit-partner".to_owned(),
        as2_to: "audit-us".to_owned(),
        kafka_topic: "audit-topic".to_owned(),
        ..Partnership::default()
    }
}

/// A TLS channel that trusts the servers' CA but presents no client certificate.
async fn no_certificate_channel(url: &str, ca_dir: &Path) -> Channel {
    use openssl::ssl::{SslConnector, SslMethod};
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_ca_file(ca_dir.join("ca.crt")).unwrap();
    builder.set_alpn_protos(b"\x02h2").unwrap();
    let connector = builder.build();
    let connect = move |uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let ssl = connector
                .configure()
                .and_then(|configuration| configuration.into_ssl(&host))
                .map_err(std::io::Error::other)?;
            let mut stream =
                tokio_openssl::SslStream::new(ssl, tcp).map_err(std::io::Error::other)?;
            std::pin::Pin::new(&mut stream)
                .connect()
                .await
                .map_err(|error| std::io::Error::other(error.to_string()))?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    };
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_with_connector(tower::service_fn(connect))
        .await
        .unwrap()
}

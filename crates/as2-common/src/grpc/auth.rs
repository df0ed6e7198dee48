//! The authorisation layer every gRPC server of the gateway runs: each call is checked
//! against [`as2_rpc::authorization`] with the caller the connection's client
//! certificate names, before the service sees it.
//!
//! - no client certificate, or one that does not verify: `UNAUTHENTICATED` with the
//!   reason;
//! - a verified certificate whose role may not call the RPC: `PERMISSION_DENIED`;
//! - otherwise the call goes on with the [`Caller`] in its extensions
//!   (`request.extensions().get::<Caller>()`), for the audit log.
//!
//! Under the development flag (plain text) nobody is authenticated and every call is let
//! through as [`Caller`] `insecure-development` with the operator role.

use std::task::{Context, Poll};

use as2_rpc::authorization::{self, Caller, Role};
use futures::future::{Either, Ready, ready};

use super::tls::{PeerAuthentication, PeerInfo};

/// The identity recorded for calls over plain text under the development flag.
pub const INSECURE_DEVELOPMENT_IDENTITY: &str = "insecure-development";

/// A tower layer for tonic servers that authorises each call ([module docs](self)).
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthorizationLayer;

impl<S> tower_layer::Layer<S> for AuthorizationLayer {
    type Service = Authorization<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorization { inner }
    }
}

/// The service [`AuthorizationLayer`] wraps around a server's routes.
#[derive(Clone, Debug)]
pub struct Authorization<S> {
    inner: S,
}

/// Decides one call: the caller to hand on, or the status that refuses it.
pub fn authorize(peer: Option<&PeerInfo>, path: &str) -> Result<Caller, tonic::Status> {
    let Some(peer) = peer else {
        return Err(tonic::Status::unauthenticated(
            "the connection carries no TLS information",
        ));
    };
    let common_name = match &peer.authentication {
        PeerAuthentication::InsecurePlaintext => {
            return Ok(Caller {
                identity: INSECURE_DEVELOPMENT_IDENTITY.to_owned(),
                role: Role::Operator,
            });
        }
        PeerAuthentication::Missing => {
            return Err(tonic::Status::unauthenticated(
                "a client certificate is required (mutual TLS)",
            ));
        }
        PeerAuthentication::Rejected { reason } => {
            return Err(tonic::Status::unauthenticated(reason.clone()));
        }
        PeerAuthentication::Verified { common_name } => common_name,
    };
    let caller = Caller::from_common_name(common_name).map_err(tonic::Status::permission_denied)?;
    authorization::authorize(&caller, path).map_err(tonic::Status::permission_denied)?;
    Ok(caller)
}

impl<S, B, ResBody> tower_service::Service<http::Request<B>> for Authorization<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match authorize(request.extensions().get::<PeerInfo>(), request.uri().path()) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(status) => {
                tracing::warn!(
                    rpc = request.uri().path(),
                    code = ?status.code(),
                    reason = status.message(),
                    "refused a gRPC call"
                );
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

/// The caller of a request that passed the [`AuthorizationLayer`]; `unknown` if it has
/// none (a service called without the layer, in a unit test).
pub fn caller_identity<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "unknown".to_owned(), |caller| caller.identity.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(authentication: PeerAuthentication) -> PeerInfo {
        PeerInfo {
            remote_addr: None,
            authentication,
        }
    }

    const CREATE: &str = "/as2.routing.v1.RoutingService/CreatePartnership";

    #[test]
    fn each_kind_of_peer_gets_its_answer() {
        let missing = authorize(Some(&peer(PeerAuthentication::Missing)), CREATE).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let rejected = authorize(
            Some(&peer(PeerAuthentication::Rejected {
                reason: "expired".to_owned(),
            })),
            CREATE,
        )
        .unwrap_err();
        assert_eq!(
            (rejected.code(), rejected.message()),
            (tonic::Code::Unauthenticated, "expired")
        );
        let edge = authorize(
            Some(&peer(PeerAuthentication::Verified {
                common_name: "edge".to_owned(),
            })),
            CREATE,
        )
        .unwrap_err();
        assert_eq!(edge.code(), tonic::Code::PermissionDenied);
        let operator = authorize(
            Some(&peer(PeerAuthentication::Verified {
                common_name: "operator:alice".to_owned(),
            })),
            CREATE,
        )
        .unwrap();
        assert_eq!(operator.identity, "operator:alice");
        let nobody = authorize(None, CREATE).unwrap_err();
        assert_eq!(nobody.code(), tonic::Code::Unauthenticated);
        let development =
            authorize(Some(&peer(PeerAuthentication::InsecurePlaintext)), CREATE).unwrap();
        assert_eq!(development.identity, INSECURE_DEVELOPMENT_IDENTITY);
    }
}

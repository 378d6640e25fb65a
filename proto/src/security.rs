//! Who may call what, and over what: bearer tokens checked on every gRPC call, and TLS
//! (optionally mutual) through rustls with certificates the operator provides.
//!
//! There are two tokens. The *worker* token is what actors, learners and reward servers
//! present to each other and to the coordinator; the *admin* token is what people and their
//! clients (`grlo ctl`, job-submitting programs) present. A worker token cannot submit,
//! cancel or read jobs; an admin token cannot register as a worker or lease tasks. The
//! gRPC health service stays open so Kubernetes probes (which send no headers) work.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use tonic::{Request, Status};

/// A client of any grlo service: a channel that adds this process's bearer token to each call.
pub type Transport = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

/// Errors in the security settings, naming the file or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {what} from {path}: {error}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A token, kept out of logs and debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A token from text (a file's contents or a variable's value), trimmed; empty → error.
    pub fn new(text: &str, origin: &str) -> Result<Self, SecurityError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(SecurityError::Invalid(format!("{origin} is empty")));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SecurityError::Invalid(format!(
                "{origin} contains whitespace or control characters; a token is one word"
            )));
        }
        Ok(Secret(token.to_string()))
    }

    /// The token itself, for a check outside gRPC (the dashboard's API). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time that depends only on the lengths, not on where the tokens differ.
    pub fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Reads a token from `file` if given, else from the environment variable `variable`.
pub fn load_token(file: Option<&Path>, variable: &str) -> Result<Option<Secret>, SecurityError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|error| SecurityError::Read {
            what: "a token",
            path: path.to_path_buf(),
            error,
        })?;
        return Secret::new(&text, &format!("the token file {}", path.display())).map(Some);
    }
    match std::env::var(variable) {
        Ok(text) => Secret::new(&text, &format!("the variable {variable}")).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(SecurityError::Invalid(format!(
            "the variable {variable} is not UTF-8"
        ))),
    }
}

/// Which token a method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Open to anyone (the health service, for probes).
    Nothing,
    Worker,
    Admin,
    /// Either token.
    Any,
}

/// The token each gRPC method needs, by its path `/package.Service/Method`. Methods not named
/// here need the admin token, so a new method is closed until someone opens it.
pub fn needs(path: &str) -> Needs {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Needs::Nothing,
        // Reflection describes the public schema only (see crate::reflection).
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => {
            Needs::Nothing
        }
        (
            "grlo.v1.Coordinator",
            "RegisterWorker" | "Heartbeat" | "LeaseTask" | "CompleteTask" | "PublishWeights"
            | "GetWeights",
        ) => Needs::Worker,
        ("grlo.v1.Learner", "SendTrajectories") => Needs::Worker,
        ("grlo.v1.Learner", "Status") | ("grlo.v1.RewardServer", "Score") => Needs::Any,
        _ => Needs::Admin,
    }
}

/// The tokens a server accepts. With neither set, every call is let through (a laptop run).
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub worker: Option<Secret>,
    pub admin: Option<Secret>,
}

impl Access {
    pub fn new(worker: Option<Secret>, admin: Option<Secret>) -> Result<Self, SecurityError> {
        if worker.is_some() && worker == admin {
            return Err(SecurityError::Invalid(
                "the worker and admin tokens are the same; they must differ".into(),
            ));
        }
        Ok(Access { worker, admin })
    }

    pub fn is_open(&self) -> bool {
        self.worker.is_none() && self.admin.is_none()
    }

    /// Lets the call through, or says why not: UNAUTHENTICATED without a token it knows,
    /// PERMISSION_DENIED with a token of the wrong kind.
    pub fn check(&self, path: &str, authorization: Option<&str>) -> Result<(), Status> {
        let needs = needs(path);
        if self.is_open() || needs == Needs::Nothing {
            return Ok(());
        }
        let method = path.rsplit('/').next().unwrap_or(path);
        let Some(offered) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(Status::unauthenticated(format!(
                "{method} needs a bearer token (authorization: Bearer <token>)"
            )));
        };
        let is = |token: &Option<Secret>| token.as_ref().is_some_and(|t| t.matches(offered));
        let (worker, admin) = (is(&self.worker), is(&self.admin));
        if !worker && !admin {
            return Err(Status::unauthenticated(format!(
                "{method}: the bearer token is not one this server accepts"
            )));
        }
        match needs {
            Needs::Worker if !worker => Err(Status::permission_denied(format!(
                "{method} is for workers; the admin token cannot call it"
            ))),
            Needs::Admin if !admin => Err(Status::permission_denied(format!(
                "{method} needs the admin token; a worker token cannot call it"
            ))),
            _ => Ok(()),
        }
    }
}

/// A tower layer that checks [`Access`] before a call reaches its service and counts the
/// call in `metrics` (see [`crate::metrics::RpcMetrics`]).
#[derive(Clone)]
pub struct Gate {
    access: Arc<Access>,
    metrics: Option<crate::metrics::RpcMetrics>,
}

impl Gate {
    pub fn new(access: Access, metrics: Option<crate::metrics::RpcMetrics>) -> Self {
        Gate {
            access: Arc::new(access),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            gate: self.clone(),
        }
    }
}

/// The service [`Gate`] wraps around a server's routes.
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    gate: Gate,
}

type Reply<E> = Result<http::Response<tonic::body::Body>, E>;

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Reply<S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let timer = self.gate.metrics.as_ref().map(|m| m.start(&path));
        match self.gate.access.check(&path, authorization) {
            Ok(()) => {
                let answer = self.inner.call(request);
                Box::pin(async move {
                    let response = answer.await?;
                    if let Some(timer) = timer {
                        timer.finish(grpc_code(&response));
                    }
                    Ok(response)
                })
            }
            Err(status) => {
                tracing::warn!(%path, code = ?status.code(), "call refused");
                if let Some(timer) = timer {
                    timer.finish(status.code());
                }
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The status a response carries in its headers (errors answered at once); a response that
/// will carry it in trailers (a normal answer) counts as OK.
fn grpc_code<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// Where a process's TLS material lives. As a server it presents `cert`/`key` and, with
/// `client_auth`, requires clients to present certificates signed by `ca` (mutual TLS). As
/// a client it checks servers against `ca` and presents `cert`/`key` when it has them.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_auth: bool,
    /// The name to check in servers' certificates instead of the host in the URL.
    pub domain: Option<String>,
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|error| SecurityError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

fn require_pem(bytes: &[u8], path: &Path, label: &str) -> Result<(), SecurityError> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("-----BEGIN") && text.contains(label) {
        Ok(())
    } else {
        Err(SecurityError::Invalid(format!(
            "{} is not a PEM file holding a {label}",
            path.display()
        )))
    }
}

impl TlsFiles {
    pub fn is_set(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some() || self.client_auth
    }

    fn identity(&self) -> Result<Option<Identity>, SecurityError> {
        match (&self.cert, &self.key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let (c, k) = (read(cert, "a certificate")?, read(key, "a private key")?);
                require_pem(&c, cert, "CERTIFICATE")?;
                require_pem(&k, key, "PRIVATE KEY")?;
                Ok(Some(Identity::from_pem(c, k)))
            }
            (Some(_), None) => Err(SecurityError::Invalid(
                "--tls-cert is set without --tls-key".into(),
            )),
            (None, Some(_)) => Err(SecurityError::Invalid(
                "--tls-key is set without --tls-cert".into(),
            )),
        }
    }

    fn ca(&self) -> Result<Option<Certificate>, SecurityError> {
        let Some(path) = &self.ca else {
            return Ok(None);
        };
        let bytes = read(path, "a CA certificate")?;
        require_pem(&bytes, path, "CERTIFICATE")?;
        Ok(Some(Certificate::from_pem(bytes)))
    }

    /// The server side: `None` when TLS is off (no certificate given).
    pub fn server(&self) -> Result<Option<ServerTlsConfig>, SecurityError> {
        let Some(identity) = self.identity()? else {
            if self.client_auth {
                return Err(SecurityError::Invalid(
                    "--tls-client-auth needs TLS: give --tls-cert and --tls-key".into(),
                ));
            }
            return Ok(None);
        };
        let mut config = ServerTlsConfig::new().identity(identity);
        if self.client_auth {
            let ca = self.ca()?.ok_or_else(|| {
                SecurityError::Invalid(
                    "--tls-client-auth needs --tls-ca, the CA that signs client certificates"
                        .into(),
                )
            })?;
            config = config.client_ca_root(ca).client_auth_optional(false);
        }
        Ok(Some(config))
    }

    /// The client side: `None` when TLS is off (no CA and no certificate given).
    pub fn client(&self) -> Result<Option<ClientTlsConfig>, SecurityError> {
        if !self.is_set() {
            return Ok(None);
        }
        let mut config = ClientTlsConfig::new();
        match self.ca()? {
            Some(ca) => config = config.ca_certificate(ca),
            None => config = config.with_native_roots(),
        }
        if let Some(identity) = self.identity()? {
            config = config.identity(identity);
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(Some(config))
    }
}

/// How a server is reached and who may call it.
#[derive(Clone, Debug, Default)]
pub struct ServerSecurity {
    /// `None`: plaintext.
    pub tls: Option<ServerTlsConfig>,
    pub access: Access,
}

/// A server builder with the [`Gate`] layer on.
pub type GatedServer =
    tonic::transport::Server<tower::layer::util::Stack<Gate, tower::layer::util::Identity>>;

impl ServerSecurity {
    pub fn new(tls: &TlsFiles, access: Access) -> Result<Self, SecurityError> {
        Ok(ServerSecurity {
            tls: tls.server()?,
            access,
        })
    }

    /// A tonic server builder with TLS (when configured), the token check and `rpc` counting.
    pub fn builder(
        &self,
        rpc: Option<crate::metrics::RpcMetrics>,
    ) -> Result<GatedServer, SecurityError> {
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            server = server
                .tls_config(tls.clone())
                .map_err(|e| SecurityError::Invalid(format!("TLS settings: {e}")))?;
        }
        Ok(server.layer(Gate::new(self.access.clone(), rpc)))
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing when there is no token).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// How this process calls other grlo services: TLS settings and its token.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    tls: Option<ClientTlsConfig>,
    credentials: Credentials,
    timeouts: Timeouts,
}

/// How long a call waits on a peer, so that no role hangs forever on one that went silent
/// (stopped, partitioned, its host gone without a TCP reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting, TLS handshake included.
    pub connect: Duration,
    /// An HTTP/2 ping every this often on each connection, busy or idle...
    pub keepalive_interval: Duration,
    /// ...and the connection (with every call on it) fails when a ping is not answered in this.
    pub keepalive_timeout: Duration,
    /// A call's answer (a streaming call's first message) must come within this. A peer that
    /// answers pings but not the call (a handler stuck) is given up on after it. The longest
    /// legitimate call is a large trajectory batch or a reward batch scored on a slow device.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(20),
            call: Duration::from_secs(600),
        }
    }
}

impl ClientSecurity {
    pub fn new(tls: &TlsFiles, token: Option<&Secret>) -> Result<Self, SecurityError> {
        let header = token
            .map(|t| {
                let mut value: MetadataValue<_> =
                    format!("Bearer {}", t.0).parse().map_err(|_| {
                        SecurityError::Invalid("the token is not printable ASCII".into())
                    })?;
                value.set_sensitive(true);
                Ok::<_, SecurityError>(value)
            })
            .transpose()?;
        Ok(ClientSecurity {
            tls: tls.client()?,
            credentials: Credentials { header },
            timeouts: Timeouts::default(),
        })
    }

    /// The same settings with other timeouts (tests shorten them).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The timeouts of every call made through it.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The `authorization` value it sends (`Bearer <token>`), for HTTP peers; `None` without
    /// a token.
    pub fn authorization(&self) -> Option<String> {
        let header = self.credentials.header.as_ref()?;
        header.to_str().ok().map(String::from)
    }

    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The URL of a peer known as `host:port` (a reward server's or learner's address).
    pub fn url(&self, address: &str) -> String {
        if address.contains("://") {
            return address.to_string();
        }
        let scheme = if self.uses_tls() { "https" } else { "http" };
        format!("{scheme}://{address}")
    }

    /// The endpoint for `url` (or `host:port`), with TLS when configured; an `http://` URL
    /// with TLS configured, or `https://` without, is refused rather than silently mixed.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, SecurityError> {
        let url = self.url(url);
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| SecurityError::Invalid(format!("invalid URL {url}: {e}")))?
            .connect_timeout(self.timeouts.connect)
            .timeout(self.timeouts.call)
            .http2_keep_alive_interval(self.timeouts.keepalive_interval)
            .keep_alive_timeout(self.timeouts.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(self.timeouts.keepalive_interval));
        match (&self.tls, url.starts_with("https://")) {
            (Some(tls), true) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| SecurityError::Invalid(format!("TLS settings for {url}: {e}"))),
            (None, false) => Ok(endpoint),
            (Some(_), false) => Err(SecurityError::Invalid(format!(
                "{url} is plaintext but TLS is configured; use https://"
            ))),
            (None, true) => Err(SecurityError::Invalid(format!(
                "{url} is https but no TLS settings are given (--tls-ca)"
            ))),
        }
    }

    /// A channel that connects on first use, carrying this process's token.
    pub fn lazy(&self, url: &str) -> Result<Transport, SecurityError> {
        Ok(self.wrap(self.endpoint(url)?.connect_lazy()))
    }

    /// Wraps a connected channel so calls carry this process's token.
    pub fn wrap(&self, channel: Channel) -> Transport {
        tonic::service::interceptor::InterceptedService::new(channel, self.credentials.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::new(
            Some(Secret::new("w-token", "w").unwrap()),
            Some(Secret::new("a-token", "a").unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn methods_need_the_right_token() {
        let access = access();
        let submit = "/grlo.v1.Coordinator/SubmitJob";
        let lease = "/grlo.v1.Coordinator/LeaseTask";
        let code = |path, header| access.check(path, header).map_err(|s| s.code());
        assert_eq!(code(submit, Some("Bearer a-token")), Ok(()));
        assert_eq!(code(lease, Some("Bearer w-token")), Ok(()));
        assert_eq!(
            code(submit, Some("Bearer w-token")),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(lease, Some("Bearer a-token")),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(code(submit, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            code(submit, Some("Bearer a-tokeN")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(submit, Some("a-token")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(code("/grpc.health.v1.Health/Check", None), Ok(()));
        for path in [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(code(path, None), Ok(()), "{path}");
        }
        assert_eq!(
            code("/grlo.v1.RewardServer/Score", Some("Bearer a-token")),
            Ok(())
        );
        assert_eq!(
            code("/grlo.v1.Coordinator/NewThing", Some("Bearer w-token")),
            Err(tonic::Code::PermissionDenied)
        );
        assert!(Access::default().check(submit, None).is_ok());
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        assert!(Secret::new(" \n", "x").is_err());
        assert!(Secret::new("two words", "x").is_err());
        let secret = Secret::new("s3cret\n", "x").unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert!(Access::new(Some(secret.clone()), Some(secret)).is_err());
    }

    /// A peer that accepts connections and then says nothing (a stopped process, a partition
    /// that drops packets): a call fails once a keepalive ping goes unanswered, instead of
    /// waiting forever as it did without timeouts.
    #[tokio::test]
    async fn a_call_to_a_silent_peer_fails_instead_of_hanging() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                sockets.push(socket); // kept open, never read or written
            }
        });
        let short = Timeouts {
            connect: Duration::from_millis(500),
            keepalive_interval: Duration::from_millis(200),
            keepalive_timeout: Duration::from_millis(300),
            call: Duration::from_secs(30),
        };
        let started = std::time::Instant::now();
        let status = health_check(short, address).await;
        let waited = started.elapsed();
        assert!(waited < short.call, "gave up after {waited:?}: {status:?}");
        held.abort();

        // A handler that never answers but whose connection is alive: the call timeout.
        let calls = Timeouts {
            call: Duration::from_millis(300),
            ..Timeouts::default()
        };
        assert_eq!(
            ClientSecurity::default().timeouts(),
            Timeouts::default(),
            "every client has the timeouts"
        );
        let (stuck, address) = stuck_server().await;
        let status = health_check(calls, address).await;
        assert!(status.message().contains("Timeout"), "{status:?}");
        stuck.abort();
    }

    /// A health check of `address` through a plaintext client with `timeouts`: the error it
    /// gives up with (the peers these tests call cannot answer).
    async fn health_check(timeouts: Timeouts, address: std::net::SocketAddr) -> Status {
        let client = ClientSecurity::new(&TlsFiles::default(), None)
            .unwrap()
            .with_timeouts(timeouts);
        let channel = client.lazy(&address.to_string()).unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let call = health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        // The outer bound only keeps a regression from hanging the test run.
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("the call gave up by itself")
            .expect_err("the peer cannot answer")
    }

    /// A gRPC server whose health handler never returns.
    async fn stuck_server() -> (tokio::task::JoinHandle<()>, std::net::SocketAddr) {
        struct Stuck;
        #[tonic::async_trait]
        impl tonic_health::pb::health_server::Health for Stuck {
            async fn check(
                &self,
                _: Request<tonic_health::pb::HealthCheckRequest>,
            ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, Status>
            {
                std::future::pending().await
            }
            type WatchStream = Pin<
                Box<
                    dyn tonic::codegen::tokio_stream::Stream<
                            Item = Result<tonic_health::pb::HealthCheckResponse, Status>,
                        > + Send,
                >,
            >;
            async fn watch(
                &self,
                _: Request<tonic_health::pb::HealthCheckRequest>,
            ) -> Result<tonic::Response<Self::WatchStream>, Status> {
                std::future::pending().await
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(tonic_health::pb::health_server::HealthServer::new(Stuck))
                .serve_with_incoming(incoming)
                .await;
        });
        (server, address)
    }
}

//! The security flags every role and `grlo ctl` share: TLS files and the token files.
//! Tokens come from files (`--worker-token-file`, `--admin-token-file`) or, failing that,
//! from the variables GRLO_WORKER_TOKEN and GRLO_ADMIN_TOKEN; they are never flags (flags
//! show in `ps`) and never logged.

use std::path::PathBuf;

use clap::Args;
use grlo_proto::security::{Access, ClientSecurity, Secret, ServerSecurity, TlsFiles, load_token};

#[derive(Clone, Debug, Default, Args)]
pub struct SecurityArgs {
    /// This process's certificate chain (PEM): served to clients, and shown to servers that
    /// ask for client certificates. With --tls-key, this role serves TLS.
    #[arg(long, env = "GRLO_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "GRLO_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that signs the servers' certificates (and, with
    /// --tls-client-auth, the clients'). Set it to call other roles over TLS.
    #[arg(long, env = "GRLO_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Require clients to present a certificate signed by --tls-ca (mutual TLS).
    #[arg(long, env = "GRLO_TLS_CLIENT_AUTH", global = true)]
    pub tls_client_auth: bool,
    /// The name to check in servers' certificates instead of the host of the URL.
    #[arg(long, env = "GRLO_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
    /// A file holding the worker token (or the token itself in GRLO_WORKER_TOKEN).
    #[arg(long, env = "GRLO_WORKER_TOKEN_FILE", global = true)]
    pub worker_token_file: Option<PathBuf>,
    /// A file holding the admin token (or the token itself in GRLO_ADMIN_TOKEN).
    #[arg(long, env = "GRLO_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,
}

impl SecurityArgs {
    fn tls(&self) -> TlsFiles {
        TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
            client_auth: self.tls_client_auth,
            domain: self.tls_domain.clone(),
        }
    }

    fn worker_token(&self) -> anyhow::Result<Option<Secret>> {
        Ok(load_token(
            self.worker_token_file.as_deref(),
            "GRLO_WORKER_TOKEN",
        )?)
    }

    fn admin_token(&self) -> anyhow::Result<Option<Secret>> {
        Ok(load_token(
            self.admin_token_file.as_deref(),
            "GRLO_ADMIN_TOKEN",
        )?)
    }

    /// How this role's own server is reached and who may call it.
    pub fn server(&self) -> anyhow::Result<ServerSecurity> {
        let access = Access::new(self.worker_token()?, self.admin_token()?)?;
        Ok(ServerSecurity::new(&self.tls(), access)?)
    }

    /// How a worker calls the others: TLS as configured, the worker token.
    pub fn worker_client(&self) -> anyhow::Result<ClientSecurity> {
        Ok(ClientSecurity::new(
            &self.tls(),
            self.worker_token()?.as_ref(),
        )?)
    }

    /// How an operator's client calls the coordinator: TLS as configured, the admin token.
    pub fn admin_client(&self) -> anyhow::Result<ClientSecurity> {
        Ok(ClientSecurity::new(
            &self.tls(),
            self.admin_token()?.as_ref(),
        )?)
    }
}

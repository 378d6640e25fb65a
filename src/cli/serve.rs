//! `grlo serve`: an OpenAI-compatible HTTP server over the built-in engine (see
//! `grlo_actor::serve`): chat with what you trained, or point actors at it with
//! `rollout.engine = "openai"`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use grlo_model::EngineLimits;

use crate::cli::roles::serve;
use crate::cli::security::SecurityArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The checkpoint: a directory (Hugging Face layout, with its tokenizer) or the object-store
    /// URL of a published weight version.
    #[arg(long, env = "GRLO_MODEL")]
    pub model: String,
    /// Address to serve HTTP on.
    #[arg(long, env = "GRLO_LISTEN", default_value = "127.0.0.1:30000")]
    pub listen: SocketAddr,
    /// The model name /v1/models lists (default: the checkpoint's directory name).
    #[arg(long, env = "GRLO_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "GRLO_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Where checkpoints given as URLs are downloaded.
    #[arg(long, env = "GRLO_CACHE_DIR", default_value = "serve-cache")]
    pub cache_dir: PathBuf,
    /// Most sequences decoded together (the engine's continuous batch).
    #[arg(long, env = "GRLO_MAX_BATCH_ROWS", default_value_t = 64)]
    pub max_batch_rows: usize,
    /// Most KV-cache positions held at once (rows x prompt + max_tokens); 0: no bound beyond
    /// --max-batch-rows.
    #[arg(long, env = "GRLO_MAX_CACHE_TOKENS", default_value_t = 0)]
    pub max_cache_tokens: usize,
    /// Most samples one request may ask for (n).
    #[arg(long, env = "GRLO_MAX_N", default_value_t = 16)]
    pub max_n: usize,
    /// Most new tokens one request may ask for (max_tokens).
    #[arg(long, env = "GRLO_MAX_TOKENS", default_value_t = 4096)]
    pub max_tokens: usize,
    /// Most requests in flight (running or waiting); more are refused with 429.
    #[arg(long, env = "GRLO_MAX_PENDING", default_value_t = 256)]
    pub max_pending: usize,
    #[command(flatten)]
    pub security: SecurityArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<String> {
    if args.security.tls_cert.is_some() || args.security.tls_key.is_some() {
        anyhow::bail!(
            "grlo serve speaks plain HTTP (as vLLM and SGLang do): terminate TLS in front of it \
             (an ingress or a proxy) and drop --tls-cert/--tls-key"
        );
    }
    for (name, value) in [
        ("--max-batch-rows", args.max_batch_rows),
        ("--max-n", args.max_n),
        ("--max-tokens", args.max_tokens),
        ("--max-pending", args.max_pending),
    ] {
        if value == 0 {
            anyhow::bail!("{name} must be at least 1");
        }
    }
    if args.max_n > args.max_batch_rows {
        anyhow::bail!(
            "--max-n {} exceeds --max-batch-rows {}: such a request could never run",
            args.max_n,
            args.max_batch_rows
        );
    }
    let access = args.security.server()?.access;
    let served_name = args.served_model_name.clone().unwrap_or_else(|| {
        args.model
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("model")
            .to_string()
    });
    let config = grlo_actor::serve::ServeConfig {
        model: args.model,
        served_name,
        cache_dir: args.cache_dir,
        device: args.device,
        limits: EngineLimits {
            max_batch_rows: args.max_batch_rows,
            max_cache_tokens: match args.max_cache_tokens {
                0 => usize::MAX,
                budget => budget,
            },
            ..EngineLimits::default()
        },
        max_n: args.max_n,
        max_tokens: args.max_tokens,
        max_pending: args.max_pending,
        access,
    };
    let listen = args.listen;
    serve(|shutdown| async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let metrics = grlo_actor::serve::ServeMetrics::default();
        grlo_actor::serve::serve(config, metrics, listener, shutdown).await
    })
}

//! Prometheus metrics every role serves over HTTP at `/metrics`. Names follow
//! `grlo_<component>_<name>_<unit|total>`; each role registers its own series on a
//! [`Metrics`] and the per-RPC request counts and latencies come from [`RpcMetrics`], which
//! the server's [`crate::security::Gate`] layer feeds.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry,
};
use tokio_util::sync::CancellationToken;

/// The Prometheus client the roles build their series with.
pub use prometheus;

/// Latency buckets for calls and steps, in seconds: 1 ms to 10 min.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// One role's registry: series are created through it with the role's name as the prefix.
#[derive(Clone)]
pub struct Metrics {
    component: &'static str,
    registry: Registry,
}

impl Metrics {
    /// `component`: coordinator, learner, actor or reward_server.
    pub fn new(component: &'static str) -> Self {
        Metrics {
            component,
            registry: Registry::new(),
        }
    }

    fn name(&self, name: &str) -> String {
        format!("grlo_{}_{name}", self.component)
    }

    /// Registers a series made elsewhere (its name must start with `grlo_<component>_`).
    pub fn adopt<C: prometheus::core::Collector + Clone + 'static>(&self, collector: C) -> C {
        self.register(collector)
    }

    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, collector: C) -> C {
        // Names are fixed in the code and each registered once per registry.
        self.registry
            .register(Box::new(collector.clone()))
            .expect("a metric name is registered once");
        collector
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(self.name(name), help).expect("a valid metric name"))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let opts = Opts::new(self.name(name), help);
        self.register(IntCounterVec::new(opts, labels).expect("a valid metric name"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.register(Gauge::new(self.name(name), help).expect("a valid metric name"))
    }

    pub fn int_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(self.name(name), help).expect("a valid metric name"))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let opts = Opts::new(self.name(name), help);
        self.register(GaugeVec::new(opts, labels).expect("a valid metric name"))
    }

    /// A histogram of seconds (1 ms to 10 min buckets).
    pub fn seconds(&self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(self.name(name), help).buckets(SECONDS.to_vec());
        self.register(Histogram::with_opts(opts).expect("a valid metric name"))
    }

    pub fn seconds_vec(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(self.name(name), help).buckets(SECONDS.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("a valid metric name"))
    }

    /// Seconds per named phase of some work: a histogram with a `phase` label.
    pub fn phases(&self, name: &str, help: &str) -> Phases {
        Phases(self.seconds_vec(name, help, &["phase"]))
    }

    /// A histogram of counts (batch sizes) with power-of-two buckets up to `max`.
    pub fn sizes(&self, name: &str, help: &str, max: f64) -> Histogram {
        let mut buckets = vec![1.0];
        while *buckets.last().unwrap_or(&max) < max {
            buckets.push(buckets.last().copied().unwrap_or(1.0) * 2.0);
        }
        let opts = HistogramOpts::new(self.name(name), help).buckets(buckets);
        self.register(Histogram::with_opts(opts).expect("a valid metric name"))
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The per-RPC series of this role's gRPC server.
    pub fn rpc(&self) -> RpcMetrics {
        RpcMetrics {
            requests: self.counter_vec(
                "rpc_requests_total",
                "gRPC calls answered, by method and status code",
                &["method", "code"],
            ),
            latency: self.seconds_vec(
                "rpc_duration_seconds",
                "Time to answer a gRPC call (to the response headers for streams)",
                &["method"],
            ),
        }
    }
}

/// Where the time of a repeated piece of work goes, phase by phase.
#[derive(Clone)]
pub struct Phases(HistogramVec);

impl Phases {
    pub fn record(&self, phase: &str, time: std::time::Duration) {
        self.0
            .with_label_values(&[phase])
            .observe(time.as_secs_f64());
    }
}

/// Calls and their latencies per gRPC method.
#[derive(Clone)]
pub struct RpcMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl RpcMetrics {
    pub fn start(&self, path: &str) -> RpcTimer {
        let method = path.rsplit('/').next().unwrap_or(path).to_string();
        RpcTimer {
            metrics: self.clone(),
            method,
            started: Instant::now(),
        }
    }
}

/// One call under way.
pub struct RpcTimer {
    metrics: RpcMetrics,
    method: String,
    started: Instant,
}

impl RpcTimer {
    pub fn finish(self, code: tonic::Code) {
        let code = format!("{code:?}");
        self.metrics
            .requests
            .with_label_values(&[self.method.as_str(), code.as_str()])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[self.method.as_str()])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Work done before each scrape (a role whose numbers live elsewhere copies them in).
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// `GET /metrics` for `metrics`, refreshed first by `refresh` when given.
pub fn router(metrics: Metrics, refresh: Option<Refresh>) -> axum::Router {
    let handler = move || {
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        async move {
            if let Some(refresh) = refresh {
                refresh().await;
            }
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                metrics.render(),
            )
        }
    };
    axum::Router::new().route("/metrics", axum::routing::get(handler))
}

/// Binds `address` and serves `router` over HTTP until `shutdown`, on a task of its own.
pub async fn serve_http(
    address: SocketAddr,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot serve HTTP on {address}: {e}"))
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "serving HTTP");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the HTTP server stopped");
        }
    }))
}

//! The job dashboard: a small web page (HTML, JS and CSS embedded in the binary, no external
//! URL, charts drawn on canvases by hand) and the JSON API it polls.
//!
//! The page and its assets hold no data, so they are served to anyone; the API answers only
//! with the admin token when one is set. The page takes the token from its URL fragment
//! (`#token=...`), which browsers never send to a server, so it never reaches a log.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State as Extract};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use grlo_proto::status::Failure;
use grlo_proto::v1;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::records::{JobRecord, StepRecord};
use crate::service::StateHandle;
use crate::state::Refusal;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// Only this origin's scripts, styles and API: the page loads nothing from elsewhere, and an
/// injected inline script would not run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

#[derive(Clone)]
struct Dashboard {
    state: StateHandle,
    token: Option<Arc<str>>,
}

/// The dashboard's routes: `/` and `/assets/*` (the page), `/api/jobs` and `/api/jobs/{id}`
/// (JSON, behind the admin token when `admin_token` is set). A plain router, so the caller
/// can merge more routes (a `/metrics` endpoint) into it.
pub fn router(state: StateHandle, admin_token: Option<String>) -> Router {
    let dashboard = Dashboard {
        state,
        token: admin_token.map(Arc::from),
    };
    let api = Router::new()
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/{*rest}", get(api_not_found))
        .route_layer(middleware::from_fn_with_state(
            dashboard.clone(),
            require_token,
        ))
        .with_state(dashboard);
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .route("/assets/charts.json", get(charts_json))
        .merge(api)
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The chart list the page draws from, the one `grlo ctl job plot` reads.
async fn charts_json() -> Response {
    asset("application/json", crate::charts::CHARTS_JSON)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// A JSON error body, `{"error": message}`, with no-store like every API answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (status, Json(json!({ "error": message.into() }))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn data(value: Value) -> Response {
    let mut response = Json(value).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A state refusal as an HTTP answer; internal details go to the log only.
fn refusal((failure, message): Refusal) -> Response {
    match failure {
        Failure::NotFound => error(StatusCode::NOT_FOUND, message),
        Failure::InvalidArgument => error(StatusCode::BAD_REQUEST, message),
        Failure::FailedPrecondition => error(StatusCode::CONFLICT, message),
        Failure::Busy | Failure::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, message),
        Failure::Internal => {
            tracing::error!(%message, "dashboard request failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (see the coordinator's log)",
            )
        }
    }
}

/// Lets a request through when no token is set or it carries `Authorization: Bearer TOKEN`.
async fn require_token(
    Extract(dashboard): Extract<Dashboard>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &dashboard.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same_secret(given.as_bytes(), expected.as_bytes())) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "the dashboard API needs the admin token: send Authorization: Bearer TOKEN \
                 (the page takes it from its address as /#token=TOKEN)",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Compares a secret in time that depends only on its length, so response times do not tell
/// an attacker how many leading bytes of a guess were right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn job_json(job: &JobRecord, budget: Option<&v1::BudgetUsage>) -> Value {
    json!({
        "id": job.id,
        "name": job.name,
        "status": job.status.name(),
        "step": job.step,
        "total_steps": job.total_steps,
        "weight_version": job.weight_version,
        "message": job.message,
        "created_ms": job.created_ms,
        "updated_ms": job.updated_ms,
        "budget": budget.map(|b| json!({
            "gpu_hours_limit": b.gpu_hours_budget,
            "gpu_hours_used": b.gpu_hours_used,
            "cpu_hours_limit": b.cpu_hours_budget,
            "cpu_hours_used": b.cpu_hours_used,
            "cost": b.cost,
            "forecast_exhausted_ms": b.forecast_exhausted_unix_ms,
        })),
    })
}

fn step_json(step: &StepRecord) -> Value {
    json!({
        "step": step.step,
        "time_ms": step.time_ms,
        // The learner's line, as an object (null if it was not JSON).
        "metrics": serde_json::from_str::<Value>(&step.metrics_json).unwrap_or(Value::Null),
        "gpu_seconds_used": step.gpu_seconds_used,
        "gpu_seconds_limit": step.gpu_seconds_limit,
        "cpu_seconds_used": step.cpu_seconds_used,
        "cpu_seconds_limit": step.cpu_seconds_limit,
    })
}

/// `GET /api/jobs`: `{"jobs": [job, ...]}`, oldest first.
async fn list_jobs(Extract(dashboard): Extract<Dashboard>) -> Response {
    let jobs = dashboard
        .state
        .call(|s| {
            let mut jobs = s.jobs();
            jobs.sort_by_key(|j| (j.created_ms, j.id.clone()));
            jobs.into_iter()
                .map(|job| {
                    let budget = s.budget(&job.id).ok();
                    job_json(&job, budget.as_ref())
                })
                .collect::<Vec<_>>()
        })
        .await;
    data(json!({ "jobs": jobs }))
}

#[derive(Debug, Deserialize)]
struct StepsQuery {
    /// Only the steps after this one (a poller's newest); 0 or absent: every step.
    #[serde(default)]
    after: u64,
}

/// `GET /api/jobs/{id}?after=N`: `{"job": job, "steps": [step, ...]}` in step order.
async fn get_job(
    Extract(dashboard): Extract<Dashboard>,
    Path(id): Path<String>,
    query: Result<Query<StepsQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the query of /api/jobs/{id} may only hold after=STEP (a whole number)"),
        );
    };
    let answer = dashboard
        .state
        .call(move |s| {
            let job = s.job(&id)?;
            let budget = s.budget(&id).ok();
            let steps = s.step_history(&id, query.after)?;
            Ok::<_, Refusal>(json!({
                "job": job_json(&job, budget.as_ref()),
                "steps": steps.iter().map(step_json).collect::<Vec<_>>(),
            }))
        })
        .await;
    match answer {
        Ok(value) => data(value),
        Err(refused) => refusal(refused),
    }
}

async fn api_not_found(request: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no API route {} (there are /api/jobs and /api/jobs/ID)",
            request.uri().path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{Settings, State};

    #[test]
    fn secrets_compare_by_every_byte() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cres", b"s3cret"));
        assert!(!same_secret(b"t3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
            ("charts.json", crate::charts::CHARTS_JSON),
        ] {
            for external in ["http:", "https:", "//cdn", "@import"] {
                assert!(!text.contains(external), "{name} mentions {external}");
            }
        }
        assert!(INDEX_HTML.contains("assets/app.js") && INDEX_HTML.contains("assets/app.css"));
    }

    /// One HTTP/1.1 GET over a fresh connection: (status, body).
    async fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn the_api_needs_the_token_and_names_unknown_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path(), Settings::default()).unwrap();
        let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/tiny.toml");
        let spec = grlo_learner::TrainConfig::from_file(&spec).unwrap();
        let job = state
            .submit_job(&toml::to_string(&spec).unwrap(), 1)
            .unwrap();
        let app = router(StateHandle::spawn(state), Some("s3cret".into()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let (status, page) = get(port, "/", None).await;
        assert_eq!(status, 200);
        assert!(page.contains("id=\"charts\""), "{page}");
        assert_eq!(get(port, "/assets/app.js", None).await.0, 200);
        let (status, charts) = get(port, "/assets/charts.json", None).await;
        assert_eq!((status, charts.as_str()), (200, crate::charts::CHARTS_JSON));

        let (status, body) = get(port, "/api/jobs", None).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("admin token"), "{body}");
        assert_eq!(get(port, "/api/jobs", Some("s3cres")).await.0, 401);
        assert!(!body.contains("s3cret"));

        let (status, body) = get(port, "/api/jobs", Some("s3cret")).await;
        assert_eq!(status, 200, "{body}");
        let jobs: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(jobs["jobs"][0]["id"], job.id.as_str(), "{jobs}");
        assert_eq!(jobs["jobs"][0]["status"], "queued", "{jobs}");

        let path = format!("/api/jobs/{}?after=0", job.id);
        let (status, body) = get(port, &path, Some("s3cret")).await;
        assert_eq!(status, 200, "{body}");
        let one: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(one["job"]["id"], job.id.as_str(), "{one}");
        assert_eq!(one["steps"], json!([]), "{one}");

        let (status, body) = get(port, "/api/jobs/job-404", Some("s3cret")).await;
        assert_eq!(status, 404, "{body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("job-404"),
            "{error}"
        );
        let (status, body) = get(
            port,
            &format!("/api/jobs/{}?after=x", job.id),
            Some("s3cret"),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(get(port, "/api/nothing", Some("s3cret")).await.0, 404);
    }
}

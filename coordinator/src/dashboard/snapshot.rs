//! Replies shared among the pages that ask the same thing within one coalescing interval: ten browsers watching
//! a 3,000-job experiment cost one read of its jobs, series and curves per interval, not ten.
//!
//! What keeps a shared reply from hiding a change: a reply about one experiment is reused only if it was read
//! after the last event that announced a change of that experiment (the hub marks each announcement here before
//! sending it). A page reads only after an event, so it never gets a reply older than what it was told; a change
//! not announced yet will be, and the page reads again then. Replies are never shared across tokens (what one
//! caller may see is never served to another), the token is checked again each time, and these are never shared:
//! the event stream, re-hashing (`/verify`), `?since=` reads (the page's own change tracking), and the tables and
//! selections, which the page reads only when it has seen a job end (a reply read just before that end would be
//! kept as current).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Dashboard;

/// The largest reply kept for sharing (a 10,000-job experiment's list is about 4 MB).
const MAX_SHARED_BYTES: usize = 64 << 20;

/// When a reply was started, and the reply.
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Shared)>>>;

/// A kept reply: its content type and body.
pub type Shared = (HeaderValue, Bytes);

/// The latest reply to each request asked recently, and when each experiment's changes were last announced.
pub struct Snapshots {
    max_age: Duration,
    slots: Mutex<HashMap<String, Slot>>,
    announced: Mutex<Announced>,
}

/// When changes were last announced: per experiment, and for all at once (events were missed).
#[derive(Default)]
struct Announced {
    experiments: HashMap<String, Instant>,
    all: Option<Instant>,
}

impl Snapshots {
    pub fn new(max_age: Duration) -> Snapshots {
        Snapshots {
            max_age,
            slots: Mutex::default(),
            announced: Mutex::default(),
        }
    }

    /// Marks `experiments` as changed now: replies about them read before now are not shared any more.
    pub fn announce<'a>(&self, experiments: impl IntoIterator<Item = &'a String>) {
        let now = Instant::now();
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        // An announcement older than max_age outdates nothing that is still kept.
        announced
            .experiments
            .retain(|_, at| at.elapsed() < self.max_age);
        for id in experiments {
            announced.experiments.insert(id.clone(), now);
        }
    }

    /// Marks every experiment as changed now (the hub missed events).
    pub fn announce_all(&self) {
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        announced.all = Some(Instant::now());
    }

    /// Whether a reply started at `started` about `experiment` may still be shared.
    fn current(&self, started: Instant, experiment: Option<&str>) -> bool {
        if started.elapsed() >= self.max_age {
            return false;
        }
        let announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        let after = |at: Option<&Instant>| at.is_none_or(|&at| started > at);
        after(announced.all.as_ref())
            && after(experiment.and_then(|id| announced.experiments.get(id)))
    }

    /// The reply kept under `key` if it is current (read less than `max_age` ago and, for a reply about
    /// `experiment`, after its last announced change), else `build`'s (kept for the next caller when it is `Ok`).
    /// Callers asking while it is built wait for it instead of building their own.
    pub async fn get_or_build<E>(
        &self,
        key: &str,
        experiment: Option<&str>,
        build: impl AsyncFnOnce() -> Result<Shared, E>,
    ) -> Result<Shared, E> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            // Replies nobody asked for within max_age are dropped (their memory with them).
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(held) => held
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() < self.max_age),
                Err(_) => true,
            });
            slots.entry(key.to_string()).or_default().clone()
        };
        let mut held = slot.lock().await;
        if let Some((started, body)) = held.as_ref()
            && self.current(*started, experiment)
        {
            return Ok(body.clone());
        }
        let started = Instant::now();
        let body = build().await?;
        *held = Some((started, body.clone()));
        Ok(body)
    }
}

/// Whether a request may be answered from a shared reply.
fn shareable(request: &Request) -> bool {
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    request.method() == axum::http::Method::GET
        && path.starts_with("/api/")
        && !["/events", "/verify", "/tables", "/selections"]
            .iter()
            .any(|never| path.ends_with(never))
        && !query.split('&').any(|pair| pair.starts_with("since="))
}

/// The experiment a request is about (`/api/experiments/{id}` and below).
fn experiment_of(path: &str) -> Option<&str> {
    path.strip_prefix("/api/experiments/")?.split('/').next()
}

/// Middleware: answers a shareable request of a valid token from the reply kept for that token and request, or
/// runs the handler and keeps its successful reply.
pub async fn share_replies(
    State(d): State<Arc<Dashboard>>,
    request: Request,
    next: Next,
) -> Response {
    if !shareable(&request) || super::api::caller(&d, request.headers()).is_err() {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let key = format!("{token}\n{}", request.uri());
    let experiment = experiment_of(request.uri().path()).map(str::to_string);
    let kept = d
        .snapshots
        .get_or_build(&key, experiment.as_deref(), async || {
            let reply = next.run(request).await;
            if reply.status() != StatusCode::OK {
                return Err(reply);
            }
            let content_type = reply
                .headers()
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(HeaderValue::from_static("application/json"));
            match axum::body::to_bytes(reply.into_body(), MAX_SHARED_BYTES).await {
                Ok(body) => Ok((content_type, body)),
                Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
            }
        })
        .await;
    match kept {
        Ok((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], Body::from(body)).into_response()
        }
        Err(reply) => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reply_is_shared_until_it_is_older_than_max_age() {
        let snapshots = Snapshots::new(Duration::from_millis(200));
        let builds = std::cell::Cell::new(0);
        let body = |text: &'static str| Bytes::from_static(text.as_bytes());
        let get = async |s: &Snapshots, key: &str, text: &'static str| {
            s.get_or_build(key, key.strip_prefix("/api/experiments/"), async || {
                builds.set(builds.get() + 1);
                Ok::<_, ()>((HeaderValue::from_static("text/plain"), body(text)))
            })
            .await
            .map(|(_, b)| b)
        };
        assert_eq!(get(&snapshots, "e1", "one").await, Ok(body("one")));
        assert_eq!(get(&snapshots, "e1", "two").await, Ok(body("one")));
        assert_eq!(get(&snapshots, "e2", "other").await, Ok(body("other")));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(get(&snapshots, "e1", "three").await, Ok(body("three")));
        assert_eq!(builds.get(), 3);
        // A failed build is not kept.
        let snapshots = Snapshots::new(Duration::from_secs(60));
        let refused = snapshots
            .get_or_build("e1", None, async || Err::<Shared, _>("refused"))
            .await;
        assert_eq!(refused, Err("refused"));
        assert_eq!(get(&snapshots, "e1", "four").await, Ok(body("four")));
    }

    #[tokio::test]
    async fn an_announced_change_outdates_the_replies_about_that_experiment_only() {
        let snapshots = Snapshots::new(Duration::from_secs(60));
        let get = async |key: &'static str, experiment: &'static str, text: &'static str| {
            snapshots
                .get_or_build(key, Some(experiment), async || {
                    Ok::<_, ()>((
                        HeaderValue::from_static("text/plain"),
                        Bytes::from_static(text.as_bytes()),
                    ))
                })
                .await
                .map(|(_, b)| b)
        };
        assert_eq!(get("a/curves", "a", "a1").await, Ok(Bytes::from("a1")));
        assert_eq!(get("b/curves", "b", "b1").await, Ok(Bytes::from("b1")));
        snapshots.announce(&["a".to_string()]);
        assert_eq!(get("a/curves", "a", "a2").await, Ok(Bytes::from("a2")));
        assert_eq!(get("a/curves", "a", "a3").await, Ok(Bytes::from("a2")));
        assert_eq!(get("b/curves", "b", "b2").await, Ok(Bytes::from("b1")));
        snapshots.announce_all();
        assert_eq!(get("b/curves", "b", "b3").await, Ok(Bytes::from("b3")));
    }

    #[test]
    fn the_event_stream_tables_since_reads_and_rehashing_are_never_shared() {
        let request = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        for uri in [
            "/api/experiments/e1/events",
            "/api/experiments/e1/verify",
            "/api/experiments/e1/tables",
            "/api/experiments/e1/selections",
            "/api/experiments/e1?since=3",
            "/",
        ] {
            assert!(!shareable(&request(uri)), "{uri}");
        }
        for uri in [
            "/api/experiments",
            "/api/experiments/e1",
            "/api/experiments/e1/series",
            "/api/experiments/e1/curves?series=train_loss&buckets=600",
        ] {
            assert!(shareable(&request(uri)), "{uri}");
        }
        assert_eq!(experiment_of("/api/experiments/e1/curves"), Some("e1"));
        assert_eq!(experiment_of("/api/experiments/e1"), Some("e1"));
        assert_eq!(experiment_of("/api/workers"), None);
    }
}

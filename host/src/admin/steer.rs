//! `POST /pools/{pool}/backends/{backend}/drain | enable | disable` and
//! `PUT /pools/{pool}/backends/{backend}/weight` (body: the weight, as a
//! number or `{"weight": N}`): an operator steering one backend. The
//! state is kept across reloads until changed (see `pool::steering`).

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::{Admin, Reply, json, not_allowed, text};
use crate::pool::Action;

/// A weight fits in this many bytes of body.
const MAX_BODY: usize = 256;

/// Whether `path` is a steering call; the reply if it is.
pub async fn route(admin: &Admin, req: Request<Incoming>, path: &str) -> Option<Reply> {
    let rest = path.strip_prefix("/pools/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [pool, "backends", backend, verb] = parts.as_slice() else {
        return None;
    };
    let (pool, backend, verb) = (pool.to_string(), backend.to_string(), verb.to_string());
    let action = match (verb.as_str(), req.method()) {
        ("drain", &Method::POST) => Action::Drain,
        ("enable", &Method::POST) => Action::Enable,
        ("disable", &Method::POST) => Action::Disable,
        ("weight", &Method::PUT) => match weight(req).await {
            Ok(w) => Action::Weight(w),
            Err(why) => return Some(text(StatusCode::BAD_REQUEST, why)),
        },
        ("drain" | "enable" | "disable", _) => return Some(not_allowed("POST")),
        ("weight", _) => return Some(not_allowed("PUT")),
        _ => return None,
    };
    let generation = admin.server.current.load_full();
    let Some(p) = generation.pool(&pool) else {
        return Some(text(
            StatusCode::NOT_FOUND,
            format!("no pool named {pool:?}\n"),
        ));
    };
    let Some(steered) = p.steer(&backend, action) else {
        return Some(text(
            StatusCode::NOT_FOUND,
            format!("pool {pool:?} has no backend named {backend:?}\n"),
        ));
    };
    Some(json(
        StatusCode::OK,
        &serde_json::json!({
            "pool": pool,
            "backend": backend,
            "admin_state": steered.state,
            "weight": steered.weight,
        }),
    ))
}

async fn weight(req: Request<Incoming>) -> Result<u32, String> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("cannot read the body: {e}\n"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    let parsed = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Number(n)) => n.as_u64(),
        Ok(serde_json::Value::Object(o)) => o.get("weight").and_then(|w| w.as_u64()),
        _ => None,
    };
    parsed
        .and_then(|w| u32::try_from(w).ok())
        .filter(|&w| w <= 1_000_000)
        .ok_or_else(|| {
            format!(
                "expected a weight from 0 to 1000000, as 5 or {{\"weight\": 5}}; got {text:?}\n"
            )
        })
}

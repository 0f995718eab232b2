//! `gale status`: the admin API's `/status` as tables in a terminal.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long the whole call may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// GET `/status` from the admin listener at `admin`.
pub async fn fetch(admin: SocketAddr, token: Option<&str>) -> anyhow::Result<Value> {
    let call = async {
        let stream = tokio::net::TcpStream::connect(admin)
            .await
            .with_context(|| format!("cannot reach the admin API at {admin}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get("/status").header("host", admin.to_string());
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let reply = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?;
        let status = reply.status();
        // However large the answer, `gale status` holds at most 16 MiB.
        let body = http_body_util::Limited::new(reply.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the admin API's answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            bail!(
                "{admin} answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        serde_json::from_slice(&body).context("the admin API answered something that is not JSON")
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .with_context(|| format!("no answer from {admin} within {TIMEOUT:?}"))?
}

/// The status document as text tables.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "gale {}, generation {}, up since {}\n",
        s(&status["version"]),
        s(&status["generation"]),
        s(&status["started_at"])
    );
    let mut rows = vec![row(&["LISTENER", "PROTOCOL", "ADDRESS", "POOL"])];
    for l in status["listeners"].as_array().into_iter().flatten() {
        rows.push(row(&[
            &s(&l["name"]),
            &s(&l["protocol"]),
            &s(&l["address"]),
            &s(&l["pool"]),
        ]));
    }
    table(&mut out, &rows);

    let mut rows = vec![row(&[
        "POOL",
        "BACKEND",
        "ADDRESS",
        "HEALTH",
        "ADMIN",
        "WEIGHT",
        "ACTIVE",
        "SESSIONS",
        "FAILURES",
        "LAST RESULT",
    ])];
    for pool in status["pools"].as_array().into_iter().flatten() {
        for b in pool["backends"].as_array().into_iter().flatten() {
            let out = &b["out"];
            let health = if b["healthy"] == Value::Bool(true) {
                "up".to_string()
            } else if out["by"] == "traffic" {
                match out["ejected_ms_left"].as_u64().unwrap_or(0) {
                    0 => "EJECTED".to_string(),
                    ms => format!("EJECTED {}s", ms.div_ceil(1000)),
                }
            } else {
                "DOWN".to_string()
            };
            let weight = if b["effective_weight"] == b["weight"] {
                s(&b["weight"])
            } else {
                format!("{}/{}", s(&b["effective_weight"]), s(&b["weight"]))
            };
            let last = &b["last_result"];
            let result = if last.is_null() {
                "-".to_string()
            } else {
                let ms = last["latency_us"].as_u64().unwrap_or(0) as f64 / 1000.0;
                let detail = if last["ok"] == Value::Bool(true) {
                    "ok".to_string()
                } else {
                    s(&last["detail"])
                };
                format!("{detail} in {ms:.1}ms ({})", s(&last["source"]))
            };
            rows.push(row(&[
                &s(&pool["name"]),
                &s(&b["name"]),
                &s(&b["address"]),
                &health,
                &s(&b["admin_state"]),
                &weight,
                &s(&b["active_sessions"]),
                &s(&b["sessions_total"]),
                &failures(&b["failures"]),
                &result,
            ]));
        }
    }
    out.push('\n');
    table(&mut out, &rows);

    let mut rows = vec![row(&["POOL", "HOOK", "PLUGIN", "CONTRACT", "SHA-256"])];
    for p in status["plugins"].as_array().into_iter().flatten() {
        let sha = s(&p["sha256"]);
        rows.push(row(&[
            &s(&p["pool"]),
            &s(&p["hook"]),
            &s(&p["source"]),
            &s(&p["contract"]),
            sha.get(..12).unwrap_or(&sha),
        ]));
    }
    out.push('\n');
    table(&mut out, &rows);

    let dns = &status["dns"];
    if !dns.is_null() {
        let records = |v: &Value| {
            let list: Vec<String> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| format!("{} w{}", s(&r["value"]), s(&r["weight"])))
                .collect();
            if list.is_empty() {
                "-".to_string()
            } else {
                list.join(", ")
            }
        };
        let _ = writeln!(
            out,
            "\nDNS {} ({}, pool {}): wanted {}; published {}",
            s(&dns["name"]),
            s(&dns["provider"]),
            s(&dns["pool"]),
            records(&dns["wanted"]),
            records(&dns["published"])
        );
        for key in ["held_back", "last_error"] {
            if !dns[key].is_null() {
                let _ = writeln!(out, "  {}: {}", key.replace('_', " "), s(&dns[key]));
            }
        }
        let change = &dns["change"];
        if !change.is_null() {
            let _ = writeln!(
                out,
                "  change {}: {} ({})",
                s(&change["id"]),
                s(&change["status"]),
                s(&change["at"])
            );
        }
        for why in dns["provider_held"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  provider waits: {}", s(why));
        }
    }
    let last = &status["reloads"]["last_reload"];
    if !last.is_null() {
        let outcome = if last["ok"] == Value::Bool(true) {
            format!("ok, generation {}", s(&last["generation"]))
        } else {
            format!("failed: {}", s(&last["error"]))
        };
        let _ = writeln!(
            out,
            "\nlast reload: {} ({}) {}",
            s(&last["at"]),
            s(&last["trigger"]),
            outcome
        );
    }
    out
}

/// Failed attempts in total, with the reasons: `3 (connect 2, greeting 1)`.
fn failures(by_reason: &Value) -> String {
    let Some(map) = by_reason.as_object().filter(|m| !m.is_empty()) else {
        return "0".to_string();
    };
    let total: u64 = map.values().filter_map(Value::as_u64).sum();
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Columns padded to their widest cell.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

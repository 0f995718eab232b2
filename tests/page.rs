//! The live status page at `GET /` of the admin listener, in headless
//! Chromium driven over WebDriver: the token form, every backend of the
//! config on the page, a backend killed during the test turning down
//! without a reload, decisions per second under load, no external asset,
//! and a screenshot written as an artifact.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fantoccini::Locator;
use support::browser::Browser;
use support::client::Load;
use support::conf::Conf;
use support::process::{Gale, SmtpSink, curl, free_port};

const TOKEN: &str = "page-test-token";

fn config(backends: &[(&str, SocketAddr)]) -> String {
    let mut conf = Conf::new()
        .admin()
        .set("admin.token", TOKEN)
        .smtp("in", "mta")
        .set("pools.mta.probe.interval", "200ms");
    for &(name, address) in backends {
        conf = conf.backend("mta", name, address);
    }
    conf.to_string()
}

/// Where the screenshot goes: `target/artifacts/`.
fn artifact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_a_killed_backend_go_down_without_a_reload() {
    let a = SmtpSink::start(free_port());
    let b = SmtpSink::start(free_port());
    let c = SmtpSink::start(free_port());
    let gale = Gale::start(&config(&[
        ("a", a.address),
        ("b", b.address),
        ("c", c.address),
    ]));
    let admin = gale.admin_address();
    let page = format!("http://{admin}/");

    // Without the token the page is a 401 (a form asking for it), and
    // holds none of the status.
    let (code, body) = curl(&[&page]);
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains(&a.address.to_string()), "{body}");

    let browser = Browser::start(1400, 1000).await;
    let client = &browser.client;
    client.goto(&page).await.unwrap();
    // A person types the token into the form.
    let field = client
        .wait()
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    field.send_keys(TOKEN).await.unwrap();
    client
        .find(Locator::Css("#login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Every backend of the config is on the page, up.
    for name in ["a", "b", "c"] {
        let row = format!("tr.backend[data-pool='mta'][data-backend='{name}']");
        browser
            .wait_for(
                Duration::from_secs(15),
                &format!("backend {name} up"),
                async || browser.attribute(&row, "data-state").await.as_deref() == Some("up"),
            )
            .await;
    }
    let rows = client.find_all(Locator::Css("tr.backend")).await.unwrap();
    assert_eq!(rows.len(), 3);
    // A mark that a reload of the page would wipe.
    client
        .execute("window.galeTestMark = 'same page'; return null;", vec![])
        .await
        .unwrap();
    let refreshes_before: u64 = browser
        .attribute("body", "data-refreshes")
        .await
        .unwrap()
        .parse()
        .unwrap();

    // Traffic, then b dies.
    let load = Load::start(gale.address("in"), 1);
    drop(b);
    let took = browser
        .wait_for(
            Duration::from_secs(10),
            "backend b down on the page",
            async || {
                browser
                    .attribute("tr.backend[data-backend='b']", "data-state")
                    .await
                    .as_deref()
                    == Some("down")
            },
        )
        .await;
    println!("b turned down on the page {took:?} after the kill");
    // Decisions per second while the load runs.
    browser
        .wait_for(
            Duration::from_secs(10),
            "decisions per second above 0",
            async || {
                browser
                    .attribute("section[data-pool='mta'] [data-rate]", "data-rate")
                    .await
                    .and_then(|r| r.parse::<f64>().ok())
                    .is_some_and(|r| r > 0.0)
            },
        )
        .await;
    let (sent, _) = load.stop();
    assert!(sent > 0);

    // The same page all along: no navigation, and it kept refreshing.
    let mark = client
        .execute("return window.galeTestMark;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, serde_json::json!("same page"));
    let refreshes_after: u64 = browser
        .attribute("body", "data-refreshes")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        refreshes_after > refreshes_before,
        "{refreshes_before} -> {refreshes_after}"
    );
    for (name, state) in [("a", "up"), ("b", "down"), ("c", "up")] {
        let css = format!("tr.backend[data-backend='{name}']");
        assert_eq!(
            browser.attribute(&css, "data-state").await.as_deref(),
            Some(state),
            "{name}"
        );
    }
    // b's health timeline ends in failed results.
    let fails = client
        .find_all(Locator::Css(
            "tr.backend[data-backend='b'] .timeline i.fail",
        ))
        .await
        .unwrap();
    assert!(!fails.is_empty());

    // Nothing was loaded from anywhere but the admin listener.
    let origin = format!("http://{admin}");
    let loaded = client
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name);",
            vec![],
        )
        .await
        .unwrap();
    let loaded = loaded.as_array().unwrap();
    assert!(!loaded.is_empty());
    for url in loaded {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(&format!("{origin}/status")), "{url}");
    }

    let png = client.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = artifact("status-page.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {} ({} bytes)", path.display(), png.len());
    browser.close().await;
}

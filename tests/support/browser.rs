//! Headless Chromium driven over WebDriver: Debian's `chromium` and
//! `chromium-driver`, with fantoccini as the client.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use super::process::{free_port, require, wait_listening};

/// A chromedriver and the Chromium it starts, in a process group of their
/// own so that dropping it ends both, even when a test fails midway.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and open a headless session with a window of
    /// `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = require("chromium");
        let port = free_port();
        let driver = Command::new(require("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver");
        wait_listening(format!("127.0.0.1:{port}").parse().unwrap(), "chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Tests run as root in CI, where Chromium's sandbox
                    // cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session with headless Chromium");
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// The value of `attribute` on the element `css` selects, if there is
    /// one. The page redraws every second, so elements are found anew on
    /// each call rather than held.
    pub async fn attribute(&self, css: &str, attribute: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.attr(attribute).await.ok().flatten()
    }

    /// Poll until `check` holds, for at most `limit`; how long it took.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl AsyncFnMut() -> bool,
    ) -> Duration {
        let started = Instant::now();
        while !check().await {
            assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    /// End the WebDriver session (Chromium exits); dropping the browser
    /// then ends chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this child leads; it
        // touches no memory of ours.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

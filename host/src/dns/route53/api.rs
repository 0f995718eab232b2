//! The Route 53 API as gale uses it: read the name's weighted sets, send
//! one batch of changes, ask a change's status, find or create this
//! instance's health check. Each call is bounded by the config's
//! `timeout`, and a throttled call (`Throttling`,
//! `PriorRequestNotComplete`) is retried here with a backoff, so what is
//! counted and logged is what gale saw.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_route53::Client;
use aws_sdk_route53::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_route53::types::{
    Change as SdkChange, ChangeAction, ChangeBatch, ChangeStatus, HealthCheckConfig,
    HealthCheckType, ResourceRecord, ResourceRecordSet, RrType,
};
use aws_smithy_http_client::tls;

use super::changes::{Change, Weighted};
use crate::config::route53::{HealthCheck, Route53Config};
use crate::plugin::types::RecordType;

/// Pages of one name's sets read at most (Route 53 gives up to 300 sets
/// a page): a name with more, or an endpoint that pages forever, is an
/// error, not memory spent.
const MAX_PAGES: usize = 10;

/// Tries of one throttled call, and the first wait between them.
const THROTTLE_TRIES: u32 = 6;
const THROTTLE_FIRST_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Still throttled after every try.
    #[error("throttled: {0}")]
    Throttled(String),
    /// No answer, a network error, a 5xx: worth trying again soon.
    #[error("{0}")]
    Unreachable(String),
    /// Route 53 said no: credentials, permissions, no such zone.
    #[error("{0}")]
    Refused(String),
    /// `InvalidChangeBatch`: the zone changed since it was read (a DELETE
    /// no longer matches), or the batch is not valid there.
    #[error("{0}")]
    Conflict(String),
}

impl ApiError {
    /// Its `result` in `gale_dns_updates_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Refused(_) => "refused",
            ApiError::Throttled(_) | ApiError::Unreachable(_) | ApiError::Conflict(_) => "failed",
        }
    }
}

/// The name's sets in the zone, as read.
#[derive(Debug, Default)]
pub struct Read {
    /// gale's weighted sets, by planned set-id.
    pub owned: Vec<Weighted>,
    /// The same, exactly as Route 53 returned them (what a DELETE sends).
    pub raw: Vec<ResourceRecordSet>,
    /// Everybody else's A and AAAA sets under the name, by their whole
    /// set identifier ("-" for a set without one).
    pub foreign: Vec<Weighted>,
}

pub struct Api {
    client: Client,
    config: Route53Config,
    /// Lower case, with the final dot.
    name: String,
}

impl Api {
    /// A client with the standard credential chain (environment, profile,
    /// web identity, instance metadata), resolved at the first call.
    pub async fn new(config: &Route53Config, name: &str) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let region = match &config.region {
            Some(r) => RegionProviderChain::first_try(aws_config::Region::new(r.clone())),
            None => RegionProviderChain::default_provider(),
        }
        .or_else("us-east-1");
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(region)
            // Throttling is retried by `throttled` below, where it is
            // counted; anything else is the provider loop's to retry.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.timeout.min(Duration::from_secs(3)))
                    .operation_attempt_timeout(config.timeout)
                    .build(),
            );
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        Api {
            client: Client::new(&sdk),
            config: config.clone(),
            name: name.to_ascii_lowercase(),
        }
    }

    /// The A and AAAA sets of the name.
    pub async fn read(&self, throttles: &(dyn Fn() + Sync)) -> Result<Read, ApiError> {
        let mut read = Read::default();
        let mut start: Option<(String, RrType, Option<String>)> =
            Some((self.name.clone(), RrType::A, None));
        let mut pages = 0;
        while let Some((name, rtype, identifier)) = start.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(ApiError::Refused(format!(
                    "{} has more than {MAX_PAGES} pages of record sets",
                    self.name
                )));
            }
            let page = throttled(throttles, || {
                self.client
                    .list_resource_record_sets()
                    .hosted_zone_id(&self.config.hosted_zone_id)
                    .start_record_name(&name)
                    .start_record_type(rtype.clone())
                    .set_start_record_identifier(identifier.clone())
                    .send()
            })
            .await?;
            let mut past = false;
            for set in page.resource_record_sets() {
                if !set.name().eq_ignore_ascii_case(&self.name) {
                    past = true;
                    break;
                }
                self.sort(set, &mut read);
            }
            if page.is_truncated()
                && !past
                && let (Some(next), Some(next_type)) =
                    (page.next_record_name(), page.next_record_type())
            {
                let next = (
                    next.to_string(),
                    next_type.clone(),
                    page.next_record_identifier().map(str::to_string),
                );
                if next == (name, rtype, identifier) {
                    return Err(ApiError::Refused(
                        "the endpoint pages back to where it started".into(),
                    ));
                }
                start = Some(next);
            }
        }
        Ok(read)
    }

    fn sort(&self, set: &ResourceRecordSet, read: &mut Read) {
        let rtype = match set.r#type() {
            RrType::A => RecordType::A,
            RrType::Aaaa => RecordType::Aaaa,
            _ => return,
        };
        let mut values: Vec<String> = set
            .resource_records()
            .iter()
            .map(|r| super::changes::canonical(r.value()))
            .collect();
        values.sort();
        let ttl = set.ttl().unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32;
        let weight = set.weight().unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32;
        let health_check = set.health_check_id().map(str::to_string);
        let owned = set
            .set_identifier()
            .and_then(|id| self.config.owned(id))
            .filter(|_| set.weight().is_some());
        let Some(set_id) = owned else {
            read.foreign.push(Weighted {
                set_id: set.set_identifier().unwrap_or("-").to_string(),
                rtype,
                values,
                ttl,
                weight,
                health_check,
            });
            return;
        };
        read.owned.push(Weighted {
            set_id: set_id.to_string(),
            rtype,
            values,
            ttl,
            weight,
            health_check,
        });
        read.raw.push(set.clone());
    }

    /// Send `changes` as one batch; the change's id and status.
    pub async fn submit(
        &self,
        changes: &[Change],
        read: &Read,
        throttles: &(dyn Fn() + Sync),
    ) -> Result<(String, String), ApiError> {
        let mut batch = ChangeBatch::builder().comment("gale");
        for change in changes {
            let sent = match change {
                Change::Upsert(w) => vec![(ChangeAction::Upsert, self.record_set(w)?)],
                Change::Delete(i) => vec![(ChangeAction::Delete, read.raw[*i].clone())],
                Change::Keep(i) => vec![(ChangeAction::Upsert, read.raw[*i].clone())],
            };
            for (action, set) in sent {
                batch = batch.changes(
                    SdkChange::builder()
                        .action(action)
                        .resource_record_set(set)
                        .build()
                        .map_err(|e| ApiError::Refused(e.to_string()))?,
                );
            }
        }
        let batch = batch
            .build()
            .map_err(|e| ApiError::Refused(e.to_string()))?;
        let out = throttled(throttles, || {
            self.client
                .change_resource_record_sets()
                .hosted_zone_id(&self.config.hosted_zone_id)
                .change_batch(batch.clone())
                .send()
        })
        .await?;
        let info = out.change_info();
        Ok((info.map_or("", |i| i.id()).to_string(), status(info)))
    }

    fn record_set(&self, w: &Weighted) -> Result<ResourceRecordSet, ApiError> {
        let mut set = ResourceRecordSet::builder()
            .name(&self.name)
            .r#type(match w.rtype {
                RecordType::Aaaa => RrType::Aaaa,
                _ => RrType::A,
            })
            .set_identifier(self.config.set_identifier(&w.set_id))
            .weight(i64::from(w.weight))
            .ttl(i64::from(w.ttl))
            .set_health_check_id(w.health_check.clone());
        for value in &w.values {
            set = set.resource_records(
                ResourceRecord::builder()
                    .value(value)
                    .build()
                    .map_err(|e| ApiError::Refused(e.to_string()))?,
            );
        }
        set.build().map_err(|e| ApiError::Refused(e.to_string()))
    }

    /// A change's status: "PENDING" or "INSYNC".
    pub async fn status(
        &self,
        id: &str,
        throttles: &(dyn Fn() + Sync),
    ) -> Result<String, ApiError> {
        let out = throttled(throttles, || self.client.get_change().id(id).send()).await?;
        Ok(status(out.change_info()))
    }

    /// The id of this instance's health check as configured: an existing
    /// one gale made for it (its caller reference starts with
    /// `OWNER/NAME/`), else a new one.
    pub async fn health_check(
        &self,
        me: &str,
        check: &HealthCheck,
        throttles: &(dyn Fn() + Sync),
    ) -> Result<String, ApiError> {
        let reference = format!("{}/{me}/", self.config.owner);
        let wanted = health_check_config(check)?;
        let mut marker: Option<String> = None;
        loop {
            let page = throttled(throttles, || {
                self.client
                    .list_health_checks()
                    .set_marker(marker.clone())
                    .send()
            })
            .await?;
            let found = page.health_checks().iter().find(|h| {
                h.caller_reference().starts_with(&reference)
                    && h.health_check_config()
                        .is_some_and(|c| same_check(c, &wanted))
            });
            if let Some(found) = found {
                return Ok(found.id().to_string());
            }
            match page.next_marker() {
                Some(next) if page.is_truncated() => marker = Some(next.to_string()),
                _ => break,
            }
        }
        // Unique per creation (a caller reference cannot be reused for
        // another config), at most 64 characters.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut caller = format!("{reference}{stamp}");
        caller.truncate(64);
        let out = throttled(throttles, || {
            self.client
                .create_health_check()
                .caller_reference(&caller)
                .health_check_config(wanted.clone())
                .send()
        })
        .await?;
        let id = out.health_check().map(|h| h.id().to_string());
        id.ok_or_else(|| ApiError::Refused("CreateHealthCheck answered no id".into()))
    }
}

fn status(info: Option<&aws_sdk_route53::types::ChangeInfo>) -> String {
    match info.map(|i| i.status()) {
        Some(ChangeStatus::Insync) => "INSYNC".into(),
        Some(ChangeStatus::Pending) => "PENDING".into(),
        Some(other) => other.as_str().to_string(),
        None => "unknown".into(),
    }
}

fn health_check_config(check: &HealthCheck) -> Result<HealthCheckConfig, ApiError> {
    let builder = HealthCheckConfig::builder()
        .ip_address(check.address.to_string())
        .port(i32::from(check.port))
        .request_interval(i32::from(check.interval))
        .failure_threshold(i32::from(check.failure_threshold));
    match &check.http_path {
        None => builder.r#type(HealthCheckType::Tcp),
        Some(path) => builder.r#type(HealthCheckType::Http).resource_path(path),
    }
    .build()
    .map_err(|e| ApiError::Refused(e.to_string()))
}

fn same_check(a: &HealthCheckConfig, b: &HealthCheckConfig) -> bool {
    a.r#type() == b.r#type()
        && a.ip_address() == b.ip_address()
        && a.port() == b.port()
        && a.resource_path().unwrap_or("") == b.resource_path().unwrap_or("")
        && a.request_interval() == b.request_interval()
        && a.failure_threshold() == b.failure_threshold()
}

/// Run a call, again after a backoff while Route 53 throttles it.
async fn throttled<T, E, F, Fut>(throttles: &(dyn Fn() + Sync), call: F) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<
            Output = Result<T, SdkError<E, aws_sdk_route53::config::http::HttpResponse>>,
        >,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut wait = THROTTLE_FIRST_WAIT;
    for attempt in 1.. {
        match call().await {
            Ok(out) => return Ok(out),
            Err(e) => match classify(e) {
                ApiError::Throttled(why) if attempt < THROTTLE_TRIES => {
                    throttles();
                    tracing::debug!(retry_in = ?wait, "route53 throttled: {why}");
                    // Jitter, so instances throttled together spread out.
                    tokio::time::sleep(wait + wait.mul_f64(fastrand::f64() / 2.0)).await;
                    wait *= 2;
                }
                ApiError::Throttled(why) => {
                    throttles();
                    return Err(ApiError::Throttled(why));
                }
                other => return Err(other),
            },
        }
    }
    unreachable!("the loop returns")
}

/// What an SDK error means for gale. Messages carry Route 53's code and
/// text, never the request (whose signature is derived from the secret).
fn classify<E>(e: SdkError<E, aws_sdk_route53::config::http::HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            let message = service.err().message().unwrap_or("");
            let why = if code.is_empty() && status == 403 {
                format!("HTTP {status} from Route 53 (no error code: check the credentials)")
            } else if code.is_empty() {
                format!("HTTP {status} from Route 53 (no error code: check endpoint_url)")
            } else {
                format!("{code}: {message} (HTTP {status})")
            };
            match code {
                "Throttling" | "PriorRequestNotComplete" | "ThrottlingException" => {
                    ApiError::Throttled(why)
                }
                // A DELETE of a set changed or removed since it was read:
                // read again. Anything else about the batch (a record of
                // another kind under the name) will not pass by retrying.
                "InvalidChangeBatch"
                    if ["not found", "do not match", "does not match"]
                        .iter()
                        .any(|w| message.to_ascii_lowercase().contains(w)) =>
                {
                    ApiError::Conflict(why)
                }
                _ if status >= 500 => ApiError::Unreachable(why),
                _ => ApiError::Refused(why),
            }
        }
        SdkError::TimeoutError(_) => ApiError::Unreachable("no answer in time".into()),
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
            ApiError::Unreachable(DisplayErrorContext(&e).to_string())
        }
        SdkError::ResponseError(_) => ApiError::Unreachable(DisplayErrorContext(&e).to_string()),
        // No credentials found, a request that cannot be built or signed.
        _ => ApiError::Refused(DisplayErrorContext(&e).to_string()),
    }
}

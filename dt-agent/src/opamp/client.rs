//! The OpAMP client's poll loop over HTTP(S): one `AgentToServer` per POST, the answer a
//! `ServerToAgent`.
//!
//! - The first message, and the next after the server sets `ReportFullState` or assigns a new
//!   instance id, carries the whole status: description, capabilities, health, effective config
//!   and remote config status. Later ones carry only what changed since it was last delivered
//!   (the spec's status compression); a message that was not delivered is not counted as
//!   reported, so its parts go again.
//! - A remote config whose hash differs from the last one processed is applied at once (on a
//!   blocking thread, through [`Service::apply_remote`]), kept in the state directory when
//!   applied, and reported right away (APPLIED, or FAILED with every `file:line:column`).
//! - Errors (no connection, a timeout, a non-2xx answer, `ServerErrorResponse` UNAVAILABLE)
//!   back off exponentially from 1 s, with jitter, up to the larger of 5 minutes and the poll
//!   interval; a `Retry-After` (503, 429; seconds or a date) or `retry_info` is honoured, up to
//!   an hour, and a server that says it is overloaded without one is first left 30 s, the
//!   spec's recommended minimum. Such a message is not counted as delivered: its parts go
//!   again.
//! - A message the server refuses as such (HTTP 400 or 413) is not sent again, as the spec
//!   asks (413: MUST NOT retry the same request). A 413 of a message with the effective config
//!   sends it again at once without it, held back until it changes; otherwise its parts count
//!   as reported, and after a 400 the next poll carries the whole status.
//! - Only the wait for an answer gives way to a stop; what an answer starts is done whole.
//! - Once the server has said what it can do, the effective config goes only to a server that
//!   accepts it.
//! - Headers of `[opamp] headers` (say `Authorization`) go with every message.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hyper::Uri;
use prost::Message as _;

use super::proto::{
    AgentCapabilities, AgentConfigFile, AgentConfigMap, AgentDescription, AgentDisconnect,
    AgentRemoteConfig, AgentToServer, AnyValue, ComponentHealth, EffectiveConfig, KeyValue,
    RemoteConfigStatus, RemoteConfigStatuses, ServerCapabilities, ServerErrorResponseType,
    ServerToAgent, ServerToAgentFlags, any_value, server_error_response,
};
use super::{StateDir, format_uuid, remote_files, short_hash};
use crate::{
    export::{self, http},
    service::{Health, Service},
    settings::OpampSettings,
    sys,
};

/// What the agent can do, as the spec's capability bits.
const CAPABILITIES: u64 = AgentCapabilities::ReportsStatus as u64
    | AgentCapabilities::AcceptsRemoteConfig as u64
    | AgentCapabilities::ReportsEffectiveConfig as u64
    | AgentCapabilities::ReportsHealth as u64
    | AgentCapabilities::ReportsRemoteConfig as u64;

/// How long one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the last message, `agent_disconnect`, may take at exit.
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an answer that is read (the spec's recommended limit is 64 MiB; rule files are
/// small).
const MAX_ANSWER: usize = 16 << 20;
/// The first wait after an error; doubled after each one in a row.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// The first wait after a server said it is overloaded without saying for how long: the
/// spec's "minimum recommended retry interval" (Throttling).
const THROTTLED_START: Duration = Duration::from_secs(30);
/// The longest wait after errors, unless the poll interval is longer.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// The longest a server's `Retry-After` or `retry_info` is honoured.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// Messages sent one after the other without the poll interval between them, at most (a
/// server that asks for the full state in every answer must not make the agent spin).
const MAX_IMMEDIATE: u32 = 4;

/// The sub-messages last delivered to the server.
#[derive(Default)]
struct Reported {
    description: Option<AgentDescription>,
    health: Option<ComponentHealth>,
    effective: Option<EffectiveConfig>,
    remote_status: Option<RemoteConfigStatus>,
}

/// Why an exchange failed, and what the server said of when to come back.
struct Failure {
    error: String,
    /// `Retry-After` or `retry_info`.
    retry_after: Option<Duration>,
    /// The server is overloaded (503, 429, UNAVAILABLE).
    throttled: bool,
}

impl Failure {
    fn new(error: String) -> Failure {
        Failure {
            error,
            retry_after: None,
            throttled: false,
        }
    }
}

/// What to do after an exchange.
enum Next {
    /// Send again now: something changed, or the server asked for the full state.
    Now,
    /// Wait for the poll interval.
    Poll,
}

pub struct Client {
    endpoint: Uri,
    /// `[opamp] headers`.
    headers: Vec<(String, String)>,
    /// The TLS setup of its own (`ca_file`, client certificate), if any.
    tls: Option<Arc<rustls::ClientConfig>>,
    poll: Duration,
    state: StateDir,
    service: Arc<Service>,
    uid: [u8; 16],
    sequence_num: u64,
    /// The next message carries the whole status.
    full: bool,
    reported: Reported,
    /// The remote config last processed (applied or refused), and how.
    remote_status: RemoteConfigStatus,
    /// That config, while it stands refused: kept when it applies later (with a change of the
    /// rules directory, see [`Service::take_pending_applied`]).
    refused: Option<AgentRemoteConfig>,
    start_unix_nano: u64,
    /// The health last seen, and since when it has been so.
    health: Option<(Health, u64)>,
    /// Errors in a row.
    failures: u32,
    /// The server's capabilities, once it said them (0: not yet).
    server_capabilities: u64,
    /// An effective config the server refused as too large (413): not sent until it changes.
    held_back: Option<EffectiveConfig>,
    /// Messages the server refused (400, 413) in a row: said once, then now and then.
    refusals: u64,
    rng: u64,
}

/// The TLS setup `settings` ask for (a CA file, a client certificate), read now so that a bad
/// file stops `run` before anything is attached; `None` for the common one.
pub fn tls(settings: &OpampSettings) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    let t = &settings.tls;
    if t.ca_file.is_none() && t.client.is_none() {
        return Ok(None);
    }
    let client = t.client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    http::tls_config_with(t.ca_file.as_deref(), client, "OpAMP TLS").map(Some)
}

impl Client {
    /// A client for `settings`, with the state `startup` opened and the remote config status it
    /// decided.
    pub fn new(
        settings: &OpampSettings,
        tls: Option<Arc<rustls::ClientConfig>>,
        state: StateDir,
        service: Arc<Service>,
        remote_status: RemoteConfigStatus,
    ) -> anyhow::Result<Client> {
        let endpoint: Uri = settings
            .endpoint
            .parse()
            .map_err(|e| anyhow::anyhow!("opamp endpoint {:?}: {e}", settings.endpoint))?;
        http::target(&endpoint, "OpAMP endpoint")?;
        let uid = state.instance_uid()?;
        // The agent's metrics name it as OpAMP does.
        crate::export::identity::set_opamp_instance_uid(&format_uuid(&uid));
        let now = unix_nanos();
        Ok(Client {
            endpoint,
            headers: settings.headers.0.clone(),
            tls,
            poll: settings.poll_interval,
            state,
            service,
            uid,
            sequence_num: 0,
            full: true,
            reported: Reported::default(),
            remote_status,
            refused: None,
            start_unix_nano: now,
            health: None,
            failures: 0,
            server_capabilities: 0,
            held_back: None,
            refusals: 0,
            rng: now ^ u64::from_le_bytes(uid[8..].try_into().unwrap_or_default()) | 1,
        })
    }

    pub fn instance_uid(&self) -> String {
        format_uuid(&self.uid)
    }

    /// Polls the server until `stop` is notified (then sends the last message, with
    /// `agent_disconnect`, as the spec asks) or the task is dropped.
    pub async fn run(mut self, stop: Arc<tokio::sync::Notify>) {
        log::info!(
            "OpAMP: polling {} every {:?} as instance {}",
            self.endpoint,
            self.poll,
            self.instance_uid()
        );
        let mut immediate = 0;
        loop {
            let wait = match self.exchange(&stop).await {
                // Stopped while waiting for the server: the disconnect goes now.
                Err(None) => {
                    self.disconnect().await;
                    return;
                }
                Ok(Next::Now) if immediate < MAX_IMMEDIATE => {
                    immediate += 1;
                    continue;
                }
                Ok(Next::Now | Next::Poll) => self.poll,
                Err(Some(f)) => self.failed(&f),
            };
            immediate = 0;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.notified() => {
                    self.disconnect().await;
                    return;
                }
            }
        }
    }

    /// The last message: what changed (the health says the agent stops), with
    /// `agent_disconnect`; within [`DISCONNECT_TIMEOUT`], its answer not waited for beyond.
    async fn disconnect(&mut self) {
        let mut message = self.message().await;
        message.agent_disconnect = Some(AgentDisconnect::default());
        match tokio::time::timeout(DISCONNECT_TIMEOUT, self.post(&message)).await {
            Ok(Ok(r)) if r.status.is_success() => log::info!("OpAMP: disconnected"),
            Ok(Ok(r)) => log::warn!("OpAMP: the disconnect was answered {}", r.status),
            Ok(Err(e)) => log::warn!("OpAMP: the disconnect was not sent: {e:#}"),
            Err(_) => {
                log::warn!("OpAMP: no answer to the disconnect within {DISCONNECT_TIMEOUT:?}")
            }
        }
    }

    /// One message and its answer; `Err(None)` when `stop` came while the server was being
    /// waited for. Only that wait gives way to `stop`: what the answer starts (a remote config
    /// applied, kept and reported) is done whole.
    async fn exchange(&mut self, stop: &tokio::sync::Notify) -> Result<Next, Option<Failure>> {
        let message = self.message().await;
        let posted = tokio::select! {
            r = tokio::time::timeout(EXCHANGE_TIMEOUT, self.post(&message)) => r,
            () = stop.notified() => return Err(None),
        };
        let reply = match posted {
            Err(_) => {
                return Err(Some(Failure::new(format!(
                    "no answer within {EXCHANGE_TIMEOUT:?}"
                ))));
            }
            Ok(Err(e)) => return Err(Some(Failure::new(format!("{e:#}")))),
            Ok(Ok(r)) => r,
        };
        let status = reply.status;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]);
            let error = format!("the server answered {status}: {text:?}");
            if status == hyper::StatusCode::BAD_REQUEST
                || status == hyper::StatusCode::PAYLOAD_TOO_LARGE
            {
                return Ok(self.refused(message, &error, status == hyper::StatusCode::BAD_REQUEST));
            }
            return Err(Some(Failure {
                error,
                retry_after: reply.retry_after,
                throttled: status == hyper::StatusCode::SERVICE_UNAVAILABLE
                    || status == hyper::StatusCode::TOO_MANY_REQUESTS,
            }));
        }
        let answer = ServerToAgent::decode(reply.body).map_err(|e| {
            Some(Failure::new(format!(
                "the server's answer is not a ServerToAgent: {e}"
            )))
        })?;
        // Unavailable: the message was not processed; its parts go again.
        if let Some(e) = &answer.error_response
            && e.r#type == ServerErrorResponseType::Unavailable as i32
        {
            let retry_after =
                e.details
                    .as_ref()
                    .map(|server_error_response::Details::RetryInfo(r)| {
                        Duration::from_nanos(r.retry_after_nanoseconds)
                    });
            return Err(Some(Failure {
                error: format!("the server is unavailable: {}", e.error_message),
                retry_after,
                throttled: true,
            }));
        }
        self.answers_again();
        self.refusals = 0;
        self.delivered(message);
        Ok(self.answer(answer).await)
    }

    /// After errors, the server answers.
    fn answers_again(&mut self) {
        if self.failures > 0 {
            log::info!("OpAMP: {} answers again", self.endpoint);
        }
        self.failures = 0;
    }

    /// The server refused `message` itself (`error`): it is not sent again, as the spec asks.
    /// 413 with an effective config (the rule files, the part that grows): the same message
    /// without it goes at once, and the effective config is held back until it changes. Else
    /// its parts count as reported; after a 400 (`bad_request`) the next poll carries the whole
    /// status, since the server may have lost track of this agent.
    fn refused(&mut self, mut message: AgentToServer, error: &str, bad_request: bool) -> Next {
        self.answers_again();
        let size = message.encoded_len();
        if !bad_request && let Some(effective) = message.effective_config.take() {
            log::warn!(
                "OpAMP: {}: {error}; the message ({size} bytes) is sent again at once without \
                 the effective config ({} bytes), which is held back until it changes",
                self.endpoint,
                effective.encoded_len()
            );
            self.held_back = Some(effective);
            return Next::Now;
        }
        self.delivered(message);
        self.refusals = self.refusals.saturating_add(1);
        let line = format!(
            "OpAMP: {}: {error}; the message ({size} bytes) is not sent again{}",
            self.endpoint,
            if bad_request {
                ", and the next one carries the whole status"
            } else {
                ""
            }
        );
        // A server that refuses every message is said once, then now and then.
        if !export::worth_saying(self.refusals) {
            log::debug!("{line}");
        } else if self.refusals == 1 {
            log::warn!("{line}");
        } else {
            log::warn!("{line} ({} refused in a row)", self.refusals);
        }
        if bad_request {
            self.full = true;
        }
        Next::Poll
    }

    /// Posts `message` to the server, with the instance id header and `[opamp] headers`.
    async fn post(&self, message: &AgentToServer) -> anyhow::Result<http::Reply> {
        let mut headers = vec![("opamp-instance-uid".to_string(), format_uuid(&self.uid))];
        headers.extend(self.headers.iter().cloned());
        http::post(
            &self.endpoint,
            message.encode_to_vec(),
            "OpAMP endpoint",
            &headers,
            MAX_ANSWER,
            self.tls.as_ref(),
        )
        .await
    }

    /// The next message: the whole status when due, else what changed since it was reported.
    async fn message(&mut self) -> AgentToServer {
        self.refused_config_applied().await;
        let full = self.full;
        let description = self.description();
        let health = self.current_health().await;
        let effective = self.effective_config().await;
        let remote_status = self.remote_status.clone();
        // Not to a server that said it does not take it (the spec: an agent stops using what
        // the server does not support).
        let accepts_effective = self.server_capabilities == 0
            || self.server_capabilities & ServerCapabilities::AcceptsEffectiveConfig as u64 != 0;
        let r = &self.reported;
        let message = AgentToServer {
            instance_uid: self.uid.to_vec(),
            sequence_num: self.sequence_num,
            capabilities: CAPABILITIES,
            agent_description: changed(full, &r.description, &description).then_some(description),
            health: changed(full, &r.health, &health).then_some(health),
            effective_config: (accepts_effective
                && self.held_back.as_ref() != Some(&effective)
                && changed(full, &r.effective, &effective))
            .then_some(effective),
            remote_config_status: changed(full, &r.remote_status, &remote_status)
                .then_some(remote_status),
            ..Default::default()
        };
        self.sequence_num += 1;
        message
    }

    /// The refused remote config applied since (a change of the rules directory removed what
    /// clashed with it): reported APPLIED, and kept for restarts as any applied config.
    async fn refused_config_applied(&mut self) {
        let service = self.service.clone();
        let applied = tokio::task::spawn_blocking(move || service.take_pending_applied())
            .await
            .unwrap_or(false);
        if !applied || self.remote_status.status != RemoteConfigStatuses::Failed as i32 {
            return;
        }
        if let Some(config) = self.refused.take() {
            log::info!(
                "OpAMP: remote config ({}) applied with the changed rules directory",
                short_hash(&config.config_hash)
            );
            if let Err(e) = self.state.save_remote(&config) {
                log::error!("{e:#}; after a restart the agent will not have this config");
            }
        }
        self.remote_status.status = RemoteConfigStatuses::Applied as i32;
        self.remote_status.error_message.clear();
    }

    /// `message` reached the server: its parts count as reported.
    fn delivered(&mut self, message: AgentToServer) {
        let r = &mut self.reported;
        if message.agent_description.is_some() {
            r.description = message.agent_description;
        }
        if message.health.is_some() {
            r.health = message.health;
        }
        if message.effective_config.is_some() {
            r.effective = message.effective_config;
        }
        if message.remote_config_status.is_some() {
            r.remote_status = message.remote_config_status;
        }
        if self.full {
            self.full = false;
        }
    }

    /// Acts on the server's answer.
    async fn answer(&mut self, answer: ServerToAgent) -> Next {
        if answer.capabilities != 0 {
            self.server_capabilities = answer.capabilities;
        }
        if let Some(e) = &answer.error_response {
            // A bad request: the server may have lost track of this agent; tell it everything.
            log::warn!(
                "OpAMP: the server refused a message: {}; the next one carries the whole status",
                e.error_message
            );
            self.full = true;
            return Next::Poll;
        }
        let mut next = Next::Poll;
        if let Some(id) = &answer.agent_identification {
            match <[u8; 16]>::try_from(id.new_instance_uid.as_slice()) {
                Ok(uid) if uid != self.uid => {
                    log::info!(
                        "OpAMP: the server assigned the instance id {}",
                        format_uuid(&uid)
                    );
                    if let Err(e) = self.state.set_instance_uid(uid) {
                        log::error!("{e:#}; the new instance id is not kept across restarts");
                    }
                    self.uid = uid;
                    crate::export::identity::set_opamp_instance_uid(&format_uuid(&uid));
                    self.full = true;
                    next = Next::Now;
                }
                Ok(_) => {}
                Err(_) => log::warn!(
                    "OpAMP: ignoring a new instance id of {} bytes (it must be 16)",
                    id.new_instance_uid.len()
                ),
            }
        }
        if answer.flags & ServerToAgentFlags::ReportFullState as u64 != 0 {
            self.full = true;
            next = Next::Now;
        }
        if let Some(config) = answer.remote_config
            && self.apply(config).await
        {
            next = Next::Now;
        }
        next
    }

    /// Applies a remote config unless it is the one last processed; true when the remote
    /// config status changed.
    async fn apply(&mut self, config: AgentRemoteConfig) -> bool {
        let processed = &self.remote_status;
        if processed.status != RemoteConfigStatuses::Unset as i32
            && processed.last_remote_config_hash == config.config_hash
        {
            return false;
        }
        let hash = config.config_hash.clone();
        let service = self.service.clone();
        self.refused = None;
        let result = match remote_files(&config) {
            Err(errors) => {
                self.service.refuse_remote(&errors.to_string());
                Err(anyhow::Error::new(errors))
            }
            Ok(remote) => {
                let names: Vec<String> = remote
                    .iter()
                    .map(|(p, _)| p.display().to_string())
                    .collect();
                tokio::task::spawn_blocking(move || service.apply_remote(remote))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("applying the remote config: {e}")))
                    .map(|generation| (generation, names))
            }
        };
        self.remote_status = match result {
            Ok((generation, names)) => {
                log::info!(
                    "OpAMP: remote config ({}) applied: generation {generation}, remote files [{}]",
                    short_hash(&hash),
                    names.join(", ")
                );
                if let Err(e) = self.state.save_remote(&config) {
                    log::error!("{e:#}; after a restart the agent will not have this config");
                }
                RemoteConfigStatus {
                    last_remote_config_hash: hash,
                    status: RemoteConfigStatuses::Applied as i32,
                    error_message: String::new(),
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                for line in message.lines() {
                    log::error!("{line}");
                }
                log::error!(
                    "OpAMP: remote config ({}) refused; the active rule set stays",
                    short_hash(&hash)
                );
                self.refused = Some(config);
                RemoteConfigStatus {
                    last_remote_config_hash: hash,
                    status: RemoteConfigStatuses::Failed as i32,
                    error_message: message,
                }
            }
        };
        true
    }

    /// The wait after an error, logged the first time in a row.
    fn failed(&mut self, f: &Failure) -> Duration {
        let error = &f.error;
        self.failures = self.failures.saturating_add(1);
        // Jitter: 80% to 120%, so a fleet does not come back in step.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.8 + (self.rng % 401) as f64 / 1000.0;
        let wait = wait_after(self.failures, f, self.poll, jitter);
        if self.failures == 1 {
            log::warn!(
                "OpAMP: {}: {error}; retrying with backoff (next in {wait:?})",
                self.endpoint
            );
        } else {
            log::debug!(
                "OpAMP: {}: {error} ({} in a row; next in {wait:?})",
                self.endpoint,
                self.failures
            );
        }
        wait
    }

    fn description(&self) -> AgentDescription {
        let mut non_identifying = vec![
            kv("host.name", sys::hostname()),
            kv("os.type", "linux"),
            kv(
                "os.description",
                &format!("Linux {}", sys::kernel_release()),
            ),
            kv("host.arch", host_arch()),
        ];
        if let Some(node) = sys::node_name().filter(|n| !n.is_empty()) {
            non_identifying.push(kv("k8s.node.name", node));
        }
        AgentDescription {
            identifying_attributes: vec![
                kv("service.name", "dt-agent"),
                kv("service.version", env!("CARGO_PKG_VERSION")),
                kv("service.instance.id", &format_uuid(&self.uid)),
            ],
            non_identifying_attributes: non_identifying,
        }
    }

    async fn current_health(&mut self) -> ComponentHealth {
        let service = self.service.clone();
        let health = tokio::task::spawn_blocking(move || service.health())
            .await
            .unwrap_or_else(|e| Health {
                healthy: false,
                status: format!("error: {e}"),
                last_error: None,
            });
        let since = match &self.health {
            Some((h, since)) if *h == health => *since,
            _ => unix_nanos(),
        };
        self.health = Some((health.clone(), since));
        // The spec: `last_error` SHOULD be set when not healthy.
        let last_error = match health.last_error {
            Some(e) if !e.is_empty() => e,
            _ if !health.healthy => health.status.clone(),
            _ => String::new(),
        };
        ComponentHealth {
            healthy: health.healthy,
            start_time_unix_nano: self.start_unix_nano,
            last_error,
            status: health.status,
            status_time_unix_nano: since,
            ..Default::default()
        }
    }

    async fn effective_config(&self) -> EffectiveConfig {
        let service = self.service.clone();
        let files = tokio::task::spawn_blocking(move || service.effective_config())
            .await
            .unwrap_or_default();
        EffectiveConfig {
            config_map: Some(AgentConfigMap {
                config_map: files
                    .into_iter()
                    .map(|(name, text)| {
                        (
                            name,
                            AgentConfigFile {
                                body: text.into_bytes(),
                                content_type: "application/toml".to_string(),
                            },
                        )
                    })
                    .collect(),
            }),
        }
    }
}

/// The wait after `failures` errors in a row (at least 1), the last `f`: exponential from 1 s
/// (30 s when the server said it is overloaded without saying until when), at most the larger
/// of [`BACKOFF_CAP`] and the poll interval, times `jitter`; the server's `Retry-After` or
/// `retry_info` (up to [`RETRY_AFTER_CAP`]) when longer.
fn wait_after(failures: u32, f: &Failure, poll: Duration, jitter: f64) -> Duration {
    let start = if f.throttled && f.retry_after.is_none() {
        THROTTLED_START
    } else {
        BACKOFF_START
    };
    let backoff = start
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_CAP.max(poll));
    let jittered = backoff.mul_f64(jitter);
    match f.retry_after {
        Some(r) => r.min(RETRY_AFTER_CAP).max(jittered),
        None => jittered,
    }
}

/// Whether a sub-message goes in the next message: the whole status is due, or it is not what
/// was last delivered.
fn changed<T: PartialEq>(full: bool, reported: &Option<T>, now: &T) -> bool {
    full || reported.as_ref() != Some(now)
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
    }
}

/// `host.arch` as OpenTelemetry's semantic conventions spell it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        other => other,
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_after_errors() {
        let poll = Duration::from_secs(30);
        let plain = Failure::new("no connection".into());
        let secs = |n, f: &Failure| wait_after(n, f, poll, 1.0).as_secs();
        assert_eq!(
            [1, 2, 3, 9, 10].map(|n| secs(n, &plain)),
            [1, 2, 4, 256, 300]
        );
        // Overloaded, without saying until when: the spec's 30 s first.
        let busy = Failure {
            throttled: true,
            ..Failure::new("503".into())
        };
        assert_eq!([1, 2, 4].map(|n| secs(n, &busy)), [30, 60, 240]);
        assert_eq!(
            wait_after(1, &busy, poll, 0.8),
            Duration::from_secs(24),
            "jitter"
        );
        // Saying until when: that, unless the backoff is longer.
        let told = Failure {
            retry_after: Some(Duration::from_secs(5)),
            throttled: true,
            ..Failure::new("503".into())
        };
        assert_eq!([1, 3, 4].map(|n| secs(n, &told)), [5, 5, 8]);
        let far = Failure {
            retry_after: Some(Duration::from_secs(86_400)),
            ..Failure::new("503".into())
        };
        assert_eq!(secs(1, &far), 3600);
        // A poll interval longer than the cap raises it.
        assert_eq!(
            wait_after(20, &plain, Duration::from_secs(900), 1.0),
            Duration::from_secs(900)
        );
    }
}

//! `dt-agent run`: binds the control socket (and the metrics endpoint), starts the agent and the
//! service around it, serves until SIGINT/SIGTERM or `uninstall`, then drains and detaches (or
//! leaves the pins).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use super::Service;
use crate::control::{Handler, Request, Response};
use crate::{Agent, AgentConfig, control, export, kernel, opamp, settings::Settings, sys};

/// Runs the agent with `settings` until it is told to stop.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    let mut cfg = agent_config(&settings);
    // A push an earlier agent left midway is finished (or undone) before the rules are read.
    if cfg.rules_dir.is_dir() {
        for what in super::recover_push(&cfg.rules_dir)? {
            log::warn!("rules directory {}: {what}", cfg.rules_dir.display());
        }
    }
    // With `[opamp]`: the kept remote config is the remote part of the rule set to start with.
    let mut opamp = match &settings.opamp {
        Some(o) => {
            let tls = opamp::tls(o)?;
            let startup = opamp::startup(&settings.state_dir, &cfg.rules_dir)?;
            cfg.remote_rules = startup.remote.clone();
            Some((o.clone(), tls, startup))
        }
        None => None,
    };
    let start_unix_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let socket = settings.socket.clone();
    // The socket file this agent made, removed at exit: none when binding failed (another
    // agent serves it), so that agent's socket stays.
    let socket_file = Arc::new(std::sync::OnceLock::new());
    let made = socket_file.clone();
    let result = runtime.block_on(async move {
        let mut signals = Signals::new()?;
        // Bind first: a second agent on the same socket fails before attaching anything.
        let (listener, file) = control::bind(&socket)?;
        let _ = made.set(file);
        // Answering from now on: while the agent starts, that it is starting (see
        // `Handler::starting`), then as the service.
        let ready = Arc::new(OnceLock::new());
        let starting = Starting {
            service: ready.clone(),
            since: Instant::now(),
            pending: Arc::default(),
            pin_root: cfg.pin_root.clone(),
        };
        let control_task = tokio::spawn(control::serve(listener, starting.clone()));
        let metrics_listener = match settings.metrics_addr {
            Some(addr) if settings.metrics_public => Some(export::bind_metrics_public(addr)?),
            Some(addr) => Some(export::bind_metrics(addr)?),
            None => None,
        };
        // A kept remote config set aside at start stands as the refused change: here because
        // it no longer makes a valid set with the directory, below because it does not start.
        let mut set_aside = opamp
            .as_ref()
            .and_then(|(_, _, startup)| startup.set_aside_why())
            .map(|why| format!("the last remote config was set aside at start:\n{why}"));
        let agent = match Agent::start(cfg.clone()) {
            Ok(a) => a,
            Err(e) if !cfg.remote_rules.is_empty() => {
                // The kept remote config passed the rules' checks but not the agent's (its
                // recorders and this config's capture endpoint, the ceiling, probes): start
                // without it rather than not at all, and tell the server.
                let error = format!("{e:#}");
                log::error!("{error}");
                log::error!("the last remote config does not start; starting without it");
                if let Some((_, _, startup)) = opamp.as_mut() {
                    startup.set_aside(&error);
                }
                set_aside = Some(format!(
                    "the last remote config was set aside at start:\n{error}"
                ));
                cfg.remote_rules.clear();
                Agent::start(cfg.clone())?
            }
            Err(e) => return Err(e),
        };
        let mut agent = agent;
        // The rip cord pulled while the agent started: at once, before anything else.
        if let Some(enabled) = *starting.lock_pending()
            && let Err(e) = agent.set_enabled(enabled)
        {
            log::error!("setting the rip cord asked for while starting: {e:#}");
        }
        // Pinned counters began when the pins were made: the OTLP push's start time says so,
        // the same for the agent that made them and every agent that adopts them (else a
        // consumer reads the changed start time as a reset and counts them again).
        let counters_since = agent
            .pins()
            .and_then(pins_made_at)
            .unwrap_or(start_unix_nanos);
        let service = Service::new(
            agent,
            cfg.rules_dir.clone(),
            cfg.remote_rules.clone(),
            set_aside,
        )?;
        let watcher = service.watch()?;
        {
            // The last word on the rip cord said while it started, then the service answers.
            let mut pending = starting.lock_pending();
            if let Some(enabled) = pending.take()
                && let Err(e) = service.set_enabled(enabled)
            {
                log::error!("setting the rip cord asked for while starting: {e:#}");
            }
            let _ = ready.set(service.clone());
        }
        log::info!(
            "dt-agent running: rules {} (watched), control socket {}",
            cfg.rules_dir.display(),
            socket.display()
        );
        // A `Type=notify` systemd unit: `systemctl start` returns now, filtering on.
        sys::notify("READY=1\nSTATUS=attached and filtering");
        if cfg.ports.contains(&OTLP_GRPC_PORT) {
            log::warn!("{}", grpc_port_warning());
        }
        // What answers (kept while idle after an uninstall), and the rest.
        let mut serving = vec![control_task];
        let mut tasks = vec![
            tokio::spawn(rescan(service.clone())),
            tokio::spawn(advise(service.clone(), settings.max_request)),
        ];
        if let Some(hup) = signals.hup.take() {
            tasks.push(tokio::spawn(reread_on_hangup(hup, service.clone())));
        }
        if let Some(ceiling) = settings.ceiling.clone() {
            tasks.push(tokio::spawn(crate::ceiling::watch(
                service.clone(),
                ceiling,
            )));
        }
        // The OpAMP client's own stop, so that its last message says the agent disconnects.
        let mut opamp_client = None;
        if let Some((settings, tls, startup)) = opamp {
            let client = opamp::Client::new(
                &settings,
                tls,
                startup.state,
                service.clone(),
                startup.status,
            )?;
            let stop = Arc::new(tokio::sync::Notify::new());
            opamp_client = Some((stop.clone(), tokio::spawn(client.run(stop))));
        }
        let source: export::StatsSource = {
            let service = service.clone();
            Arc::new(move || service.stats())
        };
        if let Some(listener) = metrics_listener {
            log::info!(
                "Prometheus metrics on http://{}/metrics",
                listener.local_addr()?
            );
            serving.push(tokio::spawn(export::serve_prometheus(
                listener,
                source.clone(),
            )));
        }
        if let Some(endpoint) = &settings.otlp_endpoint {
            let uri: http::Uri = endpoint
                .parse()
                .with_context(|| format!("otlp_endpoint {endpoint:?}"))?;
            log::info!(
                "pushing OTLP metrics to {endpoint} every {:?}",
                settings.otlp_interval
            );
            tasks.push(tokio::spawn(export::push_otlp(
                uri,
                settings.otlp_interval,
                export::CounterStarts {
                    kernel: counters_since,
                    agent: start_unix_nanos,
                },
                source,
            )));
        }
        let told = tokio::select! {
            () = signals.recv() => false,
            () = service.shutdown.notified() => true,
        };
        sys::notify("STOPPING=1");
        // Held requests are waited for (no deadline) while the control socket still answers;
        // a second signal stops the wait.
        service.drain_before_exit(signals.recv()).await;
        if let Some((stop, mut client)) = opamp_client {
            // Its last message, the disconnect, before anything else goes.
            stop.notify_one();
            let wait = opamp::DISCONNECT_TIMEOUT + std::time::Duration::from_secs(1);
            if tokio::time::timeout(wait, &mut client).await.is_err() {
                client.abort();
                log::warn!("OpAMP: the client did not stop in {wait:?}");
            }
        }
        if told && !service.uninstalled() {
            // The uninstall failed: say why, as the exit's error.
            let why = service.uninstall_error().unwrap_or_default();
            for t in tasks.iter().chain(&serving) {
                t.abort();
            }
            anyhow::bail!("uninstall failed: {why}");
        }
        if told && settings.idle_after_uninstall {
            // A supervisor that restarts an agent that exits would attach dt again: stay up,
            // with nothing attached, until told to stop.
            drop(watcher);
            for t in &tasks {
                t.abort();
            }
            log::info!(
                "uninstalled; idle until SIGTERM (idle_after_uninstall): nothing of dt is \
                 attached, and the control socket and metrics endpoint still answer"
            );
            signals.recv().await;
        }
        for t in tasks.iter().chain(&serving) {
            t.abort();
        }
        // Dropping the agent detaches, or leaves the pins.
        drop(service.take_agent());
        anyhow::Ok(())
    });
    if let Some(file) = socket_file.get() {
        file.remove();
    }
    result
}

/// When the pinned counters were made (their `CONTROL` map's pin), in ns since the epoch.
fn pins_made_at(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir.join("CONTROL")).ok()?;
    let secs = u64::try_from(m.ctime()).ok()?;
    Some(secs * 1_000_000_000 + m.ctime_nsec() as u64)
}

/// SIGTERM and SIGINT, listened to from the start to the exit: a signal that comes while no
/// one waits is kept for the next wait, not lost. SIGHUP too, from the start (its default
/// would end the agent at once, held requests lost): it reads the rules directory again.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: Some(signal(SignalKind::hangup()).context("installing the SIGHUP handler")?),
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// SIGHUP (`systemctl reload dt-agent`): the rules directory is read again, as when the
/// watcher sees a change (an unchanged directory makes no new generation), and a refused change
/// is tried again. While the agent is stopping, a SIGHUP does nothing.
async fn reread_on_hangup(mut hup: tokio::signal::unix::Signal, service: Arc<Service>) {
    while hup.recv().await.is_some() {
        log::info!("SIGHUP: reading the rules directory again");
        let s = service.clone();
        let _ = tokio::task::spawn_blocking(move || s.reread_dir()).await;
    }
}

/// OTLP/gRPC's registered port.
const OTLP_GRPC_PORT: u16 = 4317;

/// Hooking 4317 is most likely a mistake: dt walks OTLP/HTTP only.
fn grpc_port_warning() -> String {
    format!(
        "port {OTLP_GRPC_PORT} is hooked, OTLP/gRPC's port: dt walks OTLP/HTTP only, so gRPC \
         exports pass untouched (counted `bad_http`, once per connection); hook the collector's \
         OTLP/HTTP port (4318) and send with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
    )
}

/// What the kernel side needs of the settings.
fn agent_config(settings: &Settings) -> AgentConfig {
    AgentConfig {
        rules_dir: settings.rules_dir.clone(),
        ports: settings.ports.clone(),
        cgroup: settings.cgroup.clone(),
        max_request: settings.max_request,
        pin_root: settings.pin.then(|| settings.pin_dir.clone()),
        capture_endpoint: settings.capture_endpoint.clone(),
        remote_rules: Vec::new(),
        memory_ceiling: settings.ceiling.as_ref().and_then(|c| c.memory),
        captures_per_second: settings
            .ceiling
            .as_ref()
            .and_then(|c| c.captures_per_second),
        uprobe_fault_in: settings.uprobe_fault_in,
    }
}

/// How often the rules directory's contents are hashed, whatever the watcher saw.
pub const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Backs the directory watcher with a content hash on a slow timer: a change the watcher
/// missed (a ConfigMap volume swaps its `..data` symlink; a file system without inotify) is
/// picked up within [`RESCAN_EVERY`]. An unchanged directory is not reloaded.
/// Says, in the log, when requests pass through unfiltered for a reason an operator can fix
/// (see [`crate::advice`]).
async fn advise(service: Arc<Service>, max_request: u32) {
    let mut advisor = crate::advice::Advisor::default();
    let mut every = tokio::time::interval(crate::advice::CHECK_EVERY);
    loop {
        every.tick().await;
        let Ok(stats) = service.summary() else {
            continue;
        };
        let now = std::time::Instant::now();
        let redacting = stats.rules.iter().any(|r| r.active && r.action == "redact");
        let passthrough = &stats.totals.passthrough;
        for warning in advisor.observe(passthrough, now, max_request, redacting) {
            log::warn!("{warning}");
        }
    }
}

async fn rescan(service: Arc<Service>) {
    let mut every = tokio::time::interval(RESCAN_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let s = service.clone();
        let _ = tokio::task::spawn_blocking(move || s.reload_from_dir()).await;
    }
}

/// The control socket's handler, from before the agent starts: until the service is there, it
/// answers as a starting agent can (that it is starting; the rip cord kept for when it is up,
/// and pulled on the pinned filter at once); then it is the service.
#[derive(Clone)]
struct Starting {
    service: Arc<OnceLock<Arc<Service>>>,
    since: Instant,
    /// The rip cord as the last `disable` or `enable` sent while the agent started left it:
    /// carried out as the agent comes up (the service is set under this lock).
    pending: Arc<Mutex<Option<bool>>>,
    /// The pin root, where a pinned filter may be filtering while its next agent starts.
    pin_root: Option<PathBuf>,
}

impl Starting {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<bool>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `disable` or `enable` while the agent starts: kept for when it is up, and set on the
    /// pinned filter now (an adopted filter goes on filtering while its agent starts).
    fn set_enabled(&self, pending: &mut Option<bool>, enabled: bool) -> Response {
        *pending = Some(enabled);
        let pinned = self
            .pin_root
            .as_deref()
            .filter(|r| kernel::has_pins(r))
            .map(|r| kernel::pinned_set_enabled(r, enabled));
        let now = match pinned {
            Some(Ok(())) => "on the pinned filter now, and ",
            // The pinned filter goes on as it was while the agent starts, and the start may
            // fail: not done, said so (the client exits 1).
            Some(Err(e)) => {
                return Response::error(format!(
                    "the agent (pid {}) is starting, and setting the rip cord on its pinned \
                     filter failed: {e:#}; it is set as the agent comes up, if it does: ask \
                     again in a moment",
                    std::process::id()
                ));
            }
            None => "",
        };
        let what = if enabled {
            "rules are evaluated again"
        } else {
            "the rip cord is pulled"
        };
        let outcome = if enabled {
            "rules are evaluated"
        } else {
            "every request passes untouched"
        };
        Response {
            note: Some(format!(
                "the agent (pid {}) is starting: {what} {now}as it comes up: {outcome}",
                std::process::id()
            )),
            ..Response::ok()
        }
    }
}

impl Handler for Starting {
    fn answer(&self, request: Request) -> Response {
        let mut pending = self.lock_pending();
        if let Some(s) = self.service.get() {
            drop(pending);
            return s.answer(request);
        }
        match request {
            Request::Disable => self.set_enabled(&mut pending, false),
            Request::Enable => self.set_enabled(&mut pending, true),
            _ => Response {
                starting: true,
                ..Response::error(self.starting().unwrap_or_default())
            },
        }
    }

    fn stop(&self) {
        if let Some(s) = self.service.get() {
            s.stop();
        }
    }

    fn starting(&self) -> Option<String> {
        self.service.get().is_none().then(|| {
            format!(
                "the agent (pid {}) is starting: it loads and checks its kernel programs ({:.1} s \
                 so far); ask again in a moment",
                std::process::id(),
                self.since.elapsed().as_secs_f32()
            )
        })
    }
}

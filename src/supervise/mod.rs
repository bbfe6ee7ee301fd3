//! `regclean supervise [OPTIONS] -- COMMAND...`: the registry image that cleans itself online.
//!
//! The supervisor is PID 1 of the container. It runs the registry (COMMAND, unmodified) as a
//! child on an internal loopback address and fronts it on the registry's own address
//! ([`proxy`]). A collection cycle, asked for over the control socket ([`control`]) by a
//! regclean run next to it:
//!
//! 1. starts a second registry child, read-only (`REGISTRY_STORAGE_MAINTENANCE_READONLY`), and
//!    sends new connections to it once it accepts them;
//! 2. stops the writable child (SIGTERM; the registry drains its requests in flight);
//! 3. runs `regclean --gc-only` (pruning in the run's scope, then collection: nothing writable
//!    serves the store any more, so the live guard lets it through);
//! 4. starts a fresh writable child (an empty blob descriptor cache: no client is told a
//!    swept layer exists), sends new connections to it, and stops the read-only one.
//!
//! No connection is refused at any point; pulls go on throughout; pushes during the read-only
//! window get the registry's own read-only error. As PID 1 it reaps every zombie, forwards
//! SIGHUP, SIGUSR1, SIGUSR2 and SIGQUIT to the registry, and on SIGTERM or SIGINT stops the
//! registry (which drains) and exits with its status. If the registry child dies on its own,
//! the supervisor stops and exits with the child's status, so the container's restart policy
//! restarts both (a registry that crashes is not silently restarted behind the operator).

/// A line on stderr, never a panic: PID 1 must not die because its log pipe closed.
macro_rules! say {
    ($($a:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "regclean supervise: {}", format_args!($($a)*));
    }};
}

pub mod child;
pub mod control;
pub mod events;
pub mod peers;
pub mod proxy;

use crate::config;
use child::{signal, Reaper};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use proxy::Proxy;
use serde::Serialize;
use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `regclean supervise` takes.
#[derive(Debug, Parser)]
#[command(
    name = "regclean supervise",
    about = "Run the registry under regclean: online collection cycles with no failed pull"
)]
pub struct Args {
    /// Storage root [default: as for regclean: REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY, the
    /// config's storage.filesystem.rootdirectory, /var/lib/registry].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Object storage (`s3` driver): you state that this supervisor's registry is the only
    /// one serving the bucket (no other host, no other container). Only then does its
    /// read-only cycle collect the bucket (no live guard can see other hosts), and only then
    /// is its pull record complete enough for `pulled_within`. Without it, on a bucket, the
    /// supervisor relays and supervises but offers no cycle and records no pulls. Its state
    /// goes to `$REGCLEAN_STATE_DIR/s3-<hash of the bucket>/.regclean/` (default
    /// REGCLEAN_STATE_DIR: /var/lib/regclean), where runs next to it look. Ignored on a
    /// filesystem store, where the live guard looks for itself.
    #[arg(long, env = "REGCLEAN_SOLE_REGISTRY")]
    pub sole_registry: bool,

    /// Registry config file [default: the first argument of COMMAND ending in .yml or .yaml,
    /// else REGISTRY_CONFIGURATION_PATH, else the image's default].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// How long the registry may take to finish requests in flight when it is stopped
    /// (passed as REGISTRY_HTTP_DRAINTIMEOUT unless the config sets http.draintimeout).
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub drain: String,

    /// Run the configured clean on a schedule (cron syntax, UTC: `0 3 * * *` daily at 03:00;
    /// an optional leading seconds field). The clean is what the entrypoint hook would run —
    /// REGCLEAN_POLICY, or REGCLEAN_KEEP_LAST/REGCLEAN_OLDER_THAN with REGCLEAN_ALL or
    /// REGCLEAN_TARGETS — followed by an online cycle; with none of those, an online
    /// collection alone.
    #[arg(long, value_name = "CRON", env = "REGCLEAN_SCHEDULE")]
    pub schedule: Option<String>,

    /// The registry command, e.g. `/entrypoint.sh /etc/docker/registry/config.yml` or
    /// `registry serve config.yml`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// One registry child.
#[derive(Debug, Clone, Copy)]
struct Child {
    pid: i32,
    addr: SocketAddr,
}

/// Which mode a registry child runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Writable,
    ReadOnly,
}

/// What a cycle did (the control socket's answer).
#[derive(Debug, Serialize)]
pub struct Cycle {
    /// The collection run's exit code (0: collected).
    pub exit_code: i32,
    /// The collection run's JSON report (`gc` holds what was pruned and freed).
    pub report: serde_json::Value,
    /// How long the store was served read-only, in milliseconds.
    pub readonly_ms: u128,
    /// The whole cycle, in milliseconds.
    pub cycle_ms: u128,
}

/// Where the store lives, which decides how collection runs are started.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Store {
    /// A directory (`--root`); the supervisor's state is in it.
    Filesystem,
    /// A bucket (`s3` driver), as the registry's config names it, that this registry alone
    /// serves (`--sole-registry`); the supervisor's state is in a local directory. Collection
    /// runs with `--registry-stopped`: the cycle serves the bucket read-only while it runs.
    Object,
    /// A bucket other registries may serve too: no cycles, no pull record.
    Unguarded,
}

struct Supervisor {
    command: Vec<OsString>,
    /// Environment every registry child gets (shared secret, drain time).
    env: Vec<(String, String)>,
    /// The storage root (filesystem), or the local state directory (object storage): the
    /// supervisor's state is in `root/.regclean`.
    root: PathBuf,
    store: Store,
    /// On a bucket this registry alone serves: this supervisor's heartbeat there, and the
    /// others' (see [`peers`]).
    peers: Option<Arc<peers::Peers>>,
    config: Option<PathBuf>,
    drain: Duration,
    proxy: Arc<Proxy>,
    reaper: Arc<Reaper>,
    state: Mutex<State>,
    cycle: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The exit code to use instead of the registry's (a cycle that could not bring writable
    /// service back).
    fatal: Option<i32>,
    /// The child the proxy sends new connections to: "the registry".
    active: i32,
    /// Children being stopped on purpose (their exit is not a crash).
    stopping: HashSet<i32>,
    /// Every registry child alive.
    alive: HashSet<i32>,
    shutting_down: bool,
}

/// Runs the supervisor; returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let args = match Args::try_parse_from(
        std::iter::once(OsString::from("regclean supervise")).chain(args),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // Signals go to a signalfd read by the main thread only: block them before any thread
    // exists (threads inherit the mask; children get a clean one from std::process).
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGQUIT,
    ] {
        mask.add(s);
    }
    // As Go programs do (the registry among them): the soft descriptor limit up to the hard
    // one. Each relayed connection holds several descriptors; 1024 (Docker's default soft
    // limit) would lock clients out at about a hundred connections.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    if let Err(e) = mask.thread_block() {
        say!("blocking signals: {e}");
        return 1;
    }
    match start(args) {
        Ok((sup, signals)) => {
            let code = Arc::clone(&sup).run(signals);
            if let Some(p) = &sup.peers {
                p.stop();
            }
            code
        }
        Err(e) => {
            say!("{e}");
            2
        }
    }
}

fn start(args: Args) -> Result<(Arc<Supervisor>, SignalFd), String> {
    let config_path = args.config.clone().or_else(|| {
        args.command
            .iter()
            .map(PathBuf::from)
            .find(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
    });
    let cfg = config::find_config(config_path.as_deref(), &config::DEFAULT_CONFIGS)
        .or_else(|_| {
            let env = std::env::var_os("REGISTRY_CONFIGURATION_PATH").map(PathBuf::from);
            config::find_config(env.as_deref(), &config::DEFAULT_CONFIGS)
        })
        .map_err(|e| e.to_string())?;
    let config_path = cfg.as_ref().map(|c| c.path.clone());
    let get = |keys: &[&str]| {
        cfg.as_ref()
            .and_then(|c| config::get(&c.yaml, keys))
            .and_then(|v| v.as_str().map(str::to_string))
    };
    let env = |k: &str| std::env::var(k).ok().map(|v| config::env_scalar(&v));
    let addr = env("REGISTRY_HTTP_ADDR")
        .or_else(|| get(&["http", "addr"]))
        .unwrap_or_else(|| ":5000".into());
    let root = args.root.clone().or_else(|| {
        env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    });
    let storage = std::env::var("REGISTRY_STORAGE").ok();
    let loc = config::locate(root, cfg.clone(), storage.as_deref()).map_err(|e| e.to_string())?;
    // Its control socket and pull activity live in the store's state directory; a bucket
    // has none on this host, so they go to a local directory.
    let (root, store) = match &loc.backend {
        config::Backend::S3(s3) if args.sole_registry => {
            let dir = control::object_state_root(s3);
            std::fs::create_dir_all(&dir).map_err(|e| {
                format!(
                    "the registry's storage is {} (s3 driver): its local state directory {} (REGCLEAN_STATE_DIR): {e}",
                    s3.url(),
                    dir.display()
                )
            })?;
            (dir, Store::Object)
        }
        config::Backend::S3(s3) => {
            say!(
                "the registry's storage is {} (s3 driver): no online collection cycles and no pull record, since other registries may serve the bucket; if this is its only registry, set REGCLEAN_SOLE_REGISTRY=true (--sole-registry)",
                s3.url()
            );
            (PathBuf::new(), Store::Unguarded)
        }
        config::Backend::Filesystem => (loc.root.clone(), Store::Filesystem),
    };
    if store == Store::Unguarded
        && args
            .schedule
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty())
    {
        return Err("--schedule/REGCLEAN_SCHEDULE on object storage needs REGCLEAN_SOLE_REGISTRY=true (--sole-registry): its cleans collect in the supervisor's read-only cycle, which is only safe when no other registry serves the bucket".into());
    }
    let drain = humantime::parse_duration(&args.drain)
        .map_err(|e| format!("--drain '{}': {e}", args.drain))?;
    let schedule = args
        .schedule
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let c = s
                .parse::<croner::Cron>()
                .map_err(|e| format!("--schedule/REGCLEAN_SCHEDULE '{s}': {e}"))?;
            c.find_next_occurrence(&chrono::Utc::now(), false)
                .map_err(|_| format!("--schedule/REGCLEAN_SCHEDULE '{s}' names no future time"))?;
            Ok::<_, String>(c)
        })
        .transpose()?;
    // Children share one HTTP secret (an upload started on one child continues on the next)
    // and drain on SIGTERM; the user's own settings win.
    let mut child_env = Vec::new();
    if env("REGISTRY_HTTP_SECRET").is_none() && get(&["http", "secret"]).is_none() {
        child_env.push(("REGISTRY_HTTP_SECRET".to_string(), random_secret()));
    }
    if env("REGISTRY_HTTP_DRAINTIMEOUT").is_none() && get(&["http", "draintimeout"]).is_none() {
        child_env.push((
            "REGISTRY_HTTP_DRAINTIMEOUT".to_string(),
            format!("{}s", drain.as_secs().max(1)),
        ));
    }
    // Pull activity: the registry notifies us of every manifest pull.
    let user_endpoints = match std::env::var("REGISTRY_NOTIFICATIONS_ENDPOINTS") {
        Ok(v) => serde_yaml_ng::from_str(&v).ok(),
        Err(_) => cfg
            .as_ref()
            .and_then(|c| config::get(&c.yaml, &["notifications", "endpoints"]))
            .cloned(),
    };
    let state = match store {
        Store::Unguarded => Err("other registries may serve the bucket".to_string()),
        _ => control::state_dir(&root, true).map_err(|e| e.to_string()),
    };
    match state.and_then(|_| events::start(&root)) {
        Ok(addr) => child_env.push((
            "REGISTRY_NOTIFICATIONS_ENDPOINTS".to_string(),
            events::endpoints(user_endpoints, addr),
        )),
        Err(e) => tracing::warn!(
            "not recording pull activity (policies with pulled_within will be refused): {e}"
        ),
    }
    let signals = SignalFd::new(&SigSet::thread_get_mask().map_err(|e| e.to_string())?)
        .map_err(|e| format!("signalfd: {e}"))?;
    let listener = proxy::bind(&addr).map_err(|e| format!("listening on {addr}: {e}"))?;
    // The heartbeat last, once nothing else can fail, and before the registry serves (see
    // [`peers`]). Only settings the registry itself takes and regclean's client cannot use
    // fail here: the registry starts anyway, and no cycle runs.
    let peers = match (&loc.backend, &store) {
        (config::Backend::S3(s3), Store::Object) => match peers::Peers::start(s3) {
            Ok(p) => Some(p),
            Err(e) => {
                say!(
                    "the registry's storage is {}: {e}; no online collection cycles",
                    s3.url()
                );
                None
            }
        },
        _ => None,
    };
    let sup = Arc::new(Supervisor {
        command: args.command,
        env: child_env,
        root,
        store,
        peers,
        config: config_path,
        drain,
        proxy: Proxy::new(SocketAddr::from(([127, 0, 0, 1], 0))),
        reaper: Arc::new(Reaper::default()),
        state: Mutex::new(State::default()),
        cycle: Mutex::new(()),
    });
    // The reaper must run while the first child starts: the main loop is not running yet.
    let first = {
        let s = Arc::clone(&sup);
        let reaping = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r2 = Arc::clone(&reaping);
        let reaper = Arc::clone(&sup.reaper);
        let t = std::thread::spawn(move || {
            while r2.load(std::sync::atomic::Ordering::SeqCst) {
                reaper.reap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let c = s.spawn(Access::Writable);
        reaping.store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = t.join();
        c?
    };
    sup.proxy.switch(first.addr);
    sup.state.lock().expect("state").active = first.pid;
    let p = Arc::clone(&sup.proxy);
    std::thread::spawn(move || p.serve(listener));
    let bound = match sup.store {
        Store::Unguarded => Err(std::io::Error::other(
            "other registries may serve the bucket (REGCLEAN_SOLE_REGISTRY is not set)",
        )),
        _ => control::bind(&sup.root),
    };
    match bound {
        Ok((l, fd)) => {
            // Cycles run on one long-lived worker thread, not on the connection's: children
            // get PR_SET_PDEATHSIG, which Linux sends when the *thread* that spawned them
            // ends — a fresh registry spawned by a finished connection thread would be
            // stopped at once.
            type Job = (Vec<String>, std::sync::mpsc::Sender<serde_json::Value>);
            let (jobs, queue) = std::sync::mpsc::channel::<Job>();
            let s = Arc::clone(&sup);
            std::thread::spawn(move || {
                for (args, reply) in queue {
                    let v = match s.cycle(args) {
                        Ok(c) => serde_json::to_value(c).expect("serializes"),
                        Err(e) => serde_json::json!({ "error": e }),
                    };
                    let _ = reply.send(v);
                }
            });
            let jobs = Mutex::new(jobs);
            std::thread::spawn(move || {
                let _fd = fd;
                control::serve(l, move |r| {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let sent = jobs.lock().expect("jobs").send((r.args, tx));
                    match sent.ok().and_then(|()| rx.recv().ok()) {
                        Some(v) => v,
                        None => serde_json::json!({ "error": "the supervisor is stopping" }),
                    }
                })
            });
        }
        Err(e) => tracing::warn!(
            "no control socket in {}: {e}; regclean runs next to this registry will {}",
            sup.root.join(crate::app::STATE_DIR).display(),
            match sup.store {
                Store::Filesystem => "defer collection",
                Store::Object | Store::Unguarded =>
                    "be refused collection (exit 3) unless they say --registry-stopped",
            }
        ),
    }
    if let Some(cron) = schedule {
        let s = Arc::clone(&sup);
        std::thread::spawn(move || s.scheduled(cron));
    }
    say!(
        "serving {addr} through registry pid {} on {}",
        first.pid,
        first.addr
    );
    Ok((sup, signals))
}

/// 32 random bytes as hex, from the kernel.
fn random_secret() -> String {
    let mut b = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    if read.is_err() {
        // Without randomness, each child generates its own secret (as the registry does).
        return String::new();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A free loopback port for a child (bound and released: the child binds it next).
fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl Supervisor {
    /// Starts a writable child, retrying with backoff (1, 2, 4 s): a cycle must bring writable
    /// service back.
    fn spawn_writable(&self) -> Result<Child, String> {
        let mut last = String::new();
        for wait in [0, 1, 2, 4] {
            std::thread::sleep(Duration::from_secs(wait));
            if self.state.lock().expect("state").shutting_down {
                return Err("the supervisor is stopping".into());
            }
            match self.spawn(Access::Writable) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    say!("starting the writable registry after a cycle: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Starts a registry child and waits until it accepts connections (30 s at most).
    fn spawn(&self, access: Access) -> Result<Child, String> {
        let addr = free_addr().map_err(|e| e.to_string())?;
        let mut c = Command::new(&self.command[0]);
        c.args(&self.command[1..])
            .stdin(Stdio::null())
            .envs(self.env.iter().filter(|(_, v)| !v.is_empty()).cloned())
            .env("REGISTRY_HTTP_ADDR", addr.to_string())
            .env("REGCLEAN_SUPERVISED", "1");
        // A supervisor killed outright (SIGKILL) takes its registries with it: an orphaned
        // writable registry would serve on unseen and defer every later collection.
        crate::gc::die_with_parent(&mut c, Signal::SIGTERM);
        match access {
            Access::ReadOnly => c.env(
                "REGISTRY_STORAGE_MAINTENANCE_READONLY",
                r#"{"enabled":true}"#,
            ),
            Access::Writable => c.env_remove("REGISTRY_STORAGE_MAINTENANCE_READONLY"),
        };
        let pid = c
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", self.command[0]))?
            .id() as i32;
        self.state.lock().expect("state").alive.insert(pid);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(Child { pid, addr });
            }
            if let Some(code) = self.reaper.wait(pid, Duration::from_millis(50)) {
                self.state.lock().expect("state").alive.remove(&pid);
                return Err(format!(
                    "the {access:?} registry child exited with {code} before serving"
                ));
            }
            if Instant::now() > deadline {
                self.stop(pid);
                return Err(format!(
                    "the {access:?} registry child did not accept connections on {addr} within 30 s"
                ));
            }
        }
    }

    /// Stops a child on purpose (SIGTERM; SIGKILL after the drain time and 10 s more).
    fn stop(&self, pid: i32) {
        self.state.lock().expect("state").stopping.insert(pid);
        signal(pid, Signal::SIGTERM);
        if self
            .reaper
            .wait(pid, self.drain + Duration::from_secs(10))
            .is_none()
        {
            tracing::warn!("registry child {pid} did not stop in time: killing it");
            signal(pid, Signal::SIGKILL);
            let _ = self.reaper.wait(pid, Duration::from_secs(10));
        }
        let mut st = self.state.lock().expect("state");
        st.alive.remove(&pid);
        st.stopping.remove(&pid);
    }

    /// Makes `c` the registry new connections reach.
    fn activate(&self, c: Child) -> i32 {
        self.proxy.switch(c.addr);
        std::mem::replace(&mut self.state.lock().expect("state").active, c.pid)
    }

    /// One online collection cycle (see the module docs).
    fn cycle(&self, args: Vec<String>) -> Result<Cycle, String> {
        let _one = self.cycle.lock().expect("cycle");
        if self.state.lock().expect("state").shutting_down {
            return Err("the supervisor is stopping".into());
        }
        if self.store == Store::Object && self.peers.is_none() {
            return Err("this supervisor cannot reach the bucket with regclean's client (see its log at start): nothing was collected".into());
        }
        if let Some(p) = &self.peers {
            let others = p.others()?;
            if !others.is_empty() {
                return Err(format!(
                    "another supervisor serves this bucket too ({}): REGCLEAN_SOLE_REGISTRY=true is not true, and collecting now could lose layers of its pushes; nothing was collected",
                    others.join(", ")
                ));
            }
        }
        let start = Instant::now();
        let ro = self.spawn(Access::ReadOnly)?;
        let writable = self.activate(ro);
        self.stop(writable);
        let ro_start = Instant::now();
        let collected = self.collect(&args);
        // Whatever the collection did, writable service comes back — or the supervisor stops
        // with an error, so that the container's restart policy acts: a registry left
        // read-only for good would fail every push, silently.
        let fresh = self.spawn_writable();
        let readonly_ms = ro_start.elapsed().as_millis();
        let fresh = match fresh {
            Ok(c) => c,
            Err(e) => {
                say!("no writable registry could be started after a cycle ({e}): stopping");
                let mut st = self.state.lock().expect("state");
                st.fatal = Some(1);
                st.shutting_down = true;
                for p in &st.alive {
                    signal(*p, Signal::SIGTERM);
                }
                return Err(format!("no writable registry after the cycle: {e}"));
            }
        };
        let ro_pid = self.activate(fresh);
        self.stop(ro_pid);
        let (exit_code, report) = collected?;
        Ok(Cycle {
            exit_code,
            report,
            readonly_ms,
            cycle_ms: start.elapsed().as_millis(),
        })
    }

    /// Names the store for a regclean run: its root, or, for a bucket (named by the config),
    /// that the registries are read-only meanwhile and where the supervisor's state is.
    fn store_args(&self, c: &mut Command) {
        match self.store {
            Store::Filesystem => c.arg("--root").arg(&self.root),
            Store::Object | Store::Unguarded => c.arg("--registry-stopped"),
        };
    }

    /// Runs `regclean --gc-only` on the store (this very binary), its JSON report parsed.
    fn collect(&self, args: &[String]) -> Result<(i32, serde_json::Value), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut c = Command::new(exe);
        // Only the request's options: the supervisor's own REGCLEAN_* settings (a policy, a
        // metrics file) belong to the runs that asked, not to this collection.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGCLEAN_") {
                c.env_remove(k);
            }
        }
        crate::gc::die_with_parent(&mut c, Signal::SIGTERM);
        // The cycle's own collection: it must never defer to this supervisor (which waits for
        // it) — a writable registry it finds is someone else's, and it refuses.
        c.env(crate::supervise::control::IN_CYCLE, "1");
        c.arg("--gc-only").arg("--json").arg("--wait");
        self.store_args(&mut c);
        c.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        match &self.config {
            Some(p) => c.arg("--config").arg(p),
            None => c.arg("--config").arg("/dev/null"),
        };
        let mut child = c
            .spawn()
            .map_err(|e| format!("starting the collection: {e}"))?;
        let pid = child.id() as i32;
        let mut out = String::new();
        if let Some(mut so) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut so, &mut out);
        }
        let code = self
            .reaper
            .wait(pid, Duration::from_secs(24 * 3600))
            .ok_or("the collection did not end")?;
        let report = serde_json::from_str(&out)
            .map_err(|e| format!("the collection (exit {code}) printed no report: {e}"))?;
        Ok((code, report))
    }

    /// Runs the configured clean at every time `cron` names, forever.
    fn scheduled(&self, cron: croner::Cron) {
        loop {
            let now = chrono::Utc::now();
            let Ok(next) = cron.find_next_occurrence(&now, false) else {
                tracing::error!("the schedule names no future time: no more scheduled cleans");
                return;
            };
            if let Ok(wait) = (next - now).to_std() {
                std::thread::sleep(wait);
            }
            if self.state.lock().expect("state").shutting_down {
                return;
            }
            say!("scheduled clean ({next})");
            match self.scheduled_clean() {
                Ok(line) => say!("scheduled clean done: {line}"),
                Err(e) => say!("scheduled clean failed: {e}"),
            }
        }
    }

    /// One scheduled clean: the configured removal run (which asks for the cycle itself, like
    /// any run next to the supervisor), or, with nothing configured, a cycle alone.
    fn scheduled_clean(&self) -> Result<String, String> {
        let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "false");
        let targets = std::env::var("REGCLEAN_TARGETS").unwrap_or_default();
        let configured = set("REGCLEAN_POLICY")
            || !targets.trim().is_empty()
            || (set("REGCLEAN_ALL") && (set("REGCLEAN_KEEP_LAST") || set("REGCLEAN_OLDER_THAN")));
        if !configured {
            let c = self.cycle(Vec::new())?;
            return Ok(format!(
                "online collection, exit {}, freed {} bytes",
                c.exit_code, c.report["gc"]["freed_bytes"]
            ));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut c = Command::new(exe);
        // Not --registry-stopped here: the removal runs next to the writable registry, and
        // asks for the cycle (which collects) like any run next to the supervisor.
        if self.store == Store::Filesystem {
            c.arg("--root").arg(&self.root);
        }
        c.arg("--ignore-missing")
            .args(targets.split_whitespace())
            .stdin(Stdio::null());
        match &self.config {
            Some(p) => c.arg("--config").arg(p),
            None => c.arg("--config").arg("/dev/null"),
        };
        let child = c.spawn().map_err(|e| format!("starting the clean: {e}"))?;
        let code = self
            .reaper
            .wait(child.id() as i32, Duration::from_secs(24 * 3600))
            .ok_or("the clean did not end")?;
        Ok(format!("exit {code}"))
    }

    /// The main loop: signals and exits, until the registry is gone.
    fn run(self: Arc<Self>, signals: SignalFd) -> i32 {
        loop {
            let sig = match signals.read_signal() {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    say!("reading signals: {e}");
                    return 1;
                }
            };
            let Ok(sig) = Signal::try_from(sig.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => {
                    for (pid, code) in self.reaper.reap() {
                        let mut st = self.state.lock().expect("state");
                        if pid != st.active || st.stopping.contains(&pid) {
                            continue;
                        }
                        st.alive.remove(&pid);
                        if st.shutting_down {
                            say!("the registry exited with {code}");
                        } else {
                            say!(
                                "the registry (pid {pid}) died on its own with {code}: stopping (the container's restart policy restarts it)"
                            );
                            st.shutting_down = true;
                        }
                        let code = st.fatal.unwrap_or(code);
                        drop(st);
                        self.finish();
                        return code;
                    }
                }
                Signal::SIGTERM | Signal::SIGINT => {
                    let mut st = self.state.lock().expect("state");
                    st.shutting_down = true;
                    self.proxy.close();
                    for p in &st.alive {
                        signal(*p, Signal::SIGTERM);
                    }
                }
                other => {
                    let active = self.state.lock().expect("state").active;
                    signal(active, other);
                }
            }
        }
    }

    /// Once the registry is gone: every other child stopped and reaped (a draining one is
    /// given the drain time, then killed), and every relayed response delivered (bounded by
    /// the drain time), so that no pull in flight is cut short by the supervisor's exit.
    fn finish(&self) {
        self.proxy.close();
        let deadline = Instant::now() + self.drain + Duration::from_secs(10);
        let others: Vec<i32> = self
            .state
            .lock()
            .expect("state")
            .alive
            .iter()
            .copied()
            .collect();
        for p in &others {
            signal(*p, Signal::SIGTERM);
        }
        loop {
            for (pid, _) in self.reaper.reap() {
                self.state.lock().expect("state").alive.remove(&pid);
            }
            let left = self.state.lock().expect("state").alive.len();
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                for p in &self.state.lock().expect("state").alive {
                    signal(*p, Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(100));
                self.reaper.reap();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let deadline = Instant::now() + self.drain;
        while self.proxy.active.load(std::sync::atomic::Ordering::SeqCst) > 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

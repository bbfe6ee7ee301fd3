//! Runs the pipeline: settings → locations → lock → scan → plan → (refusals) → apply → gc →
//! commit or roll back → report.

use crate::apply;
use crate::cli::{self, MissingPolicy, Mode, Output, Settings};
use crate::collect;
use crate::config::{self, Location};
use crate::error::{Error, Result};
use crate::exit::Exit;
use crate::fsx::DirFd;
use crate::lock;
use crate::plan;
use crate::report::Report;
use crate::scan;
use crate::trash::{self, Deleted, Trash};
use std::ffi::OsString;
use std::time::SystemTime;

/// The name of regclean's state directory under the storage root (lock and trash).
pub const STATE_DIR: &str = ".regclean";

/// Parses `args`, runs, prints, and returns the process exit code.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    // `regclean supervise ...` is a mode of its own. A repository named `supervise` is still
    // removable: `regclean -- supervise` (or any option before it).
    if args.get(1).is_some_and(|a| a == "supervise") {
        init_logging("info");
        return crate::supervise::main(args[2..].to_vec());
    }
    let settings = match cli::parse(args) {
        Ok(s) => s,
        Err(code) => return code.code(),
    };
    init_logging(settings.log_filter);
    crate::progress::init(settings.log_filter == "error");
    init_threads();
    if settings.mode == Mode::Check {
        return match run_check(&settings) {
            Ok(r) => {
                match settings.output {
                    Output::Json => {
                        println!("{}", serde_json::to_string_pretty(&r).expect("serializes"))
                    }
                    Output::Human => print!("{}", r.to_text()),
                }
                metrics(&settings, crate::metrics::Outcome::Check(&r), r.exit_code);
                r.exit_code
            }
            Err(e) => {
                let code = fail(&settings, e);
                metrics(&settings, crate::metrics::Outcome::Failed, code);
                code
            }
        };
    }
    match run(&settings) {
        Ok(mut report) => {
            online_cycle(&settings, &mut report);
            match settings.output {
                Output::Json => println!("{}", report.to_json()),
                Output::Human => print!("{}", report.to_text()),
            }
            metrics(
                &settings,
                crate::metrics::Outcome::Run(&report),
                report.exit_code,
            );
            report.exit_code
        }
        Err(Error::NothingToDo) => {
            metrics(&settings, crate::metrics::Outcome::Failed, 0);
            Exit::Done.code()
        }
        Err(e) => {
            let code = fail(&settings, e);
            metrics(&settings, crate::metrics::Outcome::Failed, code);
            code
        }
    }
}

/// `--metrics-file`: a failure to write it is logged, never changes the exit code.
fn metrics(settings: &Settings, outcome: crate::metrics::Outcome, code: i32) {
    if let Some(p) = &settings.metrics_file {
        if let Err(e) = crate::metrics::write(p, outcome, code, SystemTime::now()) {
            tracing::error!("writing metrics file {}: {e}", p.display());
        }
    }
}

/// Next to a supervised registry (`regclean supervise`), a run whose collection was deferred
/// asks the supervisor for an online cycle — read-only registry, collection in this run's
/// pruning scope, fresh writable registry — and waits for it (the lock is released by then).
fn online_cycle(settings: &Settings, report: &mut Report) {
    if settings.mode != Mode::Apply || report.gc.status != collect::GcStatus::Deferred {
        return;
    }
    let mut args = Vec::new();
    match &report.gc.prune_scope {
        plan::PruneScope::Store => {}
        plan::PruneScope::Repositories(r) if r.is_empty() => args.push("--keep-untagged".into()),
        plan::PruneScope::Repositories(r) => {
            for repo in r {
                args.extend(["--prune-in".to_string(), repo.clone()]);
            }
        }
    }
    for (repo, tag) in &report.spare.tags {
        args.extend(["--protect-tag".to_string(), format!("{repo}:{tag}")]);
    }
    for (repo, d) in &report.spare.manifests {
        args.extend(["--keep-manifest".to_string(), format!("{repo}@{d}")]);
    }
    let gc = &settings.gc;
    if gc.pruning == collect::Pruning::Keep && !args.iter().any(|a| a == "--keep-untagged") {
        args.push("--keep-untagged".into());
    }
    if gc.referrers == crate::reach::Referrers::Prune {
        args.push("--prune-referrers".into());
    }
    if settings.request.attachments == crate::attach::Attachments::Plain {
        args.push("--keep-attachments".into());
    }
    args.push("--collector".into());
    args.push(
        // The native collector unless the registry's is asked for by name: the store is
        // served read-only meanwhile, and the native sweep is the short one.
        match gc.collector {
            collect::CollectorChoice::Auto => "native",
            collect::CollectorChoice::Native => "native",
            collect::CollectorChoice::Registry => "registry",
        }
        .into(),
    );
    let root = report
        .state_root
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(&report.root));
    crate::progress::phase("asking the supervisor for an online collection cycle");
    let Some(answer) = crate::supervise::control::request(&root, args) else {
        if report.state_root.is_some() || settings.gc.request == collect::GcRequest::Only {
            // The run went ahead only because a supervisor answered (object storage, or an
            // explicit --gc-only): that it is gone now means nothing was collected, which
            // must not look like success.
            report.supervisor = Some(serde_json::json!({
                "error": format!("the supervisor at {} stopped answering: nothing was collected; run again", root.join(STATE_DIR).display())
            }));
            report.exit_code = report.exit_code.max(Exit::Failed.code());
        }
        return;
    };
    let failed = match &answer {
        Ok(v) => v.get("error").is_some() || v["exit_code"].as_i64() != Some(0),
        Err(_) => true,
    };
    report.supervisor = Some(match answer {
        Ok(v) => v,
        Err(e) => serde_json::json!({ "error": e }),
    });
    if failed {
        report.exit_code = report.exit_code.max(Exit::Failed.code());
    }
}

/// Prints a fatal error once (and as JSON with `--json`); returns its exit code.
fn fail(settings: &Settings, e: Error) -> i32 {
    eprintln!("regclean: {e}");
    if settings.output == Output::Json {
        let j = serde_json::json!({ "error": e.to_string(), "exit_code": e.exit().code() });
        println!("{j}");
    }
    e.exit().code()
}

/// `--check`: read-only; creates nothing, not even the lock.
pub fn run_check(settings: &Settings) -> Result<crate::check::CheckReport> {
    use crate::check;
    use crate::storage::{s3::S3Store, Filesystem, Storage};
    let loc = locate(settings)?;
    // The store through its storage; the filesystem's own checks (state directory, revision
    // links, content) need its directory handles.
    let (fs, object) = match &loc.backend {
        config::Backend::Filesystem => (Some(open_store(&loc)?), None),
        config::Backend::S3(s) => (None, Some(S3Store::open(s)?)),
    };
    let view = fs.as_ref().map(|s| Filesystem { v2: &s.v2 });
    let storage: &dyn Storage = match (&view, &object) {
        (Some(v), _) => v,
        (None, Some(o)) => o,
        (None, None) => unreachable!("one backend is open"),
    };
    let state = match &fs {
        Some(s) => open_state(&s.root).map_err(|e| Error::Failed(e.to_string()))?,
        None => None,
    };
    let repos_dir = match &fs {
        Some(s) => s.v2.sub_opt("repositories")?,
        None => None,
    };
    let inv = storage.scan()?;
    let db = collect::load_db(storage, &inv);
    let blobs = storage.blobs()?;
    let mut missing = Vec::new();
    let scoped = if settings.request.targets.is_empty() {
        inv.clone()
    } else {
        let p = plan::plan(
            &inv,
            &plan::Request {
                targets: settings.request.targets.clone(),
                ..Default::default()
            },
            SystemTime::now(),
        );
        missing = p.missing;
        let mut repos = Vec::new();
        for r in &inv.repos {
            let sel: Vec<&plan::Removal> = p.removals.iter().filter(|x| x.repo == r.name).collect();
            if sel.is_empty() {
                continue;
            }
            let mut r = r.clone();
            if !sel
                .iter()
                .any(|x| matches!(x.what, plan::What::Repository { .. }))
            {
                r.tags.retain(|t| {
                    sel.iter()
                        .any(|x| matches!(&x.what, plan::What::Tag { name, .. } if *name == t.name))
                });
            }
            repos.push(r);
        }
        scan::Inventory {
            repos,
            oddities: Vec::new(),
            empty_dirs: Vec::new(),
        }
    };
    let protect = settings
        .request
        .retention
        .as_ref()
        .filter(|p| p.source != crate::policy::Source::Flags);
    let mut findings = check::check_repos(&scoped, &db, &blobs, protect);
    findings.extend(check::check_store(
        &inv,
        &db,
        repos_dir.as_ref(),
        state.as_ref(),
        SystemTime::now(),
    ));
    findings.extend(check::bad_blobs(&blobs));
    if let Some(o) = &object {
        // Read-only: listings only.
        let found = crate::storage::s3::dirs::hollow(&o.bucket, &o.holding.lock().unwrap(), &[])?;
        let rel: Vec<String> = found
            .roots
            .iter()
            .map(|d| {
                d.strip_prefix(crate::storage::s3::layout::V2)
                    .unwrap_or(d)
                    .to_string()
            })
            .collect();
        findings.extend(check::empty_directories(&rel));
    }
    let verified = match settings.verify {
        cli::Verify::Content => match &fs {
            Some(store) => {
                let (bad, v) = check::verify_content(&store.v2, &blobs);
                findings.extend(bad);
                Some(v)
            }
            None => {
                return Err(Error::Usage(format!(
                    "{}: --verify-content reads every blob back, which on object storage means downloading the whole bucket; it is for filesystem stores",
                    loc.root.display()
                )))
            }
        },
        cli::Verify::Structure => None,
    };
    findings.sort_by(|a, b| {
        (a.repo.is_empty(), &a.repo, &a.tag, a.kind).cmp(&(
            b.repo.is_empty(),
            &b.repo,
            &b.tag,
            b.kind,
        ))
    });
    let broken =
        !findings.is_empty() || (!missing.is_empty() && settings.missing == MissingPolicy::Fail);
    Ok(check::CheckReport {
        root: loc.root.display().to_string(),
        repositories: scoped.repos.len(),
        tags: scoped.repos.iter().map(|r| r.tags.len()).sum(),
        findings,
        missing,
        verified,
        exit_code: if broken {
            Exit::Failed.code()
        } else {
            Exit::Done.code()
        },
    })
}

/// The worker pool: 4 threads per core (4 to 32) unless `RAYON_NUM_THREADS` says otherwise.
/// Why more threads than cores: on a store larger than the page cache the walk waits on
/// metadata reads, and more requests in flight keep the disk busy (the large benchmark store,
/// 2.9M files: 73 s with 8 threads against 98–157 s with 2); on a warm cache it costs nothing
/// measurable.
fn init_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads((cores * 4).clamp(4, 32))
        .build_global();
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("regclean={default}")));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

/// Resolves the config and root as the registry would.
pub fn locate(settings: &Settings) -> Result<Location> {
    let cfg = config::find_config(settings.config.as_deref(), &config::DEFAULT_CONFIGS)?;
    let env_storage = std::env::var("REGISTRY_STORAGE").ok();
    config::locate(settings.root.clone(), cfg, env_storage.as_deref())
}

/// The opened store.
pub struct Store {
    /// The storage root.
    pub root: DirFd,
    /// `<root>/docker/registry/v2`.
    pub v2: DirFd,
}

/// Opens the store, with a clear message when `loc.root` is not one.
pub fn open_store(loc: &Location) -> Result<Store> {
    let root_path = &loc.root;
    let from = match loc.root_source {
        config::RootSource::Explicit => {
            "from --root/REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".to_string()
        }
        config::RootSource::Config => format!(
            "from storage.filesystem.rootdirectory in {}",
            loc.config
                .as_ref()
                .map(|c| c.path.display().to_string())
                .unwrap_or_default()
        ),
        config::RootSource::Default => "the default; set --root".to_string(),
    };
    // A symlink at the root itself is the administrator's choice (`/var/lib/registry ->
    // /data/registry` is common): follow it there, and only there; say so.
    let resolved;
    let root_path = match std::fs::symlink_metadata(root_path) {
        Ok(m) if m.file_type().is_symlink() => {
            resolved = std::fs::canonicalize(root_path).map_err(|e| {
                Error::Usage(format!(
                    "storage root {} ({from}) is a symlink that does not resolve: {e}",
                    root_path.display()
                ))
            })?;
            tracing::info!(
                "storage root {} is a symlink to {}: following it (symlinks inside the store never are)",
                root_path.display(),
                resolved.display()
            );
            &resolved
        }
        _ => root_path,
    };
    let root = DirFd::open(root_path).map_err(|e| match e {
        Error::Io { source, .. } => Error::Usage(format!(
            "storage root {} ({from}): {source}",
            root_path.display()
        )),
        e => e,
    })?;
    let not_store = |what: String| {
        Error::Usage(format!(
            "{} ({from}) is not a registry storage root: {what}",
            root_path.display()
        ))
    };
    let v2 = (|| root.sub("docker")?.sub("registry")?.sub("v2"))().map_err(|e| match e {
        Error::Io { source, path, .. } => match source.raw_os_error() {
            Some(c) if c == nix::errno::Errno::ENOENT as i32 => {
                not_store("it has no docker/registry/v2 directory".into())
            }
            Some(c)
                if c == nix::errno::Errno::ELOOP as i32
                    || c == nix::errno::Errno::ENOTDIR as i32 =>
            {
                not_store(format!(
                    "{} is a symlink or not a directory",
                    path.display()
                ))
            }
            _ => Error::Io {
                op: "opening",
                path,
                source,
            },
        },
        e => e,
    })?;
    Ok(Store { root, v2 })
}

/// Runs the pipeline and returns the report (also for a dry run).
///
/// Nothing is written before the last point where the run can refuse: the lock is an `flock`
/// on the root directory (no file), the state directory and the trash are created only once
/// the plan, the live guard, the hazard checks and the registry binary all said yes. A dry run
/// never writes at all. A refusal that can only come later (the registry's own dry run) puts
/// everything back from the trash, so exit 3 still means "nothing was changed".
pub fn run(settings: &Settings) -> Result<Report> {
    let mut timer = crate::timing::Timer::default();
    let loc = locate(settings)?;
    if let config::Backend::S3(s3) = &loc.backend {
        return run_object(settings, &loc, s3);
    }
    if settings.store == cli::StorePolicy::SkipMissing
        && loc.root.is_dir()
        && !loc.root.join("docker/registry/v2").exists()
    {
        println!(
            "regclean: {} holds no registry store yet (nothing pushed): nothing to do",
            loc.root.display()
        );
        return Err(Error::NothingToDo);
    }
    let store = open_store(&loc)?;
    tracing::info!("storage root {}", loc.root.display());
    let _lock = lock::acquire(&store.root, settings.wait)?;
    let dry = settings.mode == Mode::DryRun;
    let leftover = match open_state(&store.root)? {
        Some(s) => trash::leftover_runs(&s)?,
        None => 0,
    };
    let repos_dir = store.v2.sub_opt("repositories")?;

    timer.lap("start");
    crate::progress::phase(format_args!("scanning {}", loc.root.display()));
    let inv = scan::scan(&store.v2)?;
    timer.lap("scan");
    for o in &inv.oddities {
        tracing::info!("odd entry {} ({:?}): {}", o.path, o.kind, o.detail);
    }
    let request = with_activity(&settings.request, &loc.root)?;
    let mut plan = plan::plan(&inv, &request, SystemTime::now());
    if let Some(why) = &plan.over_limit {
        return Err(Error::Unsafe(why.clone()));
    }
    // A run killed after removal and before pruning recorded its scope in its trash: prune
    // there too, so the rerun ends in the store the killed run would have left.
    if let (plan::PruneScope::Repositories(scope), Some(state)) =
        (&mut plan.prune_scope, open_state(&store.root)?)
    {
        scope.extend(trash::leftover_scopes(&state));
    }
    timer.lap("plan");

    // Everything that can refuse does so here, before the first change.
    crate::progress::phase("planning and predicting what collection frees");
    let serving = crate::live::serving(&loc.root);
    let supervised = !dry
        && settings.gc.request == collect::GcRequest::Only
        && crate::supervise::control::listening(&loc.root);
    let mut prep = collect::prepare(
        &settings.gc,
        collect::Inputs {
            dry_run: dry,
            store: &crate::storage::Filesystem { v2: &store.v2 },
            repos_dir: repos_dir.as_ref(),
            inv: &inv,
            plan: &plan,
            serving,
            supervised,
            config: loc.config.as_ref(),
            now: SystemTime::now(),
        },
    )?;
    // The last refusal points: what the collector needs (a root it can be given), and where
    // the trash can go (same mount as `repositories/`).
    let gc_cfg = match (
        prep.run && prep.report.collector == collect::Collector::Registry,
        dry,
    ) {
        (true, false) => Some(collect::gc_config(
            loc.config
                .as_ref()
                .filter(|c| c.yaml.get("version").is_some())
                .map(|c| c.path.as_path()),
            &loc.root,
        )?),
        _ => None,
    };
    if let (Some(r), false) = (&repos_dir, dry) {
        check_trash_mount(&store, r)?;
    }
    timer.lap("predict");
    for m in &plan.missing {
        match settings.missing {
            MissingPolicy::Fail => tracing::error!("missing target {}: {}", m.target, m.reason),
            _ => tracing::info!("missing target {} (ignored): {}", m.target, m.reason),
        }
    }

    let changes = match (&repos_dir, dry) {
        (Some(r), false) => change(
            settings,
            &loc,
            &store,
            r,
            &inv,
            &plan,
            &mut prep,
            gc_cfg.as_ref(),
            &mut timer,
        )?,
        _ => Changes::planned(&plan),
    };
    timer.lap("report");
    let mut report = build_report(&loc, dry, plan, prep, inv.oddities, changes, timer);
    report.leftover_trash_runs = leftover;
    report.exit_code = report.exit(settings.missing).code();
    Ok(report)
}

/// The report of a run, from what each stage produced (one shape for every storage).
fn build_report(
    loc: &Location,
    dry: bool,
    plan: plan::Plan,
    prep: collect::Prepared,
    oddities: Vec<crate::scan::Oddity>,
    changes: Changes,
    timer: crate::timing::Timer,
) -> Report {
    Report {
        root: loc.root.display().to_string(),
        root_source: loc.root_source,
        config: loc.config.as_ref().map(|c| c.path.display().to_string()),
        dry_run: dry,
        rolled_back: changes.rolled_back,
        removals: changes.outcomes,
        missing: plan.missing,
        unmatched: plan.unmatched,
        no_policy: plan.no_policy,
        // Attachments that go with their subject are reported with the pruning, not as kept.
        kept: plan
            .kept
            .into_iter()
            .filter(|k| {
                !prep
                    .report
                    .pruned
                    .iter()
                    .any(|p| p.repo == k.repo && p.attachments.contains(&k.tag))
            })
            .collect(),
        leftover_trash_runs: 0,
        deleted: changes.deleted,
        oddities,
        gc: prep.report,
        errors: changes.errors,
        timings_ms: timer,
        exit_code: 0,
        supervisor: None,
        spare: crate::report::Spare {
            tags: plan.protected.clone(),
            manifests: plan.pinned.clone(),
        },
        object_requests: None,
        state_root: None,
    }
}

/// The pipeline on object storage (the registry's `s3` driver): the same scan → plan →
/// predict → report through [`crate::storage::Storage`], with the bucket's own change stage
/// ([`crate::storage::s3::change`]: lock object, ordered batched deletes).
///
/// Refusals, all before any request that writes: pruning or collection without
/// `--registry-stopped` and without a supervisor (no live guard sees registries on other
/// hosts; removal alone is allowed; next to `regclean supervise` the collection is its
/// read-only cycle's), the registry's collector (regclean's native sweep is the point here),
/// and policies on pull activity no supervisor recorded. A dry run writes nothing, not even
/// the lock object.
fn run_object(
    settings: &Settings,
    loc: &Location,
    s3: &crate::storage::s3::settings::S3Settings,
) -> Result<Report> {
    use crate::storage::s3::{change as object_change, S3Store};
    use crate::storage::Storage;
    let mut timer = crate::timing::Timer::default();
    let dry = settings.mode == Mode::DryRun;
    let collects = settings.gc.request != collect::GcRequest::Skip;
    // A supervisor (`regclean supervise`, its state in a local directory) serves this bucket
    // here: removal now, collection in its read-only cycle, as next to a supervised
    // filesystem store.
    let state_root = crate::supervise::control::object_state_root(s3);
    let may_serve = settings.registries == cli::Registries::MayServe;
    let supervised =
        collects && !dry && may_serve && crate::supervise::control::listening(&state_root);
    // `--gc-while-serving` would sweep here, next to the supervisor's writable registry.
    let overridden = settings.gc.live == collect::LivePolicy::Override;
    if collects && !dry && may_serve && (!supervised || overridden) {
        return Err(Error::Unsafe(format!(
            "{}: pruning and collection on object storage need every registry serving this bucket stopped or read-only, and no guard can see registries on other hosts: stop them (or make them read-only), then run again with --registry-stopped; or remove only, with --no-gc; or run the registry under `regclean supervise`, whose read-only cycle collects (no supervisor listens in {}). Nothing was changed",
            loc.root.display(),
            state_root.join(STATE_DIR).display()
        )));
    }
    if settings.gc.collector == collect::CollectorChoice::Registry {
        return Err(Error::Usage(format!(
            "{}: --collector registry is not available on object storage (the registry's collector issues one request per object; regclean's native sweep is the fast path): use --collector native or auto",
            loc.root.display()
        )));
    }
    // Pull activity, when a policy asks for it: recorded by a supervisor in its local state.
    let request = with_activity(&settings.request, &state_root)?;
    let store = S3Store::open(s3)?;
    let bucket = store.bucket.clone();
    tracing::info!("object store {}", bucket.url);
    let lock = match dry {
        true => None,
        false => Some(object_change::acquire(bucket.clone(), settings.wait)?),
    };
    timer.lap("start");
    crate::progress::phase(format_args!("listing {}", bucket.url));
    let inv = store.scan()?;
    timer.lap("scan");
    let mut plan = plan::plan(&inv, &request, SystemTime::now());
    if let Some(why) = &plan.over_limit {
        return Err(Error::Unsafe(why.clone()));
    }
    if let plan::PruneScope::Repositories(scope) = &mut plan.prune_scope {
        scope.extend(object_change::pending_scope(&bucket)?);
    }
    timer.lap("plan");
    crate::progress::phase("planning and predicting what collection frees");
    let gc = collect::GcSettings {
        collector: collect::CollectorChoice::Native,
        ..settings.gc.clone()
    };
    let mut prep = collect::prepare(
        &gc,
        collect::Inputs {
            dry_run: dry,
            store: &store,
            repos_dir: None,
            inv: &inv,
            plan: &plan,
            serving: match supervised {
                true => vec![crate::live::Serving {
                    pid: 0,
                    cmdline: "regclean supervise".into(),
                    readonly: false,
                    reason: format!(
                        "its control socket is in {}; it collects in its read-only cycle",
                        state_root.join(STATE_DIR).display()
                    ),
                }],
                false => Vec::new(),
            },
            supervised,
            config: loc.config.as_ref(),
            now: SystemTime::now(),
        },
    )?;
    if settings.registries == cli::Registries::MayServe {
        // Removal next to registries that may serve: a removed repository keeps its
        // `_layers` (a re-push while a registry caches blob descriptors would lose them).
        prep.layers = apply::Layers::Keep;
        prep.report.layers_left = plan
            .removals
            .iter()
            .filter(|r| matches!(r.what, plan::What::Repository { .. }))
            .map(|r| r.repo.clone())
            .collect();
    }
    timer.lap("predict");
    let changes = if dry {
        Changes::planned(&plan)
    } else {
        let lock = lock.as_ref().expect("a run that changes holds the lock");
        let (outcomes, done) = object_change::apply(
            &bucket,
            lock,
            &plan,
            &mut prep,
            &store.holding.lock().unwrap(),
        );
        Changes {
            outcomes,
            errors: done.errors,
            deleted: Deleted {
                files: done.keys,
                dirs: done.dirs,
                bytes: prep.report.freed_bytes,
                ..Deleted::default()
            },
            rolled_back: false,
        }
    };
    timer.lap("delete");
    let mut report = build_report(loc, dry, plan, prep, inv.oddities, changes, timer);
    report.object_requests = Some(bucket.requests.load(std::sync::atomic::Ordering::Relaxed));
    report.state_root = Some(state_root);
    report.exit_code = report.exit(settings.missing).code();
    Ok(report)
}

/// The request with the supervisor's pull activity, when a policy asks for it. A policy with
/// `pulled_within` or `keep_pulled_within` and no activity database is refused (exit 2):
/// without the record every tag would look never pulled.
fn with_activity(req: &plan::Request, root: &std::path::Path) -> Result<plan::Request> {
    let mut req = req.clone();
    if req.retention.as_ref().is_some_and(|p| p.uses_pulls()) {
        match crate::activity::load(root).map_err(Error::Usage)? {
            Some(p) => req.activity = Some(std::sync::Arc::new(p)),
            None => {
                return Err(Error::Usage(format!(
                    "the policy uses pulled_within/keep_pulled_within, but no pull activity was recorded for this store ({} does not exist): run the registry under `regclean supervise`, which records every pull",
                    crate::activity::path(root).display()
                )))
            }
        }
    }
    Ok(req)
}

/// What the changing stages did.
#[derive(Default)]
struct Changes {
    outcomes: Vec<apply::Outcome>,
    errors: Vec<String>,
    deleted: Deleted,
    rolled_back: bool,
}

impl Changes {
    /// A dry run (or nothing to change): every planned removal, none carried out.
    fn planned(plan: &plan::Plan) -> Changes {
        Changes {
            outcomes: plan
                .removals
                .iter()
                .map(|r| apply::Outcome {
                    removal: r.clone(),
                    error: None,
                })
                .collect(),
            ..Changes::default()
        }
    }
}

/// The changing stages, once nothing before them refused: apply (removal, pruning, leftover
/// `_layers`), gc (the native sweep, or the registry's cross-checked collector), then commit
/// (emptied directories and the trash go) or, when the registry's dry run refused after
/// removal, roll back from the trash.
#[allow(clippy::too_many_arguments)]
fn change(
    settings: &Settings,
    loc: &Location,
    store: &Store,
    r: &DirFd,
    inv: &scan::Inventory,
    plan: &plan::Plan,
    prep: &mut collect::Prepared,
    gc_cfg: Option<&crate::gc::GcConfig>,
    timer: &mut crate::timing::Timer,
) -> Result<Changes> {
    let mut c = Changes::default();
    let (t, made) = create_trash(&store.root, r)?;
    if let plan::PruneScope::Repositories(scope) = &plan.prune_scope {
        t.record_scope(scope)?;
    }

    // apply
    crate::progress::phase(format_args!(
        "removing {} tag(s)/repositories and pruning",
        plan.removals.len()
    ));
    c.outcomes = apply::apply(r, &t, &plan.removals, prep.layers);
    if prep.run {
        c.errors
            .extend(collect::apply_prune(r, &t, &prep.report.pruned));
        c.errors.extend(collect::apply_orphan_layers(
            r,
            &t,
            &prep.report.layers_removed,
        ));
    }
    timer.lap("apply");

    // gc
    let store_changed_unexpectedly =
        c.outcomes.iter().any(|x| x.error.is_some()) || !c.errors.is_empty();
    if prep.run && prep.report.collector == collect::Collector::Native {
        c.errors.extend(collect::sweep_native(
            prep,
            &store.v2,
            Some(r),
            &t,
            store_changed_unexpectedly,
        ));
        timer.lap("sweep");
    }
    // Nothing unreachable and nothing pruned: the registry's collector would sweep nothing
    // (its dry run is tested to match the prediction), so spare two walks.
    if prep.run
        && prep.report.collector == collect::Collector::Registry
        && prep.report.predicted_blobs == 0
        && prep.report.pruned.is_empty()
    {
        prep.run = false;
        prep.report.reason = Some("nothing to collect: no blob became unreachable".into());
        prep.report.restart_required = false;
    }
    if let (true, Some(bin), Some(cfg)) = (prep.run, prep.bin.clone(), gc_cfg) {
        if let Err(e) = collect::collect(&settings.gc, prep, &bin, cfg, &loc.root, &store.v2, timer)
        {
            prep.report.status = collect::GcStatus::Failed;
            prep.report.reason = Some("the registry's garbage collector failed; see errors".into());
            c.errors.push(e.to_string());
        }
    }

    // commit, or roll back
    if prep.report.status == collect::GcStatus::Refused {
        // The registry's dry run disagreed after removal: put everything back.
        let taken = t.taken();
        let undo = t.undo(&store.v2);
        c.rolled_back = undo.is_empty();
        if c.rolled_back {
            remove_made_state(&store.root, made);
        } else {
            prep.report.status = collect::GcStatus::Failed;
            c.errors.push(format!(
                "collection was refused after removal; {} of {taken} removed entries were put back, {} could not be (they stay in the trash, removed for the registry):",
                taken - undo.len(),
                undo.len()
            ));
            c.errors.extend(undo);
        }
    } else {
        let emptied = plan
            .removals
            .iter()
            .filter(|x| matches!(x.what, plan::What::Repository { .. }))
            .map(|x| x.repo.as_str())
            .chain(prep.report.layers_removed.iter().map(String::as_str))
            // Left by a removal killed before its commit; not next to a writable registry (a
            // push may be about to fill a new directory).
            .chain(
                inv.empty_dirs
                    .iter()
                    .filter(|_| prep.layers == apply::Layers::Remove)
                    .map(String::as_str),
            );
        c.errors.extend(apply::remove_emptied(r, emptied));
        crate::progress::phase("deleting the trash");
        c.deleted.add(t.finish());
    }
    timer.lap("delete");
    Ok(c)
}

/// Opens `<root>/.regclean` if it exists. Anything else there than a directory (a planted
/// symlink, a file) is refused with a message that names it: regclean neither follows nor
/// removes it.
fn open_state(root: &DirFd) -> Result<Option<DirFd>> {
    root.sub_opt(STATE_DIR).map_err(|e| match e {
        Error::Io { path, source, .. }
            if matches!(
                source.raw_os_error(),
                Some(c) if c == nix::errno::Errno::ELOOP as i32 || c == nix::errno::Errno::ENOTDIR as i32
            ) =>
        {
            Error::Unsafe(format!(
                "{} is a symlink or not a directory, not regclean's state directory (planted?): remove it, then run again; nothing was changed",
                path.display()
            ))
        }
        e => e,
    })
}

/// Refuses (nothing written yet) unless `repositories/` and regclean's state directory (if it
/// exists, and its trash) lie on the storage root's own mount: a removal is a rename into the
/// trash, and a bind mount there (even of the same file system) would either make the renames
/// fail halfway or let regclean create and delete files outside the store.
fn check_trash_mount(store: &Store, repos: &DirFd) -> Result<()> {
    let root_mount = store.root.mount_key()?;
    let mut dirs = vec![(repos.mount_key()?, repos.path().to_path_buf())];
    if let Some(state) = open_state(&store.root)? {
        dirs.push((state.mount_key()?, state.path().to_path_buf()));
        if let Some(t) = state.sub_opt("trash")? {
            dirs.push((t.mount_key()?, t.path().to_path_buf()));
        }
    }
    for (m, path) in dirs {
        if m != root_mount {
            return Err(Error::Unsafe(format!(
                "{} is not on the storage root's mount (a mount point, e.g. a bind mount): removal by atomic rename into {} is impossible; nothing was changed",
                path.display(),
                store.root.child_path(STATE_DIR).display()
            )));
        }
    }
    Ok(())
}

/// Which state directories a run created (so that a rollback removes exactly those).
#[derive(Debug, Clone, Copy)]
struct Made {
    state: bool,
    trash: bool,
}

/// Creates `<root>/.regclean/trash/<run>` — the first write of a run — once
/// [`check_trash_mount`] said the mounts agree.
fn create_trash(root: &DirFd, repos: &DirFd) -> Result<(Trash, Made)> {
    let mut made = Made {
        state: root.sub_opt(STATE_DIR)?.is_none(),
        trash: true,
    };
    let state = root.ensure_sub(STATE_DIR)?;
    made.trash = state.sub_opt("trash")?.is_none();
    let t = Trash::create(&state, repos)?;
    Ok((t, made))
}

/// After a rollback: removes the state directories this run created (they are empty by
/// then), so the root is as it was.
fn remove_made_state(root: &DirFd, made: Made) {
    if made.trash {
        if let Ok(Some(s)) = root.sub_opt(STATE_DIR) {
            let _ = s.rmdir_if_empty("trash");
        }
    }
    if made.state {
        let _ = root.rmdir_if_empty(STATE_DIR);
    }
}

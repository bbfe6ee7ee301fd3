//! The command line in two stages, as ripgrep does: [`Args`] is what the user typed (clap
//! derive), [`Settings`] is what the pipeline receives — validated, with modes as enums.

use crate::attach::Attachments;
use crate::collect::{GcRequest, GcSettings, HazardPolicy, LivePolicy, Pruning};
use crate::exit::Exit;
use crate::lock::WaitMode;
use crate::plan::{Request, Scope};
use crate::policy::Policies;
use crate::reach::Referrers;
use crate::retention::{Order, Rule};
use crate::target::Target;
use clap::Parser;
use std::ffi::OsString;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
TARGETS:
  REPO          remove the repository's _manifests, _layers and _uploads; nested repositories
                (REPO/child) stay, the directory goes only if it ends up empty
  REPO:TAG      remove one tag (_manifests/tags/TAG); never tags/ itself, never the repository
  Patterns      '*' and '?' within one name component or in the tag, '**' for any depth:
                'app:pr-*'  'team/*'  'team/**'  '**/cache:tmp-*'  (quote them for the shell)

EXIT CODES:
  0  done (or nothing to do; collection deferred because a writable registry serves counts as done)
  1  something failed, or a named target did not exist (see --ignore-missing)
  2  invalid usage or input; nothing was changed
  3  refused as unsafe; nothing was changed (lock held, non-filesystem storage driver, store
     hazards, collection requested next to a writable serving registry)

GARBAGE COLLECTION:
  After removal regclean prunes untagged manifests itself (following indexes recursively,
  keeping referrers of kept manifests) and runs the registry's own `garbage-collect` without
  --delete-untagged, after checking its dry run against what remaining tags need. Next to a
  writable serving registry this is deferred (exit 0) and the report says how to free the disk.

ENVIRONMENT:
  REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY  storage root (as for the registry; --root wins)
  REGISTRY_CONFIGURATION_PATH                registry config file (--config wins)
  REGISTRY_STORAGE                           storage driver override (as for the registry)
  RUST_LOG                                   log filter (e.g. regclean=debug)
  REGCLEAN_KEEP_LAST, REGCLEAN_OLDER_THAN,   the retention options, for the entrypoint hook
  REGCLEAN_KEEP (one regex; use '|' for more), REGCLEAN_ALL=true,
  REGCLEAN_KEEP_UNTAGGED=true, REGCLEAN_PRUNE_REFERRERS=true,
  REGCLEAN_COLLECTOR=native|registry|auto, REGCLEAN_POLICY=FILE,
  REGCLEAN_KEEP_ATTACHMENTS=true

RETENTION:
  With --keep-last/--older-than, TARGETs select candidate tags (REPO = all its tags,
  'REPO:PATTERN' = the matching ones) and the policy picks which go; --all applies it to every
  repository. A tag goes only when it is beyond the N newest (push time = mtime of its
  current/link; equal times ordered by name) AND older than DURATION; --keep tags never go and
  do not count. --keep-last 0 is refused (name 'REPO:*' to remove every tag).

POLICY FILE (--policy FILE, YAML; the format with a complete example is in README.md,
\"Policy file\"):
  version: 1
  protect: [\"**:latest\"]                 REPO:TAG patterns nothing removes, never counted
  limits: {max_delete_percent: 30}       refuse (exit 3, nothing changed) above this
  policies:                              the FIRST policy matching a repository applies;
    - repositories: [\"team0/**\"]         repositories no policy matches are untouched
      exclude: [\"team0/keepme\"]
      keep: [{last: 3, order: semver}, {tags: '^release-'}, {pushed_within: 30d}]
      untagged: delete                   or keep

ATTACHMENTS:
  Tags sha256-<digest>.sig/.att/.sbom (cosign) and sha256-<digest> (OCI referrers fallback)
  are attachments of the manifest <digest>: they never count toward retention, stay while
  it stays and go with it; orphans are pruned. --keep-attachments makes them plain tags.";

/// What the user typed.
#[derive(Debug, Parser)]
#[command(
    name = "regclean",
    version,
    about = "Safely remove tags and repositories from a Distribution registry's filesystem store",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Repositories (REPO) and tags (REPO:TAG) to remove; patterns allowed.
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,

    /// Print the plan and change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Storage root (the directory holding docker/registry/v2).
    /// [default: the registry config's storage.filesystem.rootdirectory, else /var/lib/registry]
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Registry config file.
    /// [default: /etc/docker/registry/config.yml, else /etc/distribution/config.yml]
    #[arg(long, value_name = "FILE", env = "REGISTRY_CONFIGURATION_PATH")]
    pub config: Option<PathBuf>,

    /// A named target that does not exist is not an error (exit 0): for idempotent scripts.
    #[arg(long)]
    pub ignore_missing: bool,

    /// When the storage root exists but holds no registry store yet (a fresh volume), say so
    /// and exit 0 instead of 2: for the entrypoint hook.
    #[arg(long, env = "REGCLEAN_SKIP_MISSING_STORE")]
    pub skip_missing_store: bool,

    /// Wait for another regclean on the same store to finish instead of refusing (exit 3).
    #[arg(long)]
    pub wait: bool,

    /// Print one JSON report on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,

    /// Retention: keep the N most recently pushed tags of each repository in scope (N ≥ 1).
    #[arg(long, value_name = "N", env = "REGCLEAN_KEEP_LAST")]
    pub keep_last: Option<usize>,

    /// Retention: only tags pushed longer ago than DURATION may go (90d, 12h, 2w).
    #[arg(long, value_name = "DURATION", env = "REGCLEAN_OLDER_THAN")]
    pub older_than: Option<String>,

    /// Retention: never remove tags matching REGEX (repeatable; not anchored unless you
    /// anchor it: '^v[0-9]'); they do not count toward --keep-last.
    #[arg(long, value_name = "REGEX", env = "REGCLEAN_KEEP")]
    pub keep: Vec<String>,

    /// Retention from a policy file (YAML; see README "Policy file"): scoped keep rules,
    /// protected tags and limits. Without TARGETs it covers every repository a policy
    /// matches; with TARGETs, only their tags. Replaces --keep-last/--older-than/--keep.
    #[arg(long, value_name = "FILE", env = "REGCLEAN_POLICY")]
    pub policy: Option<PathBuf>,

    /// Attachments (cosign's sha256-DIGEST.sig/.att/.sbom tags, OCI referrers fallback
    /// tags sha256-DIGEST) are plain tags: they count toward retention and stay until
    /// removed. By default they never count, stay with their subject and go with it.
    #[arg(long, env = "REGCLEAN_KEEP_ATTACHMENTS")]
    pub keep_attachments: bool,

    /// With --gc-only: prune only in these repositories (repeatable). Used by the supervisor's
    /// collection cycle to keep a triggering run's pruning scope.
    #[arg(long, value_name = "REPO", hide = true, requires = "gc_only")]
    pub prune_in: Vec<String>,

    /// With --gc-only: keep this untagged manifest as if tagged (repeatable; REPO@DIGEST).
    /// Used by the supervisor's cycle for a policy's `untagged: {keep_pulled_within}`.
    #[arg(long, value_name = "REPO@DIGEST", hide = true, requires = "gc_only")]
    pub keep_manifest: Vec<String>,

    /// With --gc-only: a tag pruning never removes (repeatable; REPO:TAG). Used by the
    /// supervisor's cycle for a policy file's `protect`.
    #[arg(long, value_name = "REPO:TAG", hide = true, requires = "gc_only")]
    pub protect_tag: Vec<String>,

    /// Write the run's outcome in Prometheus text format to FILE, atomically (last success
    /// timestamp, exit code, duration per phase, tags/manifests/blobs/bytes removed, findings),
    /// e.g. for node_exporter's textfile collector.
    #[arg(long, value_name = "FILE", env = "REGCLEAN_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,

    /// Retention scope: every repository (instead of TARGETs).
    #[arg(long, env = "REGCLEAN_ALL")]
    pub all: bool,

    /// Read-only integrity check of the TARGETs (default: the whole store): broken tags,
    /// missing blobs and links, GC hazards, leftover trash. Exit 0 clean, 1 broken. With
    /// --policy, the file's `protect` list informs the advice (what pruning keeps).
    #[arg(long)]
    pub check: bool,

    /// With --check: also hash every blob and compare with its digest (reads every byte).
    #[arg(long, requires = "check")]
    pub verify_content: bool,

    /// Remove only: no pruning, no garbage collection (safe while the registry serves).
    #[arg(long, conflicts_with = "gc_only")]
    pub no_gc: bool,

    /// No removal: prune untagged manifests and run the registry's garbage collector.
    /// Refused (exit 3) while a writable registry serves the store.
    #[arg(long)]
    pub gc_only: bool,

    /// Do not prune untagged manifests before collecting (their blobs then stay).
    #[arg(long, env = "REGCLEAN_KEEP_UNTAGGED")]
    pub keep_untagged: bool,

    /// Also prune untagged referrers (signatures, SBOMs, attestations) of kept manifests.
    #[arg(
        long,
        conflicts_with = "keep_untagged",
        env = "REGCLEAN_PRUNE_REFERRERS"
    )]
    pub prune_referrers: bool,

    /// Collect despite store hazards (repositories invisible to GC, '_' files, malformed
    /// links, missing manifest blobs): the registry may then delete live blobs or fail.
    #[arg(long)]
    pub allow_hazards: bool,

    /// RISK OF DATA LOSS: prune and collect even though a writable registry serves this store;
    /// layers of pushes running meanwhile can be deleted, leaving corrupt images.
    #[arg(long)]
    pub gc_while_serving: bool,

    /// Object storage (`s3` driver): you state that every registry serving this bucket is
    /// stopped or read-only. No live guard can see registries on other hosts, so pruning and
    /// collection on object storage are refused without it (exit 3); removal alone
    /// (`--no-gc`) is allowed while registries serve. Ignored on a filesystem store, where
    /// the live guard looks for itself.
    #[arg(long)]
    pub registry_stopped: bool,

    /// Which collector frees the blobs: `native` (regclean deletes exactly the blobs nothing
    /// references, with the same safety as every removal), `registry` (the registry's own
    /// garbage-collect, cross-checked), or `auto`: the registry's when its binary is found,
    /// else native.
    #[arg(
        long,
        value_enum,
        value_name = "WHICH",
        env = "REGCLEAN_COLLECTOR",
        default_value = "auto"
    )]
    pub collector: CollectorArg,

    /// The registry binary that runs garbage-collect.
    /// [default: /bin/registry, else registry, else docker-registry on PATH]
    #[arg(long, value_name = "PATH")]
    pub registry_bin: Option<PathBuf>,

    /// More logs on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// `--collector` as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CollectorArg {
    /// The registry's collector when its binary is found, else native.
    Auto,
    /// regclean's own collector.
    Native,
    /// The registry's `garbage-collect`.
    Registry,
}

/// Whether to change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plan and report only.
    DryRun,
    /// Plan and carry out.
    Apply,
    /// Read-only integrity check (`--check`).
    Check,
}

/// What a root without a registry store means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorePolicy {
    /// A usage error (exit 2): a typo'd root must not look like success.
    Require,
    /// Nothing to do, exit 0 (`--skip-missing-store`, for a fresh volume at container start).
    SkipMissing,
}

/// How deep `--check` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Layout, links, manifests and blob presence.
    Structure,
    /// Also hash every blob (`--verify-content`).
    Content,
}

/// What a named target that does not exist means for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingPolicy {
    /// Exit 1 (the default: a typo must not look like success).
    Fail,
    /// Exit 0 (`--ignore-missing`).
    Ignore,
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Readable text.
    Human,
    /// One JSON object.
    Json,
}

/// The resolved settings the pipeline runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Validated targets and the retention policy.
    pub request: Request,
    /// Dry run, apply or check.
    pub mode: Mode,
    /// `--verify-content`.
    pub verify: Verify,
    /// `--root` / `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`.
    pub root: Option<PathBuf>,
    /// `--config` / `REGISTRY_CONFIGURATION_PATH`.
    pub config: Option<PathBuf>,
    /// `--ignore-missing`.
    pub missing: MissingPolicy,
    /// `--wait`.
    pub wait: WaitMode,
    /// `--skip-missing-store`.
    pub store: StorePolicy,
    /// `--json`.
    pub output: Output,
    /// Default log filter (`RUST_LOG` overrides it).
    pub log_filter: &'static str,
    /// The gc stage.
    pub gc: GcSettings,
    /// `--metrics-file`.
    pub metrics_file: Option<PathBuf>,
    /// `--registry-stopped`.
    pub registries: Registries,
}

/// What the operator says of the registries serving an object-storage store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registries {
    /// Nothing said: they may be serving and writable (default).
    MayServe,
    /// `--registry-stopped`: stopped or read-only.
    StoppedOrReadOnly,
}

/// Parses the command line. On `--help`/`--version` or a usage error, prints and returns the
/// exit code instead.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Settings, Exit> {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return Err(if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Done
            });
        }
    };
    resolve(args).map_err(|errors| {
        for e in errors {
            eprintln!("regclean: {e}");
        }
        Exit::Usage
    })
}

/// The retention policies, if an option asks for them; problems go to `errors`.
fn retention_of(args: &Args, errors: &mut Vec<String>) -> Option<Policies> {
    let flags = args.keep_last.is_some() || args.older_than.is_some();
    if let Some(path) = &args.policy {
        if flags || !args.keep.is_empty() {
            errors.push("--policy replaces --keep-last, --older-than and --keep (or their REGCLEAN_* variables): put those rules in the policy file".into());
        }
        return match Policies::load(path) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(e);
                None
            }
        };
    }
    if !flags {
        if !args.keep.is_empty() {
            errors.push(
                "--keep only protects tags from --keep-last and --older-than; add one of them"
                    .into(),
            );
        }
        return None;
    }
    let mut keep = Vec::new();
    match args.keep_last {
        Some(0) => errors.push(
            "--keep-last 0 would keep nothing: to remove every tag of a repository, name 'REPO:*'"
                .into(),
        ),
        Some(n) => keep.push(Rule::Last {
            n,
            order: Order::Pushed,
        }),
        None => {}
    }
    if let Some(d) = &args.older_than {
        match humantime::parse_duration(d) {
            Ok(x) => keep.push(Rule::PushedWithin(x)),
            Err(e) => errors.push(format!(
                "invalid --older-than '{d}': {e} (examples: 90d, 12h, 2w)"
            )),
        }
    }
    for k in &args.keep {
        match regex::Regex::new(k) {
            Ok(re) => keep.push(Rule::Tags(re)),
            Err(e) => errors.push(format!(
                "invalid --keep regex '{k}': {}",
                e.to_string().lines().last().unwrap_or("")
            )),
        }
    }
    Some(Policies::from_flags(keep))
}

/// Turns typed arguments into settings; every problem is one line.
pub fn resolve(args: Args) -> Result<Settings, Vec<String>> {
    let mut errors = Vec::new();
    let mut targets = Vec::new();
    for t in &args.targets {
        match Target::parse(t) {
            Ok(x) => targets.push(x),
            Err(why) => errors.push(format!("invalid target '{t}': {why}")),
        }
    }
    let retention = retention_of(&args, &mut errors);
    let selects = !args.targets.is_empty() || args.all || args.policy.is_some();
    if args.check {
        let gc_flags = args.gc_only
            || args.no_gc
            || args.keep_untagged
            || args.prune_referrers
            || args.gc_while_serving
            || args.allow_hazards;
        // A policy file is read for its `protect` alone: the advice then knows what pruning
        // spares.
        let flags = retention.is_some() && args.policy.is_none();
        if flags || args.all || args.dry_run || gc_flags {
            errors.push("--check is read-only: it takes TARGETs (or none, for the whole store), --verify-content and --policy (for its protect list), not removal, retention or GC options".into());
        }
    } else if !selects && !args.gc_only {
        errors.push(if retention.is_some() {
            "a retention option applies to TARGET repositories or to --all; name them (regclean never cleans the whole registry by accident)".into()
        } else {
            "nothing to do: name at least one TARGET (REPO or REPO:TAG), or pass --gc-only; see --help".into()
        });
    }
    if selects && args.gc_only {
        errors.push(
            "--gc-only removes nothing: drop the TARGETs/--all/retention, or drop --gc-only".into(),
        );
    }
    if args.all && retention.is_none() && args.policy.is_none() {
        errors.push("--all needs --keep-last or --older-than (to remove every tag of a repository, name 'REPO:*')".into());
    }
    if args.all && !args.targets.is_empty() {
        errors.push(
            "--all and TARGETs exclude each other: --all already means every repository".into(),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Settings {
        request: Request {
            targets,
            scope: if args.all || (args.policy.is_some() && args.targets.is_empty()) {
                Scope::All
            } else {
                Scope::Targets
            },
            retention,
            prune_in: (!args.prune_in.is_empty()).then(|| args.prune_in.iter().cloned().collect()),
            activity: None,
            keep_manifests: args
                .keep_manifest
                .iter()
                .filter_map(|s| {
                    let (r, d) = s.split_once('@')?;
                    Some((r.to_string(), crate::digest::Digest::parse(d.as_bytes())?))
                })
                .collect(),
            protect_tags: args
                .protect_tag
                .iter()
                .filter_map(|s| {
                    let (r, t) = s.split_once(':')?;
                    Some((r.to_string(), t.to_string()))
                })
                .collect(),
            attachments: if args.keep_attachments {
                Attachments::Plain
            } else {
                Attachments::Follow
            },
        },
        mode: match (args.check, args.dry_run) {
            (true, _) => Mode::Check,
            (false, true) => Mode::DryRun,
            (false, false) => Mode::Apply,
        },
        verify: if args.verify_content {
            Verify::Content
        } else {
            Verify::Structure
        },
        // The environment form is read as the registry reads it: a YAML value (a quoted
        // `"/data"` from an env file is /data).
        root: args.root.or_else(|| {
            std::env::var("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
                .ok()
                .map(|v| PathBuf::from(crate::config::env_scalar(&v)))
        }),
        config: args.config,
        store: if args.skip_missing_store {
            StorePolicy::SkipMissing
        } else {
            StorePolicy::Require
        },
        missing: if args.ignore_missing {
            MissingPolicy::Ignore
        } else {
            MissingPolicy::Fail
        },
        wait: if args.wait {
            WaitMode::Wait
        } else {
            WaitMode::NoWait
        },
        output: if args.json {
            Output::Json
        } else {
            Output::Human
        },
        metrics_file: args.metrics_file.clone(),
        registries: if args.registry_stopped {
            Registries::StoppedOrReadOnly
        } else {
            Registries::MayServe
        },
        log_filter: match (args.quiet, args.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, _) => "debug",
        },
        gc: GcSettings {
            request: match (args.no_gc, args.gc_only) {
                (true, _) => GcRequest::Skip,
                (_, true) => GcRequest::Only,
                _ => GcRequest::Auto,
            },
            pruning: if args.keep_untagged {
                Pruning::Keep
            } else {
                Pruning::Untagged
            },
            referrers: if args.prune_referrers {
                Referrers::Prune
            } else {
                Referrers::Keep
            },
            hazards: if args.allow_hazards {
                HazardPolicy::Allow
            } else {
                HazardPolicy::Refuse
            },
            live: if args.gc_while_serving {
                LivePolicy::Override
            } else {
                LivePolicy::Guard
            },
            collector: match args.collector {
                CollectorArg::Auto => crate::collect::CollectorChoice::Auto,
                CollectorArg::Native => crate::collect::CollectorChoice::Native,
                CollectorArg::Registry => crate::collect::CollectorChoice::Registry,
            },
            registry_bin: args.registry_bin,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("regclean").chain(a.iter().copied())).unwrap()
    }

    #[test]
    fn every_invalid_target_is_reported() {
        let e = resolve(args(&["good:v1", "Bad/Name", "x:.t"])).unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[0].contains("'Bad/Name'"), "{}", e[0]);
        assert!(e[1].contains("'x:.t'"), "{}", e[1]);
    }

    #[test]
    fn no_target_is_a_usage_error() {
        assert!(resolve(args(&[])).is_err());
        assert!(resolve(args(&["--gc-only"])).is_ok());
        assert!(resolve(args(&["--gc-only", "app"])).is_err());
    }

    #[test]
    fn flags_become_modes() {
        let s = resolve(args(&["-n", "--json", "--wait", "--ignore-missing", "app"])).unwrap();
        assert_eq!(s.mode, Mode::DryRun);
        assert_eq!(s.output, Output::Json);
        assert_eq!(s.wait, WaitMode::Wait);
        assert_eq!(s.missing, MissingPolicy::Ignore);
    }
}

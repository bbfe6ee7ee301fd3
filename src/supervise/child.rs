//! Child processes of a PID-1 supervisor: every exit is reaped in one place (orphans that the
//! kernel re-parents to PID 1 included, so no zombie accumulates), and threads wait for the
//! exit of the pid they care about.
//!
//! Why not `std::process::Child::wait`: the supervisor reaps with `waitpid(-1)` on every
//! SIGCHLD (it must, as PID 1), which would steal the status from a `Child::wait` elsewhere.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Exit statuses of reaped children, until someone takes them.
///
/// A status nobody takes within [`UNCLAIMED`] is dropped: as PID 1 the supervisor also reaps
/// orphans it never started, and a stale status kept forever could be read by a later child
/// that the kernel gives the same pid. Every waiter asks right after spawning its child.
#[derive(Default)]
pub struct Reaper {
    exits: Mutex<HashMap<i32, (i32, Instant)>>,
    cv: Condvar,
}

/// How long an exit status waits for someone to take it.
pub const UNCLAIMED: Duration = Duration::from_secs(60);

impl Reaper {
    /// Reaps every child that has exited; returns them as (pid, exit code). A child killed by
    /// a signal gets 128 + the signal number, as a shell reports it.
    pub fn reap(&self) -> Vec<(i32, i32)> {
        let mut out = Vec::new();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw(), code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid.as_raw(), 128 + sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let now = Instant::now();
        let mut exits = self.exits.lock().expect("exits");
        exits.retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED);
        if !out.is_empty() {
            exits.extend(out.iter().map(|(pid, code)| (*pid, (*code, now))));
            self.cv.notify_all();
        }
        out
    }

    /// Waits until `pid` has exited and been reaped (at most `timeout`); its exit code.
    pub fn wait(&self, pid: i32, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let mut exits = self.exits.lock().expect("exits");
        loop {
            if let Some((code, _)) = exits.remove(&pid) {
                return Some(code);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            exits = self.cv.wait_timeout(exits, left).expect("exits").0;
        }
    }
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
}

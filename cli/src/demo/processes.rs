//! The demo's child processes: sidecars and apps, each in a process group of
//! its own, killed with the demo however it ends.
//!
//! Three layers make sure nothing outlives the demo: an orderly stop
//! (SIGTERM, then SIGKILL after a deadline) when the demo ends or is
//! interrupted; the same from `Drop` if it unwinds; and `PR_SET_PDEATHSIG`,
//! so the kernel kills every child if remoractl itself is killed. Children
//! have their own process group, so a terminal's Ctrl-C reaches remoractl
//! alone, which then stops them and still prints what it saw.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// One running child.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

#[derive(Default)]
pub struct Processes {
    running: Vec<Running>,
}

impl Processes {
    /// Starts `argv` with stdout and stderr in `log`.
    ///
    /// Call from the thread that lives as long as the demo (the main
    /// thread): the kernel's parent-death signal follows the thread that
    /// forked, not the process.
    pub fn spawn(&mut self, name: &str, argv: &[String], log: &Path) -> Result<()> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl took effect: nobody would kill us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", argv[0]))?;
        self.running.push(Running {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        });
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.running.iter().map(|r| r.child.id()).collect()
    }

    /// An error naming the first child that exited, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        for r in &mut self.running {
            if let Some(status) = r.child.try_wait()? {
                bail!(
                    "{} exited ({status}); the end of its log:\n{}",
                    r.name,
                    tail(&r.log, 2000)
                );
            }
        }
        Ok(())
    }

    /// Stops every child: SIGTERM to all (the client's sidecar, idle once
    /// the traffic stopped, exits at once and so closes its connections to
    /// the servers' sidecars, which then finish draining), then SIGKILL to
    /// whatever still runs after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        for r in &self.running {
            signal(r.child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        for r in &mut self.running {
            loop {
                match r.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.running.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child we have not reaped yet, so the pid is ours.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The last `max` bytes of a log file.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

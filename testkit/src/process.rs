//! Child processes that cannot outlive the test binary.
//!
//! Statics are never dropped, so the shared control plane is torn down two ways:
//! - an `atexit` handler kills and reaps the children and removes the state directory
//!   when the test binary exits normally (all tests done, or some failed);
//! - on Linux each child asks the kernel for `SIGKILL` when its parent dies
//!   (`PR_SET_PDEATHSIG`), which covers the binary being killed. The kernel sends that
//!   signal when the *thread* that forked the child exits, so every child is forked from
//!   one thread that lives as long as the process.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, Once, OnceLock, mpsc};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());
static DIRS_TO_REMOVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// Set to keep the state directory (logs, certificates, etcd data) after the run.
pub(crate) const KEEP_DIR_ENV: &str = "REMORA_KEEP_CONTROL_PLANE_DIR";

/// A process started by [`spawn`], identified by pid; the `Child` stays in the registry
/// so that the exit handler can reap it.
#[derive(Debug)]
pub(crate) struct ManagedProcess {
    pub name: &'static str,
    pub pid: u32,
    pub log: PathBuf,
}

impl ManagedProcess {
    /// The exit status if the process has already exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        children
            .iter_mut()
            .find(|c| c.id() == self.pid)
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }
}

/// Starts `command` with stdout and stderr appended to `log`, tied to this process's life.
pub(crate) fn spawn(
    name: &'static str,
    mut command: Command,
    log: &Path,
) -> io::Result<ManagedProcess> {
    install_exit_handler();
    let out = File::create(log)?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    die_with_parent(&mut command);

    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("the testkit spawner thread is gone"))?;
    let child = reply_rx
        .recv()
        .map_err(|_| io::Error::other("the testkit spawner thread is gone"))??;
    let pid = child.id();
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(child);
    Ok(ManagedProcess {
        name,
        pid,
        log: log.to_path_buf(),
    })
}

/// Removes `dir` when the test binary exits (unless REMORA_KEEP_CONTROL_PLANE_DIR is set).
pub(crate) fn remove_at_exit(dir: &Path) {
    install_exit_handler();
    DIRS_TO_REMOVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_path_buf());
}

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("remora-testkit-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop (and the thread that the
                // children's PDEATHSIG is tied to) runs until the process exits.
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the testkit spawner thread");
        tx
    })
}

#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only async-signal-safe libc calls are made.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

fn install_exit_handler() {
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
}

extern "C" fn cleanup_at_exit() {
    // try_lock: never block process exit on a lock some other thread holds; the
    // kernel's PDEATHSIG still kills the children then.
    if let Ok(mut children) = CHILDREN.try_lock() {
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        children.clear();
    }
    if std::env::var_os(KEEP_DIR_ENV).is_some() {
        return;
    }
    if let Ok(dirs) = DIRS_TO_REMOVE.try_lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

//! Shared helpers for Remora's end-to-end tests.
//!
//! - [`netns`]: pods as network namespaces on one node, for the sidecar
//!   end-to-end test (`tests/netns.rs`, docs/e2e-netns.md).
//! - [`workspace_bin`]: the workspace's binaries next to the test executable.
//! - [`prometheus`]: reading the sidecar's `/metrics`.
//! - [`echo`]: the echo app (`remora-echo`, and `remoractl demo`'s services).

pub mod echo;
pub mod netns;
pub mod prometheus;

use std::path::PathBuf;

/// `target/<profile>/<name>`, found from the running test executable
/// (`target/<profile>/deps/<test>-<hash>`). `cargo test --workspace` builds
/// every binary of the workspace before it runs tests; a test of one package
/// does not build another package's binaries, hence the message. Never run a
/// nested cargo from a test: it waits forever on the target directory's lock.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let mut bin = profile_dir.join(name);
    // With a separate build directory (`CARGO_BUILD_BUILD_DIR`) the tests run from
    // there while the binaries land in the workspace's `target/<profile>/`.
    if !bin.is_file()
        && let Some(profile) = profile_dir.file_name()
    {
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        bin = target.join(profile).join(name);
    }
    assert!(
        bin.is_file(),
        "{} is missing: build them with `cargo build -p remora-sidecar -p remora-e2e` \
         (same profile as the tests), or run `cargo test --workspace`",
        bin.display()
    );
    bin
}

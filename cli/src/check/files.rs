//! `remoractl check -f`: validate custom resources and sidecar config files
//! offline, reporting every problem with its file, object and field.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use remora_api::config::SidecarConfig;

use crate::manifests::{self, Document};

pub fn check(files: &[PathBuf]) -> Result<ExitCode> {
    let mut problems = 0;
    let mut checked = 0;
    for doc in manifests::read(files)? {
        checked += 1;
        match doc {
            Document::Resource { source, resource } => {
                if let Err(errs) = resource.validate() {
                    for e in errs.iter() {
                        println!("{}: {}: {e}", source.display(), resource.object_name());
                        problems += 1;
                    }
                }
            }
            Document::SidecarConfig { source, bytes } => {
                if let Err(e) = SidecarConfig::from_json(&bytes) {
                    println!("{}: {e}", source.display());
                    problems += 1;
                }
            }
        }
    }
    if problems > 0 {
        println!("{problems} problem(s) in {checked} document(s)");
        return Ok(ExitCode::FAILURE);
    }
    println!("{checked} document(s) valid");
    Ok(ExitCode::SUCCESS)
}

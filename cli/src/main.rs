//! `remoractl`: Remora's command-line tool.

mod check;
mod cluster;
mod dashboard;
mod demo;
mod inject;
mod manifests;
mod stat;

use std::{collections::BTreeSet, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use remora_api::{
    config::{SidecarConfig, TlsMode},
    crd::{MeshResource, all_crds, crd_yaml},
};
use remora_operator::render::{MeshResources, RenderContext, render_sidecar_config};

use crate::manifests::Document;

#[derive(Parser)]
#[command(
    name = "remoractl",
    version,
    about = "Remora service mesh command-line tool",
    after_help = "Start here: `remoractl demo` runs the mesh on this machine, no cluster needed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mesh on this machine: real sidecars with strict mTLS in front
    /// of sample services, a 95/5 canary, a rate limit, HTTP/1.1, HTTP/2 and
    /// gRPC, with a live view and a summary of what happened.
    #[command(after_help = "Examples:\n  remoractl demo\n  \
                            remoractl demo --duration 5s --output json | jq .canary")]
    Demo(demo::DemoArgs),
    /// Draw the mesh on a local web page: services, the calls between them
    /// with rate, success and p99, canary splits and mTLS, redrawn every
    /// second. Its source: the injected pods of a cluster (the default, read
    /// through the API server), the demo (`--demo`) or sidecar admin addresses.
    #[command(
        after_help = "Examples:\n  remoractl dashboard --demo            # then open http://127.0.0.1:15050/\n  \
                      remoractl dashboard -n bookinfo       # the cluster's injected pods in bookinfo\n  \
                      remoractl dashboard --demo --duration 10m --listen 127.0.0.1:8080\n  \
                      remoractl dashboard --admin productpage=127.0.0.10:15000 --admin reviews/v1=127.0.0.11:15000",
        mut_arg("duration", |a| a.default_value("2m"))
    )]
    Dashboard(dashboard::DashboardArgs),
    /// Print the sidecar config the operator renders for a namespace from
    /// custom resources in files or directories.
    #[command(
        after_help = "Example:\n  remoractl render -f examples/ --mtls strict --trust-bundle ca.pem"
    )]
    Render {
        /// Files or directories of manifests (YAML or JSON).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Namespace to render for (default: the one namespace the resources are in).
        #[arg(short, long)]
        namespace: Option<String>,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Inbound mTLS mode of the mesh.
        #[arg(long, value_enum, default_value_t = Mtls::Disabled)]
        mtls: Mtls,
        /// PEM file with the mesh CA certificates (required when mTLS is on).
        #[arg(long)]
        trust_bundle: Option<PathBuf>,
    },
    /// Check the mesh on a cluster (CRDs, operator, webhook, data plane), or
    /// with `--pre` whether it can be installed; with `-f`, validate
    /// manifest files offline. Every ✘ comes with its fix; exit code 1 on any ✘.
    #[command(
        after_help = "Examples:\n  remoractl check                       # the cluster of the current context\n  \
                            remoractl check --pre --context staging\n  \
                            remoractl check -n mesh-system --output json | jq '.[] | select(.ok == false)'\n  \
                            remoractl check -f examples/ -f my-routes.yaml   # offline"
    )]
    Check(check::CheckArgs),
    /// Print the CustomResourceDefinitions, or write one file per CRD into a directory.
    #[command(after_help = "Example:\n  remoractl crds --out crds/")]
    Crds {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the JSON Schema of the sidecar config document.
    #[command(after_help = "Example:\n  remoractl config-schema > api/sidecar-config.schema.json")]
    ConfigSchema,
    /// Print manifests with the sidecar injected into every pod template (Pods,
    /// Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs), as the
    /// webhook would. SidecarTemplates in the inputs are used.
    #[command(after_help = "Example:\n  remoractl inject -f deploy.yaml > injected.yaml")]
    Inject {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Sidecar image when no SidecarTemplate applies.
        #[arg(long, default_value = "ghcr.io/remora-mesh/remora-sidecar:0.1.0")]
        default_image: String,
        /// Namespace of manifests that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// The control plane's namespace (its default template applies everywhere).
        #[arg(long, default_value = "remora-system")]
        mesh_namespace: String,
        /// The mesh's inbound mTLS mode (the webhook's `--mtls`): explicit capture
        /// is refused unless it is disabled.
        #[arg(long, value_enum, default_value_t = Mtls::Permissive)]
        mtls: Mtls,
    },
    /// Live request rate, success rate and p50/p99 per workload, listener and
    /// upstream cluster, from the sidecars' `/metrics` read through the API
    /// server's pod proxy (or `--admin` addresses, such as the demo's).
    #[command(after_help = "Examples:\n  remoractl stat -n bookinfo\n  \
                            remoractl stat -n bookinfo deploy/reviews-v1 --interval 5s -o json\n  \
                            remoractl stat --admin 127.0.0.10:15000 --admin 127.0.0.11:15000")]
    Stat(stat::StatArgs),
    /// `stat`, refreshed every interval until Ctrl-C or `--count`.
    #[command(after_help = "Examples:\n  remoractl top -n bookinfo\n  \
                            remoractl top -A --interval 5s --count 3 -o json")]
    Top(stat::TopArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  remoractl completions bash > ~/.local/share/bash-completion/completions/remoractl\n  \
                            remoractl completions zsh > \"${fpath[1]}/_remoractl\""
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The demo's sidecar process (`remora-sidecar run`, built in).
    #[command(hide = true, subcommand)]
    DemoSidecar(demo::children::SidecarCommand),
    /// The demo's sample apps.
    #[command(hide = true, subcommand)]
    DemoApp(demo::children::AppCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum Mtls {
    Disabled,
    Permissive,
    Strict,
}

impl From<Mtls> for TlsMode {
    fn from(m: Mtls) -> Self {
        match m {
            Mtls::Disabled => TlsMode::Disabled,
            Mtls::Permissive => TlsMode::Permissive,
            Mtls::Strict => TlsMode::Strict,
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Stat(args) => stat::run(args),
        Command::Dashboard(args) => dashboard::run(args),
        Command::Top(args) => stat::top(args),
        Command::DemoSidecar(cmd) => demo::children::run_sidecar(cmd).map(|()| ExitCode::SUCCESS),
        Command::DemoApp(cmd) => demo::children::run_app(cmd).map(|()| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // clap_complete offers hidden subcommands too: leave the demo's
            // internal ones out.
            let full = Cli::command();
            let mut cmd = clap::Command::new("remoractl")
                .version(env!("CARGO_PKG_VERSION"))
                .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
            clap_complete::generate(shell, &mut cmd, "remoractl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Render {
            files,
            namespace,
            trust_domain,
            mtls,
            trust_bundle,
        } => render(&files, namespace, trust_domain, mtls, trust_bundle),
        Command::Check(args) => check::run(args),
        Command::Crds { out } => crds(out),
        Command::Inject {
            files,
            default_image,
            namespace,
            mesh_namespace,
            mtls,
        } => inject::inject(inject::InjectArgs {
            files,
            default_image,
            namespace,
            mesh_namespace,
            mtls: mtls.into(),
        }),
        Command::ConfigSchema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&SidecarConfig::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn render(
    files: &[PathBuf],
    namespace: Option<String>,
    trust_domain: String,
    mtls: Mtls,
    trust_bundle: Option<PathBuf>,
) -> Result<ExitCode> {
    let mut resources = MeshResources::default();
    let mut namespaces = BTreeSet::new();
    for doc in manifests::read(files)? {
        let Document::Resource { resource, .. } = doc else {
            continue;
        };
        namespaces.insert(namespace_of(&resource));
        match *resource {
            MeshResource::SidecarTemplate(r) => resources.templates.push(r),
            MeshResource::ServiceRoute(r) => resources.routes.push(r),
            MeshResource::RateLimitPolicy(r) => resources.rate_limits.push(r),
            MeshResource::MeshCertificate(r) => resources.certificates.push(r),
        }
    }
    let namespace = match namespace {
        Some(ns) => ns,
        None if namespaces.len() == 1 => namespaces.pop_first().expect("one namespace"),
        None if namespaces.is_empty() => bail!("no Remora resources found in the given files"),
        None => bail!("the resources span namespaces {namespaces:?}; choose one with --namespace"),
    };
    // Offline there is no API server to default metadata.namespace: do what
    // `kubectl apply` would and place unqualified resources in `default`.
    default_namespaces(&mut resources);
    let mut ctx = RenderContext::new(namespace);
    ctx.trust_domain = trust_domain;
    ctx.mtls = mtls.into();
    if let Some(path) = trust_bundle {
        ctx.trust_bundle = std::fs::read_to_string(&path)
            .with_context(|| format!("reading trust bundle {}", path.display()))?;
    }
    let rendered = render_sidecar_config(&ctx, &resources);
    for r in &rendered.rejected {
        eprintln!("rejected {r}");
    }
    // Accepted, but left out until the sidecar enforces them (not an error).
    for r in &rendered.not_enforced {
        eprintln!("not enforced {r}");
    }
    // The renderer's output must pass the sidecar's own checks.
    rendered
        .config
        .validate()
        .context("rendered config failed validation (a bug in remoractl render)")?;
    print!("{}", rendered.config.to_pretty_json());
    Ok(if rendered.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn namespace_of(r: &MeshResource) -> String {
    use kube::ResourceExt;
    let ns = match r {
        MeshResource::SidecarTemplate(r) => r.namespace(),
        MeshResource::ServiceRoute(r) => r.namespace(),
        MeshResource::RateLimitPolicy(r) => r.namespace(),
        MeshResource::MeshCertificate(r) => r.namespace(),
    };
    ns.unwrap_or_else(|| "default".into())
}

fn default_namespaces(res: &mut MeshResources) {
    fn fill(meta: &mut kube::core::ObjectMeta) {
        meta.namespace.get_or_insert_with(|| "default".into());
    }
    res.templates.iter_mut().for_each(|r| fill(&mut r.metadata));
    res.routes.iter_mut().for_each(|r| fill(&mut r.metadata));
    res.rate_limits
        .iter_mut()
        .for_each(|r| fill(&mut r.metadata));
    res.certificates
        .iter_mut()
        .for_each(|r| fill(&mut r.metadata));
}

fn crds(out: Option<PathBuf>) -> Result<ExitCode> {
    match out {
        None => {
            for (_, crd) in all_crds() {
                print!("---\n{}", serde_yaml::to_string(&crd)?);
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, crd) in all_crds() {
                let path = dir.join(file);
                std::fs::write(&path, crd_yaml(&crd))
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

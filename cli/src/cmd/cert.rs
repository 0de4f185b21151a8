//! `wmig cert issue NAME --out DIR`: give another machine an identity in
//! this cluster without handing it the CA key.

use std::path::PathBuf;

use anyhow::Context;
use wmig_net::{ClusterDir, DEFAULT_CLUSTER_DIR};

#[derive(clap::Args)]
pub struct CertCommand {
    #[command(subcommand)]
    action: CertAction,
}

#[derive(clap::Subcommand)]
enum CertAction {
    /// Write a cluster directory for another machine: the CA certificate,
    /// a certificate and key for NAME, and the cluster's addresses — not the
    /// CA key. There, `wmig worker --cluster DIR --name NAME` joins as NAME
    /// and can act as nothing else.
    Issue {
        /// The node name the certificate is for (e.g. worker-7).
        name: String,
        /// Where to write the new cluster directory (must not hold one).
        #[arg(long)]
        out: PathBuf,
        /// This cluster's directory (holds the CA key).
        #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
        cluster: PathBuf,
    },
}

impl CertCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        match self.action {
            CertAction::Issue { name, out, cluster } => {
                ClusterDir::new(&cluster)
                    .export_identity(&name, &out)
                    .with_context(|| {
                        format!(
                            "could not issue `{name}` from the cluster in {}",
                            cluster.display()
                        )
                    })?;
                println!(
                    "wrote {}: CA certificate, identity `{name}`, config.toml (no CA key); \
                     on the other machine: wmig worker --cluster {} --name {name}",
                    out.display(),
                    out.display()
                );
                Ok(0)
            }
        }
    }
}

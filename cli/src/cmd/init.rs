//! `wmig init`: create a cluster directory with its CA and the certificates
//! of the registry and the operator.

use std::path::PathBuf;

use anyhow::Context;
use wmig_net::{ClusterDir, DEFAULT_CLUSTER_DIR};

#[derive(clap::Args)]
pub struct InitCommand {
    /// Cluster directory to create.
    #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
    cluster: PathBuf,
    /// Replace an existing CA; certificates issued by the old one stop
    /// working (and its index of issued certificates and revocation list
    /// are cleared).
    #[arg(long)]
    force: bool,
}

impl InitCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let dir = ClusterDir::new(&self.cluster);
        let created = dir.init(self.force).with_context(|| {
            format!(
                "could not initialize a cluster in {}",
                self.cluster.display()
            )
        })?;
        if created {
            println!(
                "initialized cluster in {}: CA, certificates for `registry` and `operator` \
                 (valid {} days; `wmig cert ls` lists them)",
                self.cluster.display(),
                wmig_net::DEFAULT_DAYS
            );
        } else {
            println!(
                "cluster in {} is already initialized; nothing changed (--force replaces its CA)",
                self.cluster.display()
            );
        }
        Ok(0)
    }
}

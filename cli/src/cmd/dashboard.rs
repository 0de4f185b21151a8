//! `wmig dashboard`: where the cluster's web dashboard is, with the
//! operator token in the URL so the page may act (migrate, drain, cancel).
//!
//! The coordinator serves the page and its JSON API on its HTTP address;
//! the token travels in the URL's fragment, which browsers never send to
//! the server, and the page moves it into local storage at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use wmig_net::{ClusterDir, DEFAULT_CLUSTER_DIR};

#[derive(clap::Args)]
pub struct DashboardCommand {
    #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
    cluster: PathBuf,
    /// Also open it in the desktop's browser (`$BROWSER` or xdg-open).
    #[arg(long)]
    open: bool,
}

impl DashboardCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let (addr, url) = dashboard_url(&self.cluster)?;
        // The page is only useful if the coordinator answers there.
        let reachable = std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
            .ok()
            .and_then(|mut a| a.next())
            .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
            .is_some();
        anyhow::ensure!(
            reachable,
            "the coordinator's HTTP address {addr} (from {}) does not answer: start the cluster \
             with `wmig up`, or `wmig coordinator --cluster {}`",
            self.cluster.join("config.toml").display(),
            self.cluster.display()
        );
        eprintln!("dashboard    {url}");
        println!("{url}");
        if self.open {
            open_browser(&url);
        }
        Ok(0)
    }
}

/// The coordinator's HTTP address and `http://ADDR/#token=TOKEN` for the
/// cluster at `cluster`.
pub fn dashboard_url(cluster: &Path) -> anyhow::Result<(String, String)> {
    let dir = ClusterDir::new(cluster);
    let http = dir.config()?.http.with_context(|| {
        format!(
            "no coordinator HTTP address in {}: start the cluster with `wmig up` \
             (or `wmig coordinator --http 127.0.0.1:7702`)",
            cluster.join("config.toml").display()
        )
    })?;
    let token = dir.operator_token()?;
    let url = format!("http://{http}/#token={token}");
    Ok((http, url))
}

pub(crate) fn open_browser(url: &str) {
    let program = std::env::var("BROWSER").unwrap_or_else(|_| "xdg-open".to_owned());
    match std::process::Command::new(&program)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => eprintln!("opened it with {program}"),
        Err(e) => eprintln!("could not start {program} ({e}); open the URL above by hand"),
    }
}

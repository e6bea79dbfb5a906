//! A real Prometheus (Debian's package), started with a config that scrapes every simulated pod.

use crate::control_plane::free_port;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) Prometheus.
pub struct Prometheus {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// Where the prometheus binary is, or why it is not.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("PROMETHEUS_BIN") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let p = Path::new(dir).join("prometheus");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "prometheus is not installed: run `bash scripts/install-deps.sh` (Debian package `prometheus`) or set PROMETHEUS_BIN"
    )
}

impl Prometheus {
    /// Start Prometheus scraping the targets served by the app server at `sd_url`.
    pub fn start(dir: &Path, sd_url: &str) -> anyhow::Result<Prometheus> {
        let binary = find_binary()?;
        std::fs::create_dir_all(dir.join("data"))?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pods\n    http_sd_configs:\n      - url: {sd_url}\n        refresh_interval: 1s\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let mut p = Prometheus {
            binary,
            dir: dir.to_path_buf(),
            port: free_port()?,
            child: None,
        };
        // The port is free when picked and bound by Prometheus a moment later; another test's
        // server can take it in between. At the start nothing knows the port yet: pick again.
        let mut tries = 0;
        loop {
            match p.restart() {
                Ok(()) => return Ok(p),
                Err(e) if tries < 2 && e.to_string().contains("address already in use") => {
                    tries += 1;
                    p.stop();
                    p.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The base URL of the HTTP API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stop the process (data stays, for a restart).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)start on the same port and data, and wait until it is ready.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let log = std::fs::File::create(self.dir.join("prometheus.log"))?;
        let child = Command::new(&self.binary)
            .arg(format!(
                "--config.file={}",
                self.dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--storage.tsdb.retention.time=1d")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(code)) = c.try_wait()
            {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
                bail!("prometheus exited ({code}) before it was ready: {log}");
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 32];
                if s.read(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.0 200") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        bail!("prometheus did not become ready within 30s: {log}")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

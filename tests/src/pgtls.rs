//! A throwaway PostgreSQL cluster that accepts TLS connections only (`hostssl` in pg_hba),
//! made with `initdb`/`pg_ctl` in a temporary folder and stopped when dropped. As root, the
//! cluster runs as the `postgres` user (PostgreSQL refuses to run as root).

use crate::tls::TestPki;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running TLS-only cluster on 127.0.0.1.
#[derive(Debug)]
pub struct TlsCluster {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    pub port: u16,
}

/// The newest installed PostgreSQL's binaries folder.
fn pg_bin() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| {
            "PostgreSQL server binaries not found under /usr/lib/postgresql \
             (install the Debian package postgresql)"
        })?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

impl TlsCluster {
    /// initdb, certificates from `pki`, TLS only, started with `pg_ctl -w`.
    pub fn start(pki: &TestPki) -> Result<TlsCluster> {
        let bin = pg_bin()?;
        let as_postgres = is_root();
        let dir =
            std::env::temp_dir().join(format!("conflist-pgtls-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cluster = TlsCluster {
            dir,
            bin,
            as_postgres,
            port,
        };
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir))?;
        }
        let data = cluster.dir.join("data");
        cluster.pg(
            "initdb",
            &["-A", "trust", "-U", "postgres", "-D", &path(&data)],
        )?;
        std::fs::copy(&pki.server_cert, data.join("server.crt"))?;
        std::fs::copy(&pki.server_key, data.join("server.key"))?;
        let conf = format!(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n",
            path(&cluster.dir)
        );
        append(&data.join("postgresql.conf"), &conf)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
        )?;
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data))?;
        }
        run(Command::new("chmod")
            .arg("600")
            .arg(data.join("server.key")))?;
        let log = cluster.dir.join("log");
        cluster.pg(
            "pg_ctl",
            &[
                "-D",
                &path(&data),
                "-l",
                &path(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres?sslmode=…`.
    pub fn url(&self, sslmode: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={sslmode}",
            self.port
        )
    }

    fn pg(&self, tool: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = path(&self.dir.join("data"));
        let _ = self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn append(file: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(file)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

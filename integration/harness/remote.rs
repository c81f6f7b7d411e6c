//! Remote hypervisors for tests, on this machine: a real sshd on loopback (a port of its own,
//! key-only, its keys in a temp dir, stopped on drop), reached by libvirt's `qemu+ssh://`; and
//! an unprivileged user whose own `qemu:///session` daemon, reached over that sshd, is a
//! second, independent libvirt host.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user whose `qemu:///session` is the second host.
pub const SESSION_USER: &str = "vsremote";

pub struct Sshd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn keygen(path: &std::path::Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "ssh-keygen");
}

impl Sshd {
    pub fn start() -> Sshd {
        let dir = std::env::temp_dir().join(format!(
            "virtseed-sshd-{}",
            &salt_proto::auth::new_nonce()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        keygen(&dir.join("hostkey"));
        keygen(&dir.join("client"));
        std::fs::copy(dir.join("client.pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut s = Sshd {
            child: None,
            dir,
            port,
        };
        s.run();
        s
    }

    /// Starts (again) the listener, and waits until it accepts.
    pub fn run(&mut self) {
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .arg("-E")
            .arg(self.dir.join("log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd (apt-get install openssh-server)");
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "sshd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `qemu+ssh://USER@127.0.0.1:PORT/PATH` with this sshd's client key, as a user writes it.
    pub fn uri(&self, user: &str, path: &str) -> String {
        format!(
            "qemu+ssh://{user}@127.0.0.1:{}/{path}?keyfile={}/client&no_verify=1",
            self.port,
            self.dir.display()
        )
    }

    /// Kills the process serving each open SSH connection: every link drops at once, the
    /// listener stays (as when a network path or the remote sshd child dies).
    pub fn cut_links(&self) {
        let Some(child) = &self.child else { return };
        let pid = child.id();
        let _ = Command::new("pkill")
            .args(["-9", "-P", &pid.to_string()])
            .status();
    }

    /// Stops the listener and every connection: the host is unreachable.
    pub fn stop(&mut self) {
        self.cut_links();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes sure the session user exists and may log in by key (its password stays unusable).
pub fn session_user() {
    let exists = Command::new("id")
        .arg(SESSION_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if !exists {
        let ok = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", SESSION_USER])
            .status()
            .unwrap();
        assert!(ok.success(), "useradd {SESSION_USER}");
    }
    // A locked account (`!` in shadow) is refused by sshd even with a key.
    let ok = Command::new("usermod")
        .args(["-p", "*", SESSION_USER])
        .status()
        .unwrap();
    assert!(ok.success());
}

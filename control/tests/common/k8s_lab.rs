//! A real Kubernetes control plane per test: `KubeLab::up()` runs
//! `scripts/k8s-lab.sh up` (etcd + kube-apiserver built from their Go modules, RBAC
//! on, reachable on the `hwlab0` bridge) in a directory of its own, and `Drop` runs
//! `down`. The directory, with the processes' logs, is kept when the test panics.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{require_root, unique};

/// The rig's script, the one interface to the control plane (CI, the demo and
/// hand runs use it too).
pub fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-lab.sh")
}

/// Runs the script and returns its stdout; panics with its stderr when it fails.
pub fn run_lab_script(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(lab_script())
        .args(args)
        // `up` leaves a watchdog that runs `down` if this process dies without its
        // Drop guards running (Ctrl-C, SIGKILL).
        .env("HYBRIDWAY_LAB_OWNER_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .output()
        .expect("spawn scripts/k8s-lab.sh");
    assert!(
        out.status.success(),
        "k8s-lab.sh {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cached binary `name` (kube-apiserver, etcd, kubectl, kube-proxy), built first
/// when missing.
pub fn lab_binary(name: &str) -> PathBuf {
    let out = run_lab_script(&["bin".as_ref(), name.as_ref()]);
    PathBuf::from(out.trim())
}

pub struct KubeLab {
    dir: PathBuf,
    kubeconfig: PathBuf,
    addr: Ipv4Addr,
    kubectl: PathBuf,
}

impl KubeLab {
    /// Starts an instance and waits until its API server is ready.
    pub fn up() -> KubeLab {
        require_root();
        let dir = std::env::temp_dir().join(format!("hwlab-{}-{}", std::process::id(), unique()));
        let stdout = run_lab_script(&["up".as_ref(), dir.as_os_str()]);
        // The kubeconfig's path is the last line of stdout.
        let kubeconfig = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        let addr = fs::read_to_string(dir.join("addr"))
            .expect("the instance's address file")
            .trim()
            .parse()
            .expect("an IPv4 address in DIR/addr");
        // From here on Drop stops the instance whatever fails.
        let mut lab = KubeLab {
            dir,
            kubeconfig,
            addr,
            kubectl: PathBuf::new(),
        };
        lab.kubectl = lab_binary("kubectl");
        lab
    }

    /// The admin kubeconfig (group system:masters, CA embedded).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's address on `hwlab0` (port 6443).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `https://ADDR:6443`
    pub fn server(&self) -> String {
        format!("https://{}:6443", self.addr)
    }

    /// The instance's directory: logs, PIDs, certificates (pki/), `env`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached kubectl of the same release as the API server.
    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl
    }

    /// Runs kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args)
    }

    /// Runs kubectl with another identity's kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn kubectl")
    }

    /// Runs kubectl as the admin, panics when it fails, returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of a manifest, as the admin.
    pub fn apply(&self, manifest: &str) -> Output {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl apply");
        child
            .stdin
            .take()
            .expect("kubectl's stdin")
            .write_all(manifest.as_bytes())
            .expect("write the manifest to kubectl");
        child.wait_with_output().expect("wait for kubectl apply")
    }

    /// A kubeconfig that authenticates as the service account `ns/name` (which must
    /// exist) with a token from the TokenRequest API: components run with their real
    /// RBAC identity.
    pub fn service_account_kubeconfig(&self, ns: &str, name: &str) -> PathBuf {
        let out = run_lab_script(&[
            "token".as_ref(),
            self.dir.as_os_str(),
            ns.as_ref(),
            name.as_ref(),
        ]);
        PathBuf::from(out.trim())
    }

    /// Connects the network namespace `netns` (a test's node) to the lab bridge with
    /// a veth named `ifname` inside it, addressed `addr` (`198.18.64.10/24`).
    /// Removed by `detach`, `down` or deleting the namespace.
    pub fn attach(&self, netns: &str, ifname: &str, addr: &str) {
        run_lab_script(&[
            "attach".as_ref(),
            self.dir.as_os_str(),
            netns.as_ref(),
            ifname.as_ref(),
            addr.as_ref(),
        ]);
    }

    pub fn detach(&self, netns: &str, ifname: &str) {
        run_lab_script(&[
            "detach".as_ref(),
            self.dir.as_os_str(),
            netns.as_ref(),
            ifname.as_ref(),
        ]);
    }
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        let down = Command::new(lab_script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        match down {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "k8s-lab.sh down {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("k8s-lab.sh down {}: {e}", self.dir.display()),
        }
        if std::thread::panicking() {
            eprintln!(
                "kube lab logs kept in {} (etcd.log, kube-apiserver.log)",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

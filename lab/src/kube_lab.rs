//! A real Kubernetes control plane per test or demo: `KubeLab::start()` runs
//! `scripts/k8s-lab.sh up` (etcd + kube-apiserver built from their Go modules, RBAC
//! on, reachable on the `hwlab0` bridge) in a directory of its own, and `Drop` runs
//! `down`. The directory, with the processes' logs, is kept when a test panics or
//! [`KubeLab::keep_logs`] says so.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::LabError;
use crate::netns::{is_root, unique};

/// The API server's `--service-cluster-ip-range` (`SERVICE_CIDR` in
/// scripts/k8s-lab.sh, which starts it).
pub const SERVICE_CIDR: &str = "198.18.240.0/20";

/// The rig's script, the one interface to the control plane (CI, the demo and
/// hand runs use it too).
pub fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-lab.sh")
}

/// Runs the script and returns its stdout; fails with its stderr. Its progress
/// (stderr) is shown as it comes when `show_progress` (the one-time build of the
/// control plane takes minutes).
pub fn lab_script_output(
    args: &[&std::ffi::OsStr],
    show_progress: bool,
) -> Result<String, LabError> {
    let what = format!("k8s-lab.sh {args:?}");
    let out = Command::new(lab_script())
        .args(args)
        // `up` leaves a watchdog that runs `down` if this process dies without its
        // Drop guards running (Ctrl-C, SIGKILL).
        .env("HYBRIDWAY_LAB_OWNER_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stderr(if show_progress {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .output()
        .map_err(|e| LabError::command(&what, e.to_string()))?;
    if !out.status.success() {
        return Err(LabError::command(
            &what,
            format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`lab_script_output`] for tests: panics with the script's stderr when it fails.
#[track_caller]
pub fn run_lab_script(args: &[&std::ffi::OsStr]) -> String {
    lab_script_output(args, false).unwrap_or_else(|e| fail(e))
}

#[track_caller]
#[allow(clippy::panic)] // test-facing helpers: a failed setup is the test's failure
fn fail(e: LabError) -> ! {
    panic!("{e}")
}

/// The cached binary `name` (kube-apiserver, etcd, kubectl, kube-proxy, flanneld),
/// built first when missing.
pub fn lab_binary_path(name: &str, show_progress: bool) -> Result<PathBuf, LabError> {
    let out = lab_script_output(&["bin".as_ref(), name.as_ref()], show_progress)?;
    Ok(PathBuf::from(out.trim()))
}

/// [`lab_binary_path`] for tests.
#[track_caller]
pub fn lab_binary(name: &str) -> PathBuf {
    lab_binary_path(name, false).unwrap_or_else(|e| fail(e))
}

#[derive(Debug)]
pub struct KubeLab {
    dir: PathBuf,
    kubeconfig: PathBuf,
    addr: Ipv4Addr,
    kubectl: PathBuf,
    keep_logs: bool,
}

impl KubeLab {
    /// Starts an instance and waits until its API server is ready; shows the
    /// script's progress when `show_progress`.
    pub fn start(show_progress: bool) -> Result<KubeLab, LabError> {
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        let dir = std::env::temp_dir().join(format!("hwlab-{}-{}", std::process::id(), unique()));
        let stdout = lab_script_output(&["up".as_ref(), dir.as_os_str()], show_progress)?;
        // The kubeconfig's path is the last line of stdout.
        let kubeconfig = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        // From here on Drop stops the instance whatever fails.
        let mut lab = KubeLab {
            addr: Ipv4Addr::UNSPECIFIED,
            dir,
            kubeconfig,
            kubectl: PathBuf::new(),
            keep_logs: false,
        };
        let addr_file = lab.dir.join("addr");
        lab.addr = fs::read_to_string(&addr_file)?
            .trim()
            .parse()
            .map_err(|_| LabError::Kube(format!("no IPv4 address in {}", addr_file.display())))?;
        lab.kubectl = lab_binary_path("kubectl", show_progress)?;
        Ok(lab)
    }

    /// [`KubeLab::start`] for tests (root is required: they must not skip).
    #[track_caller]
    pub fn up() -> KubeLab {
        KubeLab::start(false).unwrap_or_else(|e| fail(e))
    }

    /// Keep the instance's directory (logs) after it stops.
    pub fn keep_logs(&mut self) {
        self.keep_logs = true;
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

    /// Runs kubectl with another identity's kubeconfig (a failure to start kubectl
    /// shows as a failed Output).
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.kubectl_stdin(kubeconfig, args, None)
            .unwrap_or_else(|e| spawn_failure(&e))
    }

    fn kubectl_stdin(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> std::io::Result<Output> {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        child.wait_with_output()
    }

    /// Runs kubectl as the admin; fails with its stderr, returns its stdout.
    pub fn kubectl_checked(&self, args: &[&str]) -> Result<String, LabError> {
        let out = self.kubectl(args);
        if !out.status.success() {
            return Err(LabError::command(
                &format!("kubectl {}", args.join(" ")),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`KubeLab::kubectl_checked`] for tests.
    #[track_caller]
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_checked(args).unwrap_or_else(|e| fail(e))
    }

    /// The holder of the Lease `ns/name` (leader election), if any.
    pub fn lease_holder(&self, ns: &str, name: &str) -> Option<String> {
        let out = self.kubectl(&[
            "-n",
            ns,
            "get",
            "lease",
            name,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    /// `kubectl apply -f -` of a manifest, as the admin.
    pub fn apply(&self, manifest: &str) -> Output {
        self.kubectl_stdin(&self.kubeconfig, &["apply", "-f", "-"], Some(manifest))
            .unwrap_or_else(|e| spawn_failure(&e))
    }

    /// [`KubeLab::apply`] that fails with kubectl's message.
    pub fn apply_checked(&self, manifest: &str) -> Result<(), LabError> {
        let out = self.apply(manifest);
        if out.status.success() {
            Ok(())
        } else {
            Err(LabError::Kube(format!(
                "kubectl apply: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// A kubeconfig that authenticates as the service account `ns/name` (which must
    /// exist) with a token from the TokenRequest API: components run with their real
    /// RBAC identity.
    pub fn token_kubeconfig(&self, ns: &str, name: &str) -> Result<PathBuf, LabError> {
        let out = lab_script_output(
            &[
                "token".as_ref(),
                self.dir.as_os_str(),
                ns.as_ref(),
                name.as_ref(),
            ],
            false,
        )?;
        Ok(PathBuf::from(out.trim()))
    }

    /// [`KubeLab::token_kubeconfig`] for tests.
    #[track_caller]
    pub fn service_account_kubeconfig(&self, ns: &str, name: &str) -> PathBuf {
        self.token_kubeconfig(ns, name).unwrap_or_else(|e| fail(e))
    }

    /// Connects the network namespace `netns` (a node) to the lab bridge with a veth
    /// named `ifname` inside it, addressed `addr` (`198.18.64.10/24`). Removed by
    /// `detach`, `down` or deleting the namespace.
    pub fn connect(&self, netns: &str, ifname: &str, addr: &str) -> Result<(), LabError> {
        lab_script_output(
            &[
                "attach".as_ref(),
                self.dir.as_os_str(),
                netns.as_ref(),
                ifname.as_ref(),
                addr.as_ref(),
            ],
            false,
        )
        .map(|_| ())
    }

    /// [`KubeLab::connect`] for tests.
    #[track_caller]
    pub fn attach(&self, netns: &str, ifname: &str, addr: &str) {
        self.connect(netns, ifname, addr)
            .unwrap_or_else(|e| fail(e))
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
        if std::thread::panicking() || self.keep_logs {
            eprintln!(
                "kube lab logs kept in {} (etcd.log, kube-apiserver.log)",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// kubectl could not be started: an Output that says so, failed.
fn spawn_failure(e: &std::io::Error) -> Output {
    use std::os::unix::process::ExitStatusExt;
    Output {
        status: std::process::ExitStatus::from_raw(127 << 8),
        stdout: Vec::new(),
        stderr: format!("cannot run kubectl: {e}").into_bytes(),
    }
}

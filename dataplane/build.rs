//! Compiles the XDP steering program (`bpf/steer.bpf.c`) with clang for the BPF
//! target; the object is embedded in the library and loaded by `port::xdp`.
#![allow(clippy::expect_used, clippy::panic)] // a build script fails by panicking

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/steer.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("steer.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let status = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-c", src, "-o",
        ])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {src} ({s})"),
        Err(e) => panic!(
            "cannot run {clang} to compile the XDP program {src}: {e}; install clang (apt-get install clang) or set CLANG"
        ),
    }
}

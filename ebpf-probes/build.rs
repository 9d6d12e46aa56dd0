//! Compiles `bpf/*.bpf.c` with clang into `$OUT_DIR/<name>.bpf.o`.
//!
//! Without a working clang (or libbpf headers) the crate still builds: an empty object is
//! written and the reason is exported as `EBPF_PROBES_BUILD_ERROR`, which the loader reports
//! at run time instead of loading anything.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: &[&str] = &["iolat"];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let (target_arch_define, multiarch) = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => ("__TARGET_ARCH_arm64", "aarch64-linux-gnu"),
        Ok("riscv64") => ("__TARGET_ARCH_riscv", "riscv64-linux-gnu"),
        _ => ("__TARGET_ARCH_x86", "x86_64-linux-gnu"),
    };

    let mut failures = Vec::new();
    for name in PROGRAMS {
        let source = Path::new("bpf").join(format!("{name}.bpf.c"));
        let object = out_dir.join(format!("{name}.bpf.o"));
        println!("cargo:rerun-if-changed={}", source.display());
        if let Err(reason) = compile(&clang, &source, &object, target_arch_define, multiarch) {
            println!(
                "cargo:warning=ebpf-probes: {name}.bpf.c not compiled, probes will be unavailable: {reason}"
            );
            fs::write(&object, []).expect("write empty BPF object");
            failures.push(format!("{name}.bpf.c: {reason}"));
        }
    }
    println!("cargo:rustc-env=EBPF_PROBES_BUILD_ERROR={}", failures.join("; "));
}

fn compile(clang: &str, source: &Path, object: &Path, arch: &str, multiarch: &str) -> Result<(), String> {
    let output = Command::new(clang)
        .args(["-O2", "-g", "-Wall", "-target", "bpfel"])
        .arg(format!("-D{arch}"))
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object)
        .output()
        .map_err(|e| format!("cannot run `{clang}` ({e}); install clang and libbpf-dev"))?;
    if output.status.success() {
        return Ok(());
    }
    // Keep the reason on one line: it becomes an environment variable.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first_error = stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or("unknown error");
    Err(format!("`{clang}` failed: {}", first_error.trim()))
}

//! Kernel sources (embedded at build time from the repository's `kernels/`) and their compilation
//! by NVRTC for the GPU present. PTX is cached on disk under `$TESSERA_KERNEL_CACHE` or
//! `~/.cache/tessera/kernels`, keyed by a hash of source, options and architecture, so a second
//! start skips NVRTC; a stale or corrupt entry can only be a different key, never a wrong hit.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use std::path::PathBuf;
use tessera_model::{ModelError, Result};

/// Prepended to every family, so kernels share one set of helpers without NVRTC include paths.
const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// One `.cu` file of `kernels/`: its name and source, and whether it uses features of sm_90
/// that only the architecture-specific target (`compute_90a`) has: wgmma, TMA, setmaxnreg. Such
/// a family compiles for `compute_90a` on sm_90 GPUs (elsewhere its kernels are empty and never
/// launched); the others keep the portable `compute_XY`.
pub struct Family {
    pub name: &'static str,
    pub source: &'static str,
    pub arch_specific: bool,
}

const fn family(name: &'static str, source: &'static str) -> Family {
    Family { name, source, arch_specific: false }
}

pub const FAMILIES: [Family; 11] = [
    family("embedding", include_str!("../../../kernels/embedding.cu")),
    family("norm", include_str!("../../../kernels/norm.cu")),
    family("rope", include_str!("../../../kernels/rope.cu")),
    family("activation", include_str!("../../../kernels/activation.cu")),
    family("kv_cache", include_str!("../../../kernels/kv_cache.cu")),
    family("attention", include_str!("../../../kernels/attention.cu")),
    family("decode_attention", include_str!("../../../kernels/decode_attention.cu")),
    family("prefill_attention", include_str!("../../../kernels/prefill_attention.cu")),
    family("sampling", include_str!("../../../kernels/sampling.cu")),
    family("gemv", include_str!("../../../kernels/gemv.cu")),
    Family { name: "gemm_glu", source: include_str!("../../../kernels/gemm_glu.cu"), arch_specific: true },
];

/// 64-bit FNV-1a: stable across Rust versions, unlike `DefaultHasher`, so cache keys survive
/// toolchain upgrades.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TESSERA_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/tessera/kernels"))
}

/// `TESSERA_KERNEL_DEFINES="NAME=VALUE NAME2=VALUE"`: preprocessor definitions for every family,
/// so that one GPU run can measure a kernel's compile-time variants against each other without
/// another build (leave it unset otherwise). They are part of the cache key like any option.
fn defines() -> Vec<String> {
    define_options(&std::env::var("TESSERA_KERNEL_DEFINES").unwrap_or_default())
}

fn define_options(defines: &str) -> Vec<String> {
    defines.split_whitespace().map(|d| format!("-D{d}")).collect()
}

fn options(arch: (i32, i32), arch_specific: bool) -> Vec<String> {
    let suffix = if arch_specific && arch == (9, 0) { "a" } else { "" };
    let mut options =
        vec![format!("--gpu-architecture=compute_{}{}{suffix}", arch.0, arch.1), "--std=c++17".to_string()];
    options.extend(defines());
    options
}

/// The PTX of `family` for compute capability `arch`, from the disk cache or NVRTC.
pub fn compile(family: &Family, arch: (i32, i32)) -> Result<Ptx> {
    let source = format!("{COMMON}\n{}", family.source);
    let options = options(arch, family.arch_specific);
    let mut key_parts: Vec<&str> = vec![&source];
    key_parts.extend(options.iter().map(String::as_str));
    let key = fnv1a(&key_parts);
    let path =
        cache_dir().map(|dir| dir.join(format!("{}-sm{}{}-{key:016x}.ptx", family.name, arch.0, arch.1)));
    if let Some(ptx) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        return Ok(Ptx::from_src(ptx));
    }
    let opts = CompileOptions { options, name: Some(format!("{}.cu", family.name)), ..Default::default() };
    let ptx = compile_ptx_with_opts(&source, opts)
        .map_err(|e| ModelError::Backend(format!("NVRTC failed on kernels/{}.cu: {e}", family.name)))?;
    if let Some(path) = path {
        store(&path, &ptx.to_src());
    }
    Ok(ptx)
}

/// Writes through a temporary file and a rename, so a concurrent reader never sees half a file.
/// A cache that cannot be written only costs a recompilation next time.
fn store(path: &PathBuf, ptx: &str) {
    let Some(dir) = path.parent() else { return };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, ptx))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(err) = written {
        eprintln!("tessera-cuda: kernel cache {} not written: {err}", path.display());
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_depends_on_every_part() {
        let base = fnv1a(&["src", "--gpu-architecture=compute_90"]);
        assert_ne!(base, fnv1a(&["src", "--gpu-architecture=compute_80"]));
        assert_ne!(base, fnv1a(&["src2", "--gpu-architecture=compute_90"]));
        // Part boundaries count: ("ab", "c") is not ("a", "bc").
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
    }

    #[test]
    fn only_arch_specific_families_target_sm_90a() {
        let arch = |options: Vec<String>| options[0].clone();
        assert_eq!(arch(options((9, 0), true)), "--gpu-architecture=compute_90a");
        assert_eq!(arch(options((9, 0), false)), "--gpu-architecture=compute_90");
        // No other GPU has sm_90a's features: the family compiles portably (its kernels empty).
        assert_eq!(arch(options((8, 9), true)), "--gpu-architecture=compute_89");
        assert_eq!(arch(options((10, 0), true)), "--gpu-architecture=compute_100");
        let specific: Vec<&str> = FAMILIES.iter().filter(|f| f.arch_specific).map(|f| f.name).collect();
        assert_eq!(specific, ["gemm_glu"]);
    }

    #[test]
    fn defines_become_nvrtc_options() {
        assert!(define_options("").is_empty());
        assert_eq!(define_options(" A=1  B=2 C "), ["-DA=1", "-DB=2", "-DC"]);
    }

    /// The body of each `extern "C" __global__` kernel of `source`, by brace matching.
    fn kernel_bodies(source: &str) -> Vec<&str> {
        let mut bodies = Vec::new();
        for (at, _) in source.match_indices("extern \"C\" __global__") {
            let open = at + source[at..].find('{').expect("a kernel has a body");
            let mut depth = 0;
            for (i, c) in source[open..].char_indices() {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                if depth == 0 {
                    bodies.push(&source[open..=open + i]);
                    break;
                }
            }
        }
        bodies
    }

    /// Kernels are launched with programmatic dependent launch (launch/builder.rs), which is
    /// only correct when each waits for the previous kernel before touching its data.
    #[test]
    fn every_kernel_waits_for_the_previous_one() {
        let mut kernels = 0;
        for family in &FAMILIES {
            for body in kernel_bodies(family.source) {
                kernels += 1;
                assert!(
                    body.contains("pdl_start();"),
                    "a kernel of {} does not call pdl_start: {body}",
                    family.name
                );
            }
        }
        assert!(kernels >= 20, "found only {kernels} kernels");
    }

    #[test]
    fn kernel_bodies_are_found_by_brace_matching() {
        let source = "extern \"C\" __global__ void a(int* x) { if (x) { pdl_start(); } }\n\
                      extern \"C\" __global__ void b() { }";
        assert_eq!(kernel_bodies(source), ["{ if (x) { pdl_start(); } }", "{ }"]);
    }

    /// Compiles every family when NVRTC is present (it needs no GPU), so kernel syntax errors
    /// show up on a development machine.
    #[test]
    fn every_family_compiles_when_nvrtc_is_present() {
        if !crate::device::nvrtc_present() {
            eprintln!("SKIPPED: libnvrtc not found (set LD_LIBRARY_PATH to a CUDA lib64 folder)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tessera-kernel-cache-{}", std::process::id()));
        std::env::set_var("TESSERA_KERNEL_CACHE", &dir);
        for family in &FAMILIES {
            let ptx = compile(family, (9, 0)).unwrap_or_else(|e| panic!("{e}"));
            assert!(ptx.to_src().contains(".entry"), "{} has no kernel entry", family.name);
            // The second call is a cache hit.
            assert_eq!(compile(family, (9, 0)).unwrap().to_src(), ptx.to_src());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

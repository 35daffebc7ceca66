//! Builds the eBPF programs (port-trace-ebpf) for the bpf target with aya-build; the daemon
//! embeds the object file with `include_bytes_aligned!`.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "port-trace-ebpf")
        .ok_or_else(|| anyhow!("port-trace-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())?;
    // With AYA_BUILD_SKIP aya-build builds nothing: an empty object lets the library compile
    // for what loads no programs (the fuzz targets); the daemon refuses to start with it.
    let object = std::path::Path::new(&std::env::var("OUT_DIR")?).join("port-trace");
    if !object.exists() {
        std::fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}

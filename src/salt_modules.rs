//! virtseed's Salt modules (python/saltext/virtseed/), embedded in the binary, and
//! `virtseed install-runner`, which writes them into the master's `extension_modules`:
//! the `cloud` runner, the `libvirt` cloud driver, the client both share, and the `virtseed`
//! execution module reactors check the sidecar's events with (`virtseed.proven`).
//!
//! Where `extension_modules` is, and whether Salt's loader then finds these modules rather
//! than its own, is asked of Salt itself when its Python can be found: Salt's default does
//! not follow `cachedir`, and a module in the wrong place fails silently (Salt's own runner
//! answers instead).

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use virtseed::config::master::MasterOpts;
use virtseed::config::settings::Settings;

/// (loader directory, file name, text) of each module.
const MODULES: [(&str, &str, &str); 6] = [
    (
        "utils",
        "virtseed_client.py",
        include_str!("../python/saltext/virtseed/utils/virtseed_client.py"),
    ),
    (
        "runners",
        "cloud.py",
        include_str!("../python/saltext/virtseed/runners/cloud.py"),
    ),
    (
        "clouds",
        "libvirt.py",
        include_str!("../python/saltext/virtseed/clouds/libvirt.py"),
    ),
    (
        "output",
        "virtseed_progress.py",
        include_str!("../python/saltext/virtseed/output/virtseed_progress.py"),
    ),
    (
        "utils",
        "virtseed_proof.py",
        include_str!("../python/saltext/virtseed/utils/virtseed_proof.py"),
    ),
    (
        "modules",
        "virtseed.py",
        include_str!("../python/saltext/virtseed/modules/virtseed.py"),
    ),
];

/// Run by Salt's Python: the master's `extension_modules`, and (given the installed files)
/// the file each of `cloud.profile` (runner) and `libvirt.create` (cloud driver) loads from.
const PROBE: &str = r#"
import json, os, sys
import salt.config, salt.loader, salt.version
conf = sys.argv[1]
opts = salt.config.master_config(os.path.join(conf, "master"))
out = {"salt": salt.version.__version__, "extension_modules": opts["extension_modules"]}
def origin(loader, fun):
    try:
        f = loader[fun]
    except Exception as e:
        return "not loaded: %s" % (e,)
    return getattr(f, "func", f).__globals__.get("__file__")
if len(sys.argv) > 2:
    out["runner"] = origin(salt.loader.runner(opts, utils=salt.loader.utils(opts)), "cloud.profile")
    copts = salt.config.cloud_config(os.path.join(conf, "cloud"))
    out["cloud"] = origin(salt.loader.clouds(copts), "libvirt.create")
print(json.dumps(out))
"#;

/// The Python that runs Salt: `--salt-python`, else the interpreter of `salt-master`,
/// `salt-run` or `salt-cloud` found on PATH.
pub fn salt_python(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for bin in ["salt-master", "salt-run", "salt-cloud"] {
            let Ok(text) = std::fs::read(dir.join(bin)) else {
                continue;
            };
            let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(first);
            if let Some(interp) = line.strip_prefix("#!") {
                let interp = interp.split_whitespace().next().unwrap_or_default();
                if Path::new(interp).is_file() {
                    return Some(PathBuf::from(interp));
                }
            }
        }
    }
    None
}

fn probe(python: &Path, config_dir: &Path, confirm: bool) -> Result<serde_json::Value> {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(PROBE).arg(config_dir);
    if confirm {
        cmd.arg("confirm");
    }
    json_of(python, cmd)
}

/// Runs `code` (Python printing one JSON line last) with Salt's Python, the config dir as
/// its argument.
pub fn run_probe(python: &Path, code: &str, config_dir: &Path) -> Result<serde_json::Value> {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(code).arg(config_dir);
    json_of(python, cmd)
}

fn json_of(python: &Path, mut cmd: Command) -> Result<serde_json::Value> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} could not load Salt's config: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| anyhow!("{}: {e}: {text}", python.display()))
}

fn same_file(a: &str, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Writes each module into `dir/<loader kind>/` as a copy outside the pip package: its client
/// import is the `virtseed_client` beside it, its default sidecar `sidecar_id`.
fn write_modules(dir: &Path, sidecar_id: &str) -> Result<Vec<PathBuf>> {
    let mut installed = Vec::new();
    for (kind, file, text) in MODULES {
        let sub = dir.join(kind);
        std::fs::create_dir_all(&sub)
            .map_err(|e| anyhow!("cannot create {}: {e}", sub.display()))?;
        let text = text
            .replace(
                "DEFAULT_SIDECAR = \"virtseed\"",
                &format!("DEFAULT_SIDECAR = {sidecar_id:?}"),
            )
            .replace(
                "from saltext.virtseed.utils import virtseed_client as vc  # virtseed: client import",
                "import virtseed_client as vc  # virtseed: client import",
            )
            .replace(
                "from saltext.virtseed.utils import virtseed_proof  # virtseed: proof import",
                "import virtseed_proof  # virtseed: proof import",
            );
        let path = sub.join(file);
        virtseed::pki::write_atomic(&path, text.as_bytes(), 0o644)?;
        println!("installed {}", path.display());
        installed.push(path);
    }
    Ok(installed)
}

/// `install-runner --into DIR`: the modules for a package (the Debian package ships them in
/// /usr/lib/virtseed/salt, read by the master through the `*_dirs` of its drop-in), without
/// reading any master's config.
pub fn write_into(dir: &Path) -> Result<()> {
    write_modules(dir, "virtseed").map(|_| ())
}

/// Writes the modules into the master's extension modules, with this sidecar's id as the
/// default target, then has Salt's loader confirm it loads them.
pub fn install(config_dir: &Path, python: Option<&Path>) -> Result<()> {
    let opts = MasterOpts::load(config_dir)?;
    let settings = Settings::load(config_dir)?;
    let python = salt_python(python);
    let ext = match &python {
        Some(py) => {
            let v = probe(py, config_dir, false)?;
            PathBuf::from(v["extension_modules"].as_str().unwrap_or_default())
        }
        None => opts.extension_modules.clone(),
    };
    let installed = write_modules(&ext, &settings.id)?;
    let Some(py) = python else {
        println!(
            "could not find Salt's Python (no salt-master, salt-run or salt-cloud on PATH; or pass --salt-python) to confirm that Salt loads them; check with `salt-run sys.doc cloud.profile`"
        );
        return Ok(());
    };
    let v = probe(&py, config_dir, true)?;
    for (what, path) in [("runner", &installed[1]), ("cloud", &installed[2])] {
        let found = v[what].as_str().unwrap_or("nothing");
        if !same_file(found, path) {
            bail!(
                "Salt {} loads its {what} module from {found}, not {}: check `extension_modules` in {}/master",
                v["salt"].as_str().unwrap_or("?"),
                path.display(),
                config_dir.display()
            );
        }
    }
    println!(
        "Salt {} loads them (sidecar id {:?}): `salt-cloud -p PROFILE NAME` and `salt-run cloud.profile PROFILE NAME` now go through virtseed",
        v["salt"].as_str().unwrap_or("?"),
        settings.id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MODULES;

    /// The Salt modules and the binary are one release: the client sends its `VERSION` with
    /// every call and the sidecar refuses another release's.
    #[test]
    fn the_client_is_of_this_release() {
        let client = MODULES[0].2;
        let line = format!("\nVERSION = {:?}\n", env!("CARGO_PKG_VERSION"));
        assert!(client.contains(&line), "virtseed_client.py lacks {line:?}");
    }
}

//! What cargo knows about the crate being packaged: found like cargo finds
//! it (`cargo locate-project`) and read with `cargo metadata`, so workspace
//! inheritance (`version.workspace = true`) and defaults are cargo's own.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The package fields the tool uses, as cargo resolved them.
pub struct Crate {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub license: Option<String>,
    pub license_file: Option<PathBuf>,
    pub authors: Vec<String>,
    pub homepage: Option<String>,
    /// Names of the `bin` targets.
    pub bins: Vec<String>,
    /// The crate is myflask itself or has it as a normal dependency.
    pub uses_myflask: bool,
    /// `[package.metadata.myflask]`, or Null.
    pub myflask_meta: Value,
    pub dir: PathBuf,
    pub target_dir: PathBuf,
}

/// The cargo to run: the one that ran us (`cargo myflask`), else from PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn locate(manifest: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(m) = manifest {
        if !m.is_file() {
            return Err(format!("{} does not exist", m.display()));
        }
        return std::fs::canonicalize(m).map_err(|e| format!("{}: {e}", m.display()));
    }
    let out = cargo()
        .args(["locate-project", "--message-format", "plain"])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        let here = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        return Err(format!(
            "no Cargo.toml in {here} or any parent directory: run `cargo myflask deb` in the directory of your app's crate"
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn metadata(manifest: &Path) -> Result<Value, String> {
    let out = cargo()
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(format!("cargo cannot read {}: {first}", manifest.display()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata printed no JSON: {e}"))
}

fn string(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_owned)
        .filter(|s| !s.trim().is_empty())
}

/// Finds and reads the crate (current directory, or `manifest`).
pub fn load(manifest: Option<&Path>) -> Result<Crate, String> {
    let manifest = locate(manifest)?;
    let meta = metadata(&manifest)?;
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let pkg = packages
        .iter()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .ok_or_else(|| {
            format!(
                "{} is a workspace manifest without a [package]: run `cargo myflask deb` in the directory of the app's crate",
                manifest.display()
            )
        })?;
    let dir = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = string(&pkg["name"]).unwrap_or_default();
    let targets = pkg["targets"].as_array().cloned().unwrap_or_default();
    let bins = targets
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| string(&t["name"]))
        .collect();
    let deps = pkg["dependencies"].as_array().cloned().unwrap_or_default();
    let uses_myflask = name == "myflask"
        || deps
            .iter()
            .any(|d| d["name"] == "myflask" && (d["kind"].is_null() || d["kind"] == "normal"));
    Ok(Crate {
        version: string(&pkg["version"]).unwrap_or_default(),
        description: string(&pkg["description"]),
        license: string(&pkg["license"]),
        license_file: string(&pkg["license_file"]).map(|f| dir.join(f)),
        authors: pkg["authors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(string)
            .collect(),
        homepage: string(&pkg["homepage"]),
        bins,
        uses_myflask,
        myflask_meta: pkg["metadata"]["myflask"].clone(),
        target_dir: PathBuf::from(
            string(&meta["target_directory"]).unwrap_or_else(|| "target".into()),
        ),
        dir,
        name,
    })
}

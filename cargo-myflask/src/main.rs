//! `cargo myflask deb`: the cargo subcommand that turns a crate whose binary
//! is built on `myflask::cli::main_with` into a Debian package with a
//! systemd-owned socket, a hardened service, nginx snippets and maintainer
//! scripts that never restart the socket. This file owns the command line
//! and the order of the steps; every failure ends here as one sentence on
//! stderr and exit status 1, before any package file is written.

mod binary;
mod crate_info;
mod deb;
mod docs;
mod settings;
mod stamp;
mod template;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
Usage: cargo myflask deb [--no-build] [--locked] [--revision REV] [--manifest-path PATH]

Builds the release binary of the crate in the current directory (or PATH)
and packages it as target/debian/<name>_<version>-<rev>_<arch>.deb, whose
path is the last line printed on stdout.

  --no-build            package the binary already in target/release
  --locked              pass --locked to cargo build
  --revision REV        the Debian revision instead of Cargo.toml's (default
                        1), e.g. for a rebuild; a changelog named in
                        Cargo.toml without an entry for that version gets
                        one (\"Rebuild\") on top, in the package only
  --manifest-path PATH  the crate's Cargo.toml (default: found from the
                        current directory, as cargo does)

Settings: [package.metadata.myflask] in Cargo.toml (see the myflask README,
\"Ship your own app\").";

/// What `deb` was asked to do.
pub struct Options {
    pub build: bool,
    pub locked: bool,
    pub manifest_path: Option<PathBuf>,
    pub revision: Option<String>,
}

fn parse_args(mut args: Vec<String>) -> Result<Option<Options>, String> {
    // Run as `cargo myflask ...`, cargo passes "myflask" as the first argument.
    if args.first().map(String::as_str) == Some("myflask") {
        args.remove(0);
    }
    let mut it = args.into_iter();
    match it.next().as_deref() {
        Some("deb") => {}
        Some("-h" | "--help" | "help") | None => return Ok(None),
        Some(other) => {
            return Err(format!(
                "unknown command '{other}': the command is `cargo myflask deb`"
            ));
        }
    }
    let mut opts = Options {
        build: true,
        locked: false,
        manifest_path: None,
        revision: None,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--no-build" => opts.build = false,
            "--locked" => opts.locked = true,
            "--manifest-path" => {
                let p = it
                    .next()
                    .ok_or("--manifest-path needs a path to a Cargo.toml")?;
                opts.manifest_path = Some(PathBuf::from(p));
            }
            "--revision" => {
                let r = it
                    .next()
                    .ok_or("--revision needs a Debian revision, e.g. 2")?;
                opts.revision = Some(r);
            }
            "-h" | "--help" => return Ok(None),
            other => {
                return Err(format!(
                    "unknown option '{other}' (see `cargo myflask deb --help`)"
                ));
            }
        }
    }
    Ok(Some(opts))
}

fn run(opts: &Options) -> Result<PathBuf, String> {
    deb::check_tools()?;
    let krate = crate_info::load(opts.manifest_path.as_deref())?;
    let mut settings = settings::Settings::from_crate(&krate)?;
    if let Some(r) = &opts.revision {
        settings.set_revision(r)?;
    }
    let texts = units::render_all(&settings)?;
    let docs = docs::Docs::generate(&settings, &krate)?;
    let bin = binary::build(&krate, &settings, opts)?;
    let man = binary::manual_page(&bin, &settings)?;
    binary::check_settings_documented(&bin, &settings, &texts.default_file)?;
    deb::build(&krate, &settings, &texts, &docs, &bin, &man)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(args) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cargo-myflask: error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(deb) => {
            println!("{}", deb.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cargo-myflask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `portcullis audit keygen | verify | show`: the offline side of the audit trail.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis_audit::{ShowOptions, SigningKey, VerifyOptions, show, trail_files, verify_files};

/// `portcullis audit keygen`: write a new signing key (mode 0600) and its public key.
pub(crate) fn keygen(out: &Path) -> ExitCode {
    if out.exists() {
        eprintln!(
            "portcullis: {} exists; refusing to overwrite a signing key (move it aside first)",
            out.display()
        );
        return ExitCode::from(2);
    }
    let (key, seed) = match SigningKey::generate() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::FAILURE;
        }
    };
    let public = pub_path(out);
    // `--out dir/x.key`: the directory is made as needed.
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("portcullis: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let written = write_private(out, &format!("{seed}\n"))
        .and_then(|()| std::fs::write(&public, format!("{}\n", key.public_hex())));
    if let Err(e) = written {
        eprintln!("portcullis: cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!(
        "signing key: {} (keep it secret; set [audit] signing_key to it)",
        out.display()
    );
    println!("public key:  {} ({})", key.public_hex(), public.display());
    println!(
        "verify with: portcullis audit verify PATH --key {}",
        public.display()
    );
    ExitCode::SUCCESS
}

fn pub_path(key: &Path) -> PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".pub");
    key.with_file_name(name)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// `--key`: a public key in hex, a `.pub` file, or the signing key file itself.
fn public_key(arg: &str) -> Result<String, String> {
    let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex(arg) {
        return Ok(arg.to_ascii_lowercase());
    }
    let path = Path::new(arg);
    let text = std::fs::read_to_string(path).map_err(|e| format!("--key {arg}: {e}"))?;
    if path.extension().is_some_and(|e| e == "pub") && is_hex(text.trim()) {
        return Ok(text.trim().to_ascii_lowercase());
    }
    SigningKey::load(path)
        .map(|k| k.public_hex().to_owned())
        .map_err(|e| format!("--key: {e}"))
}

/// The files of the trail(s) named: a live file brings its rotated segments along; several
/// paths are read in the order given.
fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    if let [one] = paths {
        if !one.exists() {
            return Err(format!("{}: no such file", one.display()));
        }
        return trail_files(one).map_err(|e| format!("{}: {e}", one.display()));
    }
    for p in paths {
        if !p.exists() {
            return Err(format!("{}: no such file", p.display()));
        }
    }
    Ok(paths.to_vec())
}

/// `portcullis audit verify`.
pub(crate) fn verify(
    paths: &[PathBuf],
    key: Option<&str>,
    checkpoints: Option<PathBuf>,
    live: bool,
) -> ExitCode {
    let key = match key.map(public_key).transpose() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(2);
        }
    };
    let files = match files(paths) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(2);
        }
    };
    let pinned = key.is_some();
    let options = VerifyOptions {
        key,
        checkpoints,
        live,
    };
    let report = match verify_files(&files, &options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("portcullis: cannot read the trail: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &report.warnings {
        println!("warning: {w}");
    }
    if let Some(problem) = &report.problem {
        println!("NOT INTACT: {problem}");
        return ExitCode::FAILURE;
    }
    let (first, last) = report.seq.unwrap_or((0, 0));
    let (from, to) = report.span.clone().unwrap_or_default();
    println!(
        "intact: {} file(s), {} records (seq {first}..{last}), {} sessions, {} commands, {} refused connections",
        report.files.len(),
        report.records,
        report.sessions,
        report.commands,
        report.connections
    );
    println!("  from {from} to {to}");
    match &report.key {
        Some(k) => println!(
            "  {} checkpoints, {} signed by {k}{}",
            report.checkpoints,
            report.signed,
            if pinned {
                " (the expected key)"
            } else {
                " (the key the trail names; pin it with --key)"
            }
        ),
        None => println!("  {} checkpoints, none signed", report.checkpoints),
    }
    println!(
        "  {}",
        if report.sealed {
            "sealed: ends with the gateway's shutdown checkpoint"
        } else {
            "unsealed tail (the gateway is still writing)"
        }
    );
    ExitCode::SUCCESS
}

/// `portcullis audit show`.
pub(crate) fn show_trail(paths: &[PathBuf], session: Option<String>, json: bool) -> ExitCode {
    let files = match files(paths) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(2);
        }
    };
    let options = ShowOptions {
        session: session.clone(),
        json,
    };
    let mut out = std::io::stdout().lock();
    match show(&files, &options, &mut out) {
        Ok(0) if session.is_some() => {
            eprintln!(
                "portcullis: no records of session {}",
                session.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: cannot read the trail: {e}");
            ExitCode::from(2)
        }
    }
}

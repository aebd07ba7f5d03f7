//! The docs' examples are checked: every TOML block in README.md and docs/ passes
//! `portcullis check` (a fragment is checked inside a minimal configuration), and every
//! `portcullis …` command line in a shell block names a real subcommand with real flags.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::BIN;

fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The fenced blocks of `lang` in `text`, with the line each starts on.
fn blocks(text: &str, lang: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == format!("```{lang}") => {
                current = Some((n + 1, String::new()))
            }
            Some(_) if line.trim_start().starts_with("```") => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

const BASE: &str = r#"
[[identity.tokens]]
name = "docs"
sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

[[postgres]]
name = "docs"
listen = "127.0.0.1:16432"
allow_plaintext_tokens_on_loopback = true
[postgres.upstream]
host = "127.0.0.1"
user = "app"
password = "x"
"#;

#[test]
fn toml_examples_in_the_docs_pass_check() {
    let mut checked = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, block) in blocks(&text, "toml") {
            let dir = tempfile::tempdir().unwrap();
            let mut config = block.clone();
            if !block.contains("[[postgres]]") {
                config = format!("{BASE}\n{block}");
            }
            if !block.contains("[admin]") {
                config = format!("[admin]\nlisten = \"127.0.0.1:19480\"\n{config}");
            }
            if block.contains("signing_key") {
                let key = dir.path().join("audit-ed25519.key");
                let out = Command::new(BIN)
                    .args(["audit", "keygen", "--out"])
                    .arg(&key)
                    .output()
                    .unwrap();
                assert!(out.status.success());
            }
            let path = dir.path().join("portcullis.toml");
            std::fs::write(&path, &config).unwrap();
            let mut cmd = Command::new(BIN);
            cmd.args(["check", "--config"]).arg(&path);
            // Every ${NAME} the example uses, set to something long enough for any key.
            for name in config
                .split("${")
                .skip(1)
                .filter_map(|r| r.split('}').next())
            {
                cmd.env(name, "docs-example-value-0123456789abcdef");
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}:{line}: the example does not pass `portcullis check`:\n{}\n{}",
                file.display(),
                String::from_utf8_lossy(&out.stderr),
                config
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} TOML examples found");
}

/// Words of a shell command line: quotes group, a lone `\\` (line continuation) is dropped.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any && word != "\\" {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                any = false;
            }
            (None, c) => {
                word.push(c);
                any = true;
            }
        }
    }
    if any && word != "\\" {
        words.push(word);
    }
    words
}

#[test]
fn portcullis_command_lines_in_the_docs_exist() {
    let mut checked = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, block) in blocks(&text, "sh") {
            for command in block.lines() {
                // `portcullis …` or `target/release/portcullis …`, possibly after `VAR=… ` or in `$(…)`.
                let Some(at) = command
                    .find("portcullis ")
                    .filter(|&i| i == 0 || matches!(command.as_bytes()[i - 1], b' ' | b'/' | b'('))
                else {
                    continue;
                };
                if command[..at].contains("-p ") || command[..at].contains("cargo") {
                    continue; // cargo's package name, not the binary
                }
                let rest = &command[at + "portcullis ".len()..];
                let rest = rest.split(['#', '|', ')']).next().unwrap_or_default();
                let words = shell_words(rest);
                let out = Command::new(BIN)
                    .args(&words)
                    .arg("--help")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}:{line}: `portcullis {}` is not a valid command line:\n{}",
                    file.display(),
                    words.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} command lines found");
}

//! Spawning commands. Every command is printed before it runs (`$ …`), and a
//! failure names the command and its exit status.

use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` with inherited stdio after printing it; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    check(cmd, status)
}

/// Runs `cmd` quietly to find something out ("is X installed?"): its stdout
/// when it exits 0, `None` when it fails or cannot be started.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Fails with the command line and its exit status unless `status` is success.
pub fn check(cmd: &Command, status: ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// The command as a shell line: variables it sets, program, arguments.
pub fn display(cmd: &Command) -> String {
    let env = cmd.get_envs().filter_map(|(k, v)| {
        Some(format!(
            "{}={}",
            k.to_string_lossy(),
            quote(&v?.to_string_lossy())
        ))
    });
    let program = std::iter::once(cmd.get_program().to_string_lossy().into_owned());
    let args = cmd.get_args().map(|a| quote(&a.to_string_lossy()));
    env.chain(program).chain(args).collect::<Vec<_>>().join(" ")
}

fn quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

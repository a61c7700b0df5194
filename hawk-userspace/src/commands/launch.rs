//! Starting `-- COMMAND ARGS…` under the profiler: the command is forked,
//! waits before `exec` until the sampler is attached (so its first
//! instructions are profiled too), then runs with its pid already in the
//! sampler's pid filter.
//!
//! `std::process::Command` cannot do this: its `spawn` waits for the `exec`,
//! so a child held before `exec` would deadlock it. Hence a small fork/execve
//! of our own, doing only async-signal-safe work in the child.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A forked command held before `exec` until [`GatedChild::release`].
pub struct GatedChild {
    pid: libc::pid_t,
    program: PathBuf,
    gate: Option<libc::c_int>,
    exec_errors: libc::c_int,
    status: Option<libc::c_int>,
}

fn pipe() -> anyhow::Result<(libc::c_int, libc::c_int)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    Ok((fds[0], fds[1]))
}

/// `program` as `execvp` would find it.
fn resolve(program: &str) -> anyhow::Result<PathBuf> {
    let is_executable = |p: &Path| {
        let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: c is a valid C string.
        p.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        if !path.exists() {
            bail!("cannot start {program:?}: no such file");
        }
        if !is_executable(&path) {
            bail!("cannot start {program:?}: not an executable file");
        }
        return Ok(path);
    }
    let paths = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .with_context(|| format!("cannot start {program:?}: not found in PATH"))
}

fn c_string(s: &OsStr) -> anyhow::Result<CString> {
    CString::new(s.as_bytes()).with_context(|| format!("{s:?} contains a NUL byte"))
}

impl GatedChild {
    /// Forks `program args…`; the child waits for [`GatedChild::release`].
    pub fn spawn(program: &str, args: &[String]) -> anyhow::Result<Self> {
        let program_path = resolve(program)?;
        let path = c_string(program_path.as_os_str())?;
        let mut argv = vec![c_string(OsStr::new(program))?];
        for arg in args {
            argv.push(c_string(OsStr::new(arg))?);
        }
        let env: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());

        let (gate_r, gate_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        // SAFETY: after fork the child only calls async-signal-safe functions
        // (close, read, execve, write, _exit) on memory prepared before fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            unsafe {
                libc::close(gate_w);
                libc::close(err_r);
                let mut byte = 0u8;
                // Held here until the parent writes (or exits: EOF).
                let n = libc::read(gate_r, (&raw mut byte).cast(), 1);
                if n == 1 {
                    libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
                }
                let errno = *libc::__errno_location();
                libc::write(err_w, (&raw const errno).cast(), size_of::<libc::c_int>());
                libc::_exit(127);
            }
        }
        // SAFETY: closing the child's ends in the parent.
        unsafe {
            libc::close(gate_r);
            libc::close(err_w);
        }
        Ok(Self {
            pid,
            program: program_path,
            gate: Some(gate_w),
            exec_errors: err_r,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The program the child runs once released.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Lets the command `exec`, and fails if the `exec` failed.
    pub fn release(&mut self) -> anyhow::Result<()> {
        let Some(gate) = self.gate.take() else {
            return Ok(());
        };
        let byte = 1u8;
        // SAFETY: gate is our open write end.
        unsafe {
            libc::write(gate, (&raw const byte).cast(), 1);
            libc::close(gate);
        }
        let mut errno: libc::c_int = 0;
        // EOF (0 bytes) means execve succeeded and closed the CLOEXEC pipe.
        // SAFETY: reading an int from our open read end.
        let n = unsafe {
            libc::read(
                self.exec_errors,
                (&raw mut errno).cast(),
                size_of::<libc::c_int>(),
            )
        };
        if n as usize == size_of::<libc::c_int>() {
            self.reap(true);
            bail!(
                "cannot start the command: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
        Ok(())
    }

    fn reap(&mut self, block: bool) -> Option<libc::c_int> {
        if self.status.is_none() {
            let mut status = 0;
            let flags = if block { 0 } else { libc::WNOHANG };
            // SAFETY: waiting for our own child.
            if unsafe { libc::waitpid(self.pid, &mut status, flags) } == self.pid {
                self.status = Some(status);
            }
        }
        self.status
    }

    /// True once the command has exited.
    pub fn exited(&mut self) -> bool {
        self.reap(false).is_some()
    }

    /// Ends the command if it still runs (SIGTERM, SIGKILL after 2 s) and
    /// returns its wait status.
    pub fn finish(&mut self) -> libc::c_int {
        if let Some(gate) = self.gate.take() {
            // Never released: closing the gate makes it exit without exec.
            // SAFETY: our own descriptor.
            unsafe { libc::close(gate) };
            return self.reap(true).unwrap_or(0);
        }
        if self.reap(false).is_none() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.reap(false).is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.reap(false).is_none() {
                // SAFETY: as above.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
        }
        self.reap(true).unwrap_or(0)
    }
}

impl Drop for GatedChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.finish();
        }
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.exec_errors) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_a_command_after_release() {
        let mut child = GatedChild::spawn("true", &[]).unwrap();
        assert!(!child.exited(), "held before exec");
        child.release().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !child.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = child.finish();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn missing_programs_fail_before_forking() {
        let err = GatedChild::spawn("/nonexistent/program", &[])
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/program"), "{err}");
        let err = GatedChild::spawn("no-such-program-hawk", &[])
            .err()
            .unwrap();
        assert!(err.to_string().contains("not found in PATH"), "{err}");
    }

    #[test]
    fn an_unreleased_child_is_ended() {
        let mut child = GatedChild::spawn("sleep", &["100".into()]).unwrap();
        let status = child.finish();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 127);
    }
}

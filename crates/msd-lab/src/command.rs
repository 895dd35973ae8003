//! Running `ip`, `nft` and other setup commands and turning failures into [`LabError`]s.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::LabError;

/// Runs `program` with `args`, waits for it, and returns its stdout.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    run_with_input(program, args, None)
}

/// Runs `program` with `args`, writes `input` to its stdin if given, and returns its stdout.
pub(crate) fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, LabError> {
    let command_line = command_line(program, args);
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let mut child = command
        .spawn()
        .map_err(|source| LabError::CommandNotStarted {
            command: command_line.clone(),
            source,
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error means the program exited early, and its status and stderr below
        // explain why better than the broken pipe does.
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| LabError::CommandNotStarted {
            command: command_line.clone(),
            source,
        })?;

    if !output.status.success() {
        return Err(LabError::CommandFailed {
            command: command_line,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Formats a command for error messages, as it would be typed in a shell.
pub(crate) fn command_line(program: &str, args: &[&str]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_joins_with_spaces() {
        assert_eq!(command_line("ip", &["-n", "x", "link"]), "ip -n x link");
    }

    #[test]
    fn missing_program_is_not_started() {
        let error =
            run("msd-lab-no-such-program", &["--version"]).expect_err("program does not exist");
        assert!(
            matches!(error, LabError::CommandNotStarted { .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("msd-lab-no-such-program --version"),
            "{error}"
        );
    }

    #[test]
    fn failing_command_reports_stderr() {
        let error =
            run("sh", &["-c", "echo broken >&2; exit 3"]).expect_err("command exits with 3");
        assert!(matches!(error, LabError::CommandFailed { .. }), "{error}");
        assert!(error.to_string().contains("broken"), "{error}");
    }

    #[test]
    fn input_reaches_stdin() {
        let output = run_with_input("cat", &[], Some("hello\n")).expect("cat succeeds");
        assert_eq!(output, "hello\n");
    }
}

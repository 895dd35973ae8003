//! The optional settings file, in TOML (`--config PATH` or `MSD_CONFIG`).
//!
//! Keys are the long flags of a command without their dashes. Top-level keys apply to every
//! command that has the flag. A table named after a command (`[announce]`, `[serve]`, ...)
//! applies to that command alone and overrides the top-level keys. Flags and environment
//! variables override the file. The file's settings become command-line arguments before clap
//! parses them, so they are validated exactly like flags.
//!
//! ```toml
//! group = "55c545258c440a731a50810425bc"
//! interface = ["eth0"]
//!
//! [announce]
//! id = "web-1"
//! url = "http://10.0.0.7:8080"
//! metadata = { zone = "eu-1" }
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use crate::args::Cli;
use crate::exit::CliError;

/// Keys that only the command line can set.
const COMMAND_LINE_ONLY: &[&str] = &["config", "help", "version"];

/// Returns `argv` with the settings of the configuration file appended as flags, or `argv`
/// unchanged when no file is named.
pub(crate) fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, CliError> {
    let Some(path) = config_path(&argv) else { return Ok(argv) };
    let text = std::fs::read_to_string(&path)
        .map_err(|error| invalid(&path, format!("failed to read it: {error}; check --config or MSD_CONFIG")))?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        let line = error.span().map_or(1, |span| text.get(..span.start).unwrap_or(&text).matches('\n').count() + 1);
        invalid(&path, format!("line {line}: {}", error.message()))
    })?;
    let extra = settings_as_flags(&argv, &table).map_err(|message| invalid(&path, message))?;
    Ok(argv.into_iter().chain(extra).collect())
}

fn invalid(path: &Path, message: String) -> CliError {
    CliError::Usage(format!("invalid config file {}: {message}", path.display()))
}

/// Finds `--config PATH` or `--config=PATH` on the command line, or else `MSD_CONFIG`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut arguments = argv.iter().skip(1);
    while let Some(argument) = arguments.next() {
        if argument == "--" {
            break;
        }
        if argument == "--config" {
            return arguments.next().map(PathBuf::from);
        }
        if let Some(path) = argument.to_str().and_then(|text| text.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("MSD_CONFIG").filter(|value| !value.is_empty()).map(PathBuf::from)
}

/// Turns the file's settings for the command in `argv` into flags, leaving out every setting
/// that the command line or the environment already gives.
fn settings_as_flags(argv: &[OsString], table: &toml::Table) -> Result<Vec<OsString>, String> {
    let mut command = Cli::command();
    command.build();
    let sections: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
    for (key, value) in table {
        let known = (sections.contains(key) && value.is_table())
            || command.get_subcommands().any(|sub| long_flag(sub, key).is_some());
        if !known {
            return Err(format!("unknown setting `{key}`; settings are the long flags of the commands, without dashes"));
        }
    }

    // Errors are ignored here: required flags may still be missing, since the file may give them.
    let Ok(matches) = Cli::command().ignore_errors(true).try_get_matches_from(argv) else { return Ok(Vec::new()) };
    let Some((name, sub_matches)) = matches.subcommand() else { return Ok(Vec::new()) };
    let Some(sub) = command.find_subcommand(name) else { return Ok(Vec::new()) };

    let mut settings: Vec<(&str, &toml::Value, bool)> = Vec::new();
    for (key, value) in table {
        if !(sections.contains(key) && value.is_table()) {
            settings.push((key, value, false));
        }
    }
    if let Some(section) = table.get(name) {
        let section = section.as_table().ok_or_else(|| format!("`{name}` must be a table of settings"))?;
        for (key, value) in section {
            settings.retain(|(other, _, _)| other != key);
            settings.push((key, value, true));
        }
    }

    let mut flags = Vec::new();
    for (key, value, in_section) in settings {
        let Some(id) = long_flag(sub, key) else {
            if in_section {
                return Err(format!("unknown setting `{key}` in [{name}]; see `msd {name} --help` for its flags"));
            }
            continue;
        };
        if given_outside_file(sub_matches, &id) {
            continue;
        }
        append_flag(&mut flags, key, value).map_err(|message| format!("setting `{key}`: {message}"))?;
    }
    Ok(flags)
}

/// Returns the id of the argument whose long flag is `--key`, unless only the command line may
/// set it.
fn long_flag(command: &clap::Command, key: &str) -> Option<String> {
    if COMMAND_LINE_ONLY.contains(&key) {
        return None;
    }
    command.get_arguments().find(|arg| arg.get_long() == Some(key)).map(|arg| arg.get_id().to_string())
}

fn given_outside_file(matches: &ArgMatches, id: &str) -> bool {
    matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

/// Appends `--key=VALUE` for one setting: once per element of an array, once per `name=value`
/// entry of a table, and a bare `--key` for `true`.
fn append_flag(flags: &mut Vec<OsString>, key: &str, value: &toml::Value) -> Result<(), String> {
    let flag = |text: &str| OsString::from(format!("--{key}={text}"));
    match value {
        toml::Value::String(text) => flags.push(flag(text)),
        toml::Value::Integer(number) => flags.push(flag(&number.to_string())),
        toml::Value::Float(number) => flags.push(flag(&number.to_string())),
        toml::Value::Boolean(true) => flags.push(OsString::from(format!("--{key}"))),
        toml::Value::Boolean(false) => {}
        toml::Value::Array(items) => {
            for item in items {
                if item.is_array() || item.is_table() {
                    return Err("write a list of plain values".into());
                }
                append_flag(flags, key, item)?;
            }
        }
        toml::Value::Table(entries) => {
            for (name, item) in entries {
                let text = match item {
                    toml::Value::String(text) => text.clone(),
                    toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => item.to_string(),
                    _ => return Err(format!("entry `{name}` must be a plain value")),
                };
                flags.push(flag(&format!("{name}={text}")));
            }
        }
        toml::Value::Datetime(_) => return Err("a date is not a valid value; write a string".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(arguments: &[&str]) -> Vec<OsString> {
        std::iter::once("msd").chain(arguments.iter().copied()).map(OsString::from).collect()
    }

    fn flags(arguments: &[&str], file: &str) -> Result<Vec<String>, String> {
        let table: toml::Table = file.parse().unwrap();
        let flags = settings_as_flags(&argv(arguments), &table)?;
        Ok(flags.into_iter().map(|flag| flag.to_string_lossy().into_owned()).collect())
    }

    const FILE: &str = r#"
        group = "55c545258c440a731a50810425bc"
        interface = ["lo", "eth1"]
        ipv4 = true
        listen = "0.0.0.0:9000"

        [announce]
        id = "web-1"
        url = "http://10.0.0.7:8080"
        load = 12
        metadata = { zone = "eu-1", rack = 7 }

        [serve]
        listen = "127.0.0.1:8081"
    "#;

    #[test]
    fn announce_takes_top_level_and_section() {
        let flags = flags(&["announce"], FILE).unwrap();
        for expected in [
            "--group=55c545258c440a731a50810425bc",
            "--interface=lo",
            "--interface=eth1",
            "--ipv4",
            "--id=web-1",
            "--url=http://10.0.0.7:8080",
            "--load=12",
            "--metadata=zone=eu-1",
            "--metadata=rack=7",
        ] {
            assert!(flags.iter().any(|flag| flag == expected), "{expected} missing from {flags:?}");
        }
        assert!(!flags.iter().any(|flag| flag.starts_with("--listen")), "announce has no --listen: {flags:?}");
    }

    #[test]
    fn section_overrides_top_level() {
        let flags = flags(&["serve"], FILE).unwrap();
        assert!(flags.contains(&"--listen=127.0.0.1:8081".to_owned()), "{flags:?}");
        assert!(!flags.contains(&"--listen=0.0.0.0:9000".to_owned()), "{flags:?}");
    }

    #[test]
    fn command_line_overrides_file() {
        let flags = flags(&["announce", "--id", "web-2"], FILE).unwrap();
        assert!(!flags.iter().any(|flag| flag.starts_with("--id")), "{flags:?}");
        assert!(flags.iter().any(|flag| flag == "--url=http://10.0.0.7:8080"), "{flags:?}");
    }

    #[test]
    fn unknown_key_names_it() {
        let error = flags(&["announce"], "heartbeat = \"1s\"").unwrap_err();
        assert!(error.contains("`heartbeat`"), "{error}");
        let error = flags(&["announce"], "[announce]\nlisten = \"x\"").unwrap_err();
        assert!(error.contains("`listen` in [announce]"), "{error}");
    }

    #[test]
    fn config_key_is_rejected() {
        let error = flags(&["browse"], "config = \"other.toml\"").unwrap_err();
        assert!(error.contains("`config`"), "{error}");
    }

    #[test]
    fn nested_list_is_rejected() {
        let error = flags(&["browse"], "interface = [[\"lo\"]]").unwrap_err();
        assert!(error.contains("`interface`"), "{error}");
    }

    #[test]
    fn parsed_result_uses_file_values() {
        let table: toml::Table = FILE.parse().unwrap();
        let full: Vec<OsString> = argv(&["announce"]).into_iter().chain(settings_as_flags(&argv(&["announce"]), &table).unwrap()).collect();
        let cli = <Cli as clap::Parser>::try_parse_from(full).unwrap();
        let crate::args::Command::Announce(args) = cli.command else { panic!("expected announce") };
        assert_eq!(args.id, "web-1");
        assert_eq!(args.load, Some(12));
        assert_eq!(args.network.interfaces, ["lo", "eth1"]);
    }

    #[test]
    fn path_from_either_flag_form() {
        assert_eq!(config_path(&argv(&["--config", "a.toml", "browse"])), Some(PathBuf::from("a.toml")));
        assert_eq!(config_path(&argv(&["browse", "--config=b.toml"])), Some(PathBuf::from("b.toml")));
    }
}

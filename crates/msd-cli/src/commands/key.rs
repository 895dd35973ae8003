use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use msd::{Key, KeyRing};

use crate::exit::CliError;
use crate::output::print;

/// Writes a key ring with one fresh primary key to `output`, or prints it.
pub(crate) fn new(output: Option<&Path>) -> Result<(), CliError> {
    let ring = KeyRing::new(Key::from_bytes(rand::random()));
    let text = format!(
        "# msd key ring: one `primary` key signs, `accept` keys also verify.\n# Keep this file secret; share it with every instance and discoverer of the group.\n{}",
        ring.to_file()
    );
    let Some(path) = output else {
        print(&text);
        return Ok(());
    };
    let failed = |error: std::io::Error| CliError::Failure(format!("failed to write key file {}: {error}", path.display()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::Usage(format!("key file {} already exists; choose another path or remove it first", path.display()))
        } else if error.kind() == std::io::ErrorKind::NotFound {
            CliError::Usage(format!(
                "failed to write key file {}: its directory does not exist; create it first (mode 0700)",
                path.display()
            ))
        } else {
            failed(error)
        }
    })?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    eprintln!("msd: wrote key {} to {}", ring.primary().id(), path.display());
    Ok(())
}

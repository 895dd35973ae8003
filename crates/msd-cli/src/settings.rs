//! Validated settings: every argument checked before any socket opens.

use std::net::Ipv4Addr;
use std::time::Duration;

use msd::{GroupId, InterfaceSelection, IpVersion, KeyRing, ProtocolMode};

use crate::args::{DiscoveryArgs, NetworkArgs};
use crate::exit::CliError;

/// The validated form of [`NetworkArgs`].
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) group: GroupId,
    pub(crate) interfaces: InterfaceSelection,
    pub(crate) ip: IpVersion,
    pub(crate) ipv4_group: Option<Ipv4Addr>,
    pub(crate) port: u16,
    pub(crate) protocols: ProtocolMode,
    pub(crate) keys: Option<KeyRing>,
}

impl Network {
    pub(crate) fn from_args(args: &NetworkArgs) -> Result<Self, CliError> {
        let group: GroupId = args.group.trim().parse().map_err(|error: msd::GroupIdError| usage(error.to_string()))?;
        let ipv4_group = args.ipv4_group.as_deref().map(parse_ipv4_group).transpose()?;
        let names: Vec<String> =
            args.interfaces.iter().map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()).collect();
        // An empty value must not widen the selection to every interface.
        if !args.interfaces.is_empty() && names.is_empty() {
            return Err(usage(
                "invalid --interface (or MSD_MULTICAST_INTERFACE): it names no interface; name one such as eth0, or unset it to use every interface".into(),
            ));
        }
        let interfaces = if names.is_empty() { InterfaceSelection::All } else { InterfaceSelection::Named(names) };
        let ip = if args.ipv4 || ipv4_group.is_some() { IpVersion::V4 } else { IpVersion::V6 };
        if args.port == 0 {
            return Err(usage("invalid port 0 (--port or MSD_PORT): the group needs a fixed port; omit it to use 53566".into()));
        }
        let protocols: ProtocolMode =
            args.protocol.trim().parse().map_err(|error| usage(format!("--protocol (or MSD_PROTOCOL): {error}")))?;
        let keys = args.key_file.as_deref().map(read_key_file).transpose()?;
        if keys.is_some() && protocols == ProtocolMode::Seed {
            return Err(usage("invalid --protocol seed with --key-file: the seed protocol cannot be authenticated; use native".into()));
        }
        Ok(Network { group, interfaces, ip, ipv4_group, port: args.port, protocols, keys })
    }

    pub(crate) fn apply_instance(&self, mut builder: msd::InstanceBuilder) -> msd::InstanceBuilder {
        builder = builder.interfaces(self.interfaces.clone()).ip_version(self.ip).port(self.port).protocols(self.protocols);
        if let Some(address) = self.ipv4_group {
            builder = builder.ipv4_group(address);
        }
        if let Some(keys) = &self.keys {
            builder = builder.keys(keys.clone());
        }
        builder
    }

    pub(crate) fn apply_discoverer(&self, mut builder: msd::DiscovererBuilder) -> msd::DiscovererBuilder {
        builder = builder.interfaces(self.interfaces.clone()).ip_version(self.ip).port(self.port).protocols(self.protocols);
        if let Some(address) = self.ipv4_group {
            builder = builder.ipv4_group(address);
        }
        if let Some(keys) = &self.keys {
            builder = builder.keys(keys.clone());
        }
        builder
    }
}

/// Applies the discoverer settings of `browse`, `serve` and `proxy` to `builder`.
pub(crate) fn apply_discovery(args: &DiscoveryArgs, builder: msd::DiscovererBuilder) -> Result<msd::DiscovererBuilder, CliError> {
    Ok(builder
        .discover_interval(parse_duration("--discover-interval", &args.discover_interval)?)
        .expire_after(parse_duration("--expire-after", &args.expire_after)?)
        .max_instances(args.max_instances)
        .rate_limit(args.rate_limit, args.rate_burst))
}

/// Largest key file read, in bytes: room for hundreds of keys with comments.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads a key ring file. Errors name the file and line, never key material. A file that other
/// users may read gets a warning, since anyone who reads it can forge packets.
pub(crate) fn read_key_file(path: &std::path::Path) -> Result<KeyRing, CliError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    let failed = |error: std::io::Error| usage(format!("failed to read key file {}: {error}", path.display()));
    let file = std::fs::File::open(path).map_err(failed)?;
    let metadata = file.metadata().map_err(failed)?;
    if !metadata.is_file() {
        return Err(usage(format!("invalid key file {}: it is not a regular file; write one with `msd key new --output`", path.display())));
    }
    if metadata.len() > MAX_KEY_FILE {
        return Err(usage(format!(
            "invalid key file {}: it is {} bytes, more than the maximum of {MAX_KEY_FILE}",
            path.display(),
            metadata.len()
        )));
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", metadata.permissions().mode() & 0o777),
            "key file is readable by other users; restrict it with chmod 600"
        );
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE).read_to_string(&mut text).map_err(failed)?;
    // Some editors start a UTF-8 file with a byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    KeyRing::parse(text).map_err(|error| usage(format!("invalid key file {}: {error}", path.display())))
}

/// Parses `--metadata KEY=VALUE` entries.
pub(crate) fn parse_metadata(entries: &[String]) -> Result<Vec<(String, String)>, CliError> {
    entries
        .iter()
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
            _ => Err(usage(format!("invalid --metadata {entry:?}: write it as KEY=VALUE, e.g. zone=eu-1"))),
        })
        .collect()
}

fn parse_ipv4_group(text: &str) -> Result<Ipv4Addr, CliError> {
    let address: Ipv4Addr = text
        .parse()
        .map_err(|_| usage(format!("invalid IPv4 group address {text:?}: write it like 239.1.2.3")))?;
    if !address.is_multicast() {
        return Err(usage(format!("invalid IPv4 group address {address}: it is not multicast; use one in 239.0.0.0/8")));
    }
    if address.octets()[..3] == [224, 0, 0] {
        return Err(usage(format!(
            "invalid IPv4 group address {address}: 224.0.0.0/24 is reserved for routing protocols; use one in 239.0.0.0/8"
        )));
    }
    Ok(address)
}

/// Maximum duration any flag accepts. No setting needs more, and deadlines computed from it
/// stay far from the limits of the clock types.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration such as `500ms`, `20s` or `2m`, from above zero to 365 days; `name` is the
/// flag, for the message.
pub(crate) fn parse_duration(name: &str, text: &str) -> Result<Duration, CliError> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|_| usage(format!("invalid {name} {text:?}: write a duration like 500ms, 20s or 2m")))?;
    if duration.is_zero() {
        return Err(usage(format!("invalid {name} {text:?}: it must be greater than zero")));
    }
    if duration > MAX_DURATION {
        return Err(usage(format!("invalid {name} {text:?}: it must be at most 365 days")));
    }
    Ok(duration)
}

/// Checks an instance id and URL the way the library will, so the message names the flag.
pub(crate) fn check_instance(id: &str, url: &str) -> Result<(), CliError> {
    if id.trim().is_empty() {
        return Err(usage("invalid --id: it is empty; give each instance a unique id such as web-1".into()));
    }
    match url::Url::parse(url) {
        Err(error) => {
            return Err(usage(format!("invalid --url {url:?}: {error}; write an absolute URL such as http://10.0.0.7:8080")))
        }
        Ok(parsed) if parsed.host().is_none() => {
            return Err(usage(format!("invalid --url {url:?}: it has no host; write an absolute URL such as http://10.0.0.7:8080")))
        }
        Ok(_) if url.chars().any(|character| character.is_whitespace() || character.is_control()) => {
            return Err(usage(format!("invalid --url {url:?}: it contains spaces or control characters; percent-encode them")))
        }
        Ok(_) => {}
    }
    Ok(())
}

pub(crate) fn usage(message: String) -> CliError {
    CliError::Usage(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(group: &str) -> NetworkArgs {
        NetworkArgs {
            group: group.into(),
            interfaces: vec![],
            ipv4: false,
            ipv4_group: None,
            port: 53566,
            protocol: "both".into(),
            key_file: None,
        }
    }

    #[test]
    fn valid_group_accepted() {
        let settings = Network::from_args(&network("55c545258c440a731a50810425bc")).unwrap();
        assert_eq!(settings.group.to_string(), "55c545258c440a731a50810425bc");
        assert_eq!(settings.ip, IpVersion::V6);
        assert_eq!(settings.interfaces, InterfaceSelection::All);
    }

    #[test]
    fn invalid_inputs_rejected_with_value() {
        let cases: Vec<(&str, Result<(), CliError>, &str)> = vec![
            ("short group", Network::from_args(&network("abc")).map(|_| ()), "\"abc\""),
            ("empty id", check_instance(" ", "http://a:1"), "--id"),
            ("relative url", check_instance("a", "localhost"), "\"localhost\""),
            ("bad duration", parse_duration("--timeout", "soon").map(|_| ()), "\"soon\""),
            ("zero duration", parse_duration("--timeout", "0s").map(|_| ()), "greater than zero"),
            ("huge duration", parse_duration("--timeout", "300000000000years").map(|_| ()), "at most 365 days"),
            ("over a year", parse_duration("--timeout", "366days").map(|_| ()), "at most 365 days"),
            ("unicast ipv4 group", parse_ipv4_group("10.0.0.1").map(|_| ()), "10.0.0.1"),
            ("reserved ipv4 group", parse_ipv4_group("224.0.0.1").map(|_| ()), "reserved"),
            ("url without host", check_instance("a", "mailto:x@y").map(|_| ()), "no host"),
            ("url with space", check_instance("a", "http://x:1/ path").map(|_| ()), "spaces"),
            ("metadata without =", parse_metadata(&["zone".into()]).map(|_| ()), "\"zone\""),
            ("metadata without key", parse_metadata(&["=x".into()]).map(|_| ()), "KEY=VALUE"),
            ("missing key file", read_key_file(std::path::Path::new("/nonexistent/msd.keys")).map(|_| ()), "/nonexistent/msd.keys"),
        ];
        for (name, result, fragment) in cases {
            let error = result.expect_err(name);
            assert!(matches!(error, CliError::Usage(_)), "{name}: {error:?}");
            assert!(error.to_string().contains(fragment), "{name}: {error}");
        }
    }

    #[test]
    fn unknown_protocol_rejected() {
        let mut args = network("55c545258c440a731a50810425bc");
        args.protocol = "udp".into();
        let error = Network::from_args(&args).unwrap_err();
        assert!(error.to_string().contains("\"udp\""), "{error}");
    }

    #[test]
    fn empty_interface_rejected() {
        let mut args = network("55c545258c440a731a50810425bc");
        args.interfaces = vec![" ".into()];
        let error = Network::from_args(&args).unwrap_err();
        assert!(matches!(error, CliError::Usage(_)), "{error:?}");
        assert!(error.to_string().contains("names no interface"), "{error}");
    }

    #[test]
    fn ipv4_group_implies_ipv4() {
        let mut args = network("55c545258c440a731a50810425bc");
        args.ipv4_group = Some("239.9.9.9".into());
        assert_eq!(Network::from_args(&args).unwrap().ip, IpVersion::V4);
    }

    #[test]
    fn interface_list_trimmed() {
        let mut args = network("55c545258c440a731a50810425bc");
        args.interfaces = vec![" eth1".into(), "".into()];
        assert_eq!(Network::from_args(&args).unwrap().interfaces, InterfaceSelection::Named(vec!["eth1".into()]));
    }
}

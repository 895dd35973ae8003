//! Values shared by the unit tests of several modules.

use std::collections::BTreeMap;
use std::time::Instant;

use msd::InstanceInfo;

/// Returns a serving native instance with `id` and `url`, first and last seen now, and no load,
/// weight or metadata. Tests change the fields they need with struct update syntax.
pub(crate) fn instance_info(id: &str, url: &str) -> InstanceInfo {
    let now = Instant::now();
    InstanceInfo {
        id: id.into(),
        url: url.into(),
        protocol: msd::Protocol::Native,
        health: msd::Health::Serving,
        weight: None,
        load: None,
        metadata: BTreeMap::new(),
        incarnation: Some(1),
        sequence: Some(1),
        ttl: None,
        key_id: None,
        interface: msd::InterfaceIndex(1),
        source: "10.0.0.1:5".parse().unwrap(),
        first_seen: now,
        last_seen: now,
    }
}

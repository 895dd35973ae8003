use msd::GroupId;
use serde::Serialize;

use crate::exit::CliError;
use crate::output::print;

#[derive(Serialize)]
struct GroupJson {
    group_id: String,
    ipv6: String,
    ipv4: String,
    port: u16,
}

pub(crate) fn new(json: bool) -> Result<(), CliError> {
    let group = GroupId::from_bytes(rand::random());
    let info = GroupJson {
        group_id: group.to_string(),
        ipv6: group.ipv6_multicast().to_string(),
        ipv4: group.ipv4_multicast().to_string(),
        port: msd::SEED_PORT,
    };
    if json {
        let text = serde_json::to_string_pretty(&info)
            .map_err(|error| CliError::Failure(format!("failed to encode JSON: {error}")))?;
        print(&format!("{text}\n"));
    } else {
        print(&format!(
            "group id:   {}\nIPv6 group: [{}]:{}\nIPv4 group: {}:{} (with --ipv4)\n",
            info.group_id, info.ipv6, info.port, info.ipv4, info.port
        ));
    }
    Ok(())
}

//! `msd demo`: the main job on the loopback interface, with no root and no setup.

use std::time::Duration;

use msd::{Discoverer, Event, GroupId, Instance, InterfaceSelection, IpVersion};

use crate::args::DemoArgs;
use crate::commands::browse::describe;
use crate::exit::CliError;
use crate::output::{print, table};
use crate::settings::usage;

/// The longest the demo waits for one expected event before it reports a failure.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between the demo's steps, for the reader.
const STEP_PAUSE: Duration = Duration::from_millis(400);

pub(crate) async fn run(args: DemoArgs) -> Result<(), CliError> {
    if !(1..=20).contains(&args.instances) {
        return Err(usage(format!("invalid --instances {}: choose 1 to 20", args.instances)));
    }
    // A fresh group, so that demos running side by side do not see each other.
    let group = GroupId::from_bytes(rand::random());
    let loopback = InterfaceSelection::Named(vec!["lo".into()]);
    print(&format!(
        "msd demo: group {group}, IPv4 group {}:{} on the loopback interface\n\n",
        group.ipv4_multicast(),
        msd::SEED_PORT
    ));

    let discoverer = Discoverer::builder(group)
        .interfaces(loopback.clone())
        .ip_version(IpVersion::V4)
        .discover_interval(Duration::from_secs(2))
        .expire_after(Duration::from_secs(6))
        .start()
        .await?;
    let mut events = discoverer.events();
    print("discoverer started; starting instances\n");

    let mut instances = Vec::new();
    for number in 1..=args.instances {
        let instance = Instance::builder(group)
            .id(format!("demo-{number}"))
            .url(format!("http://127.0.0.1:{}", 8000 + number))
            .interfaces(loopback.clone())
            .ip_version(IpVersion::V4)
            .load(number * 10)
            .metadata("zone", if number % 2 == 0 { "b" } else { "a" })
            .start()
            .await?;
        instances.push(instance);
        // A short pause, so the table visibly fills up one instance at a time.
        tokio::time::sleep(STEP_PAUSE).await;
    }

    let mut up = 0;
    while up < instances.len() {
        let event = next_event(&mut events).await?;
        print(&format!("  {}\n", describe(&event)));
        if matches!(event, Event::Up(_)) {
            up += 1;
        }
    }
    print_table(&discoverer).await?;

    tokio::time::sleep(STEP_PAUSE).await;
    if let Some(first) = instances.first() {
        print(&format!("\n{} starts draining: its health goes out at once, not at the next heartbeat\n", first.id()));
        first.set_health(msd::Health::Draining).await?;
        loop {
            let event = next_event(&mut events).await?;
            print(&format!("  {}\n", describe(&event)));
            if matches!(&event, Event::Changed { current, .. } if current.health == msd::Health::Draining) {
                break;
            }
        }
    }

    tokio::time::sleep(STEP_PAUSE).await;
    let leaving = instances.remove(instances.len() / 2);
    let leaving_id = leaving.id().to_owned();
    print(&format!("\n{leaving_id} shuts down and sends LOGOFF\n"));
    leaving.shutdown().await?;
    loop {
        let event = next_event(&mut events).await?;
        print(&format!("  {}\n", describe(&event)));
        if matches!(&event, Event::Down { instance, .. } if instance.id == leaving_id) {
            break;
        }
    }
    print_table(&discoverer).await?;

    for instance in instances {
        instance.shutdown().await?;
    }
    discoverer.shutdown().await;
    print("\ndone: every instance logged off\n");
    Ok(())
}

async fn next_event(events: &mut msd::Events) -> Result<Event, CliError> {
    match tokio::time::timeout(EVENT_TIMEOUT, events.next()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(CliError::Failure("the discoverer stopped unexpectedly".into())),
        Err(_) => Err(CliError::Failure(format!(
            "no event within {}s; check that the loopback interface is up (`ip link show lo`)",
            EVENT_TIMEOUT.as_secs()
        ))),
    }
}

async fn print_table(discoverer: &Discoverer) -> Result<(), CliError> {
    let instances = discoverer.instances().await?;
    let now = tokio::time::Instant::now().into_std();
    print(&format!("\n{}", table(&instances, now)));
    Ok(())
}

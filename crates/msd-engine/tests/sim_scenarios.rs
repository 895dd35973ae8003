//! Scenarios on the deterministic simulator: many nodes, loss, crashes, restarts, key rotation
//! and partitions, on virtual time. Each scenario prints its key figures to stderr, which
//! `--nocapture` shows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use msd_engine::sim::{NodeId, Sim, Traffic};
use msd_engine::{DiscovererConfig, DownReason, Event, InstanceConfig, InstanceInfo};
use msd_wire::keys::{Key, KeyRing};
use msd_wire::GroupId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GROUP: GroupId = GroupId::from_bytes([0x55; 14]);

/// Returns the instant that every virtual clock in this file starts from. Its value does not matter.
#[expect(clippy::disallowed_methods, reason = "the virtual clock needs some instant to start from")]
fn origin() -> Instant {
    Instant::now()
}

fn instance_config(index: usize) -> InstanceConfig {
    let url = format!("http://10.0.{}.{}:8080", index / 256, index % 256);
    InstanceConfig { incarnation: 1, ..InstanceConfig::new(GROUP, instance_id(index), url) }
}

fn instance_id(index: usize) -> String {
    format!("svc-{index:04}")
}

/// Starts the instances with indexes `0..count`, each on its own node.
fn add_instances(sim: &mut Sim, count: usize) -> Vec<NodeId> {
    (0..count).map(|index| add_instance(sim, instance_config(index))).collect()
}

fn add_instance(sim: &mut Sim, config: InstanceConfig) -> NodeId {
    sim.add_instance(config).expect("the instance configuration encodes")
}

fn restart_instance(sim: &mut Sim, node: NodeId, config: InstanceConfig) {
    sim.restart_instance(node, config).expect("the instance configuration encodes");
}

fn id_of(sim: &Sim, node: NodeId) -> String {
    sim.instance(node).config().id.clone()
}

/// Returns the Down events of a discoverer node: when, which instance, why.
fn downs(sim: &Sim, discoverer: NodeId) -> Vec<(Instant, &InstanceInfo, DownReason)> {
    sim.events(discoverer)
        .iter()
        .filter_map(|(at, event)| match event {
            Event::Down { instance, reason } => Some((*at, instance, *reason)),
            Event::Up(_) | Event::Changed { .. } => None,
        })
        .collect()
}

/// Returns the Up events of a discoverer node: when, and which instance.
fn ups(sim: &Sim, discoverer: NodeId) -> Vec<(Instant, &InstanceInfo)> {
    sim.events(discoverer)
        .iter()
        .filter_map(|(at, event)| match event {
            Event::Up(info) => Some((*at, info)),
            Event::Changed { .. } | Event::Down { .. } => None,
        })
        .collect()
}

fn listed_ids(sim: &Sim, discoverer: NodeId) -> BTreeSet<String> {
    sim.discoverer(discoverer).instances().map(|info| info.id.clone()).collect()
}

/// Formats a duration in milliseconds with one decimal, for the printed figures.
fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// Returns the largest gap between two heartbeats: the interval plus its 20 % jitter.
fn max_heartbeat_gap(config: &InstanceConfig) -> Duration {
    config.heartbeat_interval.mul_f64(1.2)
}

#[test]
fn thousand_instances_converge_at_three_discoverers() {
    const INSTANCES: usize = 1000;
    let start = origin();
    let mut sim = Sim::new(1, start);
    // Instances ignore each other's heartbeats. Delivering each one to 999 other instances would
    // multiply the deliveries by more than 300 and change nothing but the instances' counters.
    sim.set_instances_hear_instances(false);

    // Instances boot at random over the first second. One discoverer is up before all of them,
    // one joins halfway, one after the last, so both the ANNOUNCE and the DISCOVER path count.
    let mut boot = StdRng::seed_from_u64(2);
    let mut instance_starts: Vec<Duration> =
        (0..INSTANCES).map(|_| boot.random_range(Duration::ZERO..Duration::from_secs(1))).collect();
    instance_starts.sort();
    let last_instance_start = instance_starts.last().copied().unwrap_or_default();
    let discoverer_starts = [Duration::ZERO, Duration::from_millis(500), Duration::from_secs(1)];

    let mut discoverers = Vec::new();
    let mut pending_instances = instance_starts.iter().enumerate().peekable();
    for &discoverer_start in &discoverer_starts {
        while let Some((index, &at)) = pending_instances.next_if(|&(_, &at)| at < discoverer_start) {
            sim.run_until(start + at);
            add_instance(&mut sim, instance_config(index));
        }
        sim.run_until(start + discoverer_start);
        discoverers.push(sim.add_discoverer(DiscovererConfig::new(GROUP)));
    }
    for (index, &at) in pending_instances {
        sim.run_until(start + at);
        add_instance(&mut sim, instance_config(index));
    }
    sim.run_until(start + Duration::from_secs(3));

    // Without loss an instance that boots after a discoverer reaches it with its first ANNOUNCE,
    // within one latency. One that booted earlier answers the discoverer's first DISCOVER within
    // the answer delay, so its answer arrives within two latencies plus that delay.
    let max_latency = *sim.latency().end();
    let max_answer_delay = instance_config(0).max_answer_delay;
    for (&discoverer, &discoverer_start) in discoverers.iter().zip(&discoverer_starts) {
        let bound = (last_instance_start + max_latency).max(discoverer_start + 2 * max_latency + max_answer_delay);
        let up_times = ups(&sim, discoverer);
        let converged = up_times.iter().map(|(at, _)| *at - start).max().unwrap_or_default();
        eprintln!(
            "convergence: {discoverer} started at {}, listed all {INSTANCES} instances at {} (bound {})",
            ms(discoverer_start),
            ms(converged),
            ms(bound)
        );
        assert_eq!(sim.discoverer(discoverer).len(), INSTANCES, "{discoverer} lists every instance");
        assert_eq!(up_times.len(), INSTANCES, "{discoverer} saw each instance come up once");
        assert!(converged <= bound, "{discoverer} converged at {converged:?}, after the bound {bound:?}");
        assert!(downs(&sim, discoverer).is_empty(), "{discoverer} lost no instance");
    }

    // Steady state over two periodic DISCOVER rounds and two seed ANNOUNCE rounds.
    sim.run_until(start + Duration::from_secs(5));
    let instances: Vec<NodeId> = sim.instances().collect();
    let sent_before: u64 = instances.iter().map(|&node| sim.node_traffic(node).sent_packets).sum();
    let bytes_before: u64 = instances.iter().map(|&node| sim.node_traffic(node).sent_bytes).sum();
    let window = Duration::from_secs(40);
    sim.run_for(window);
    let sent: u64 = instances.iter().map(|&node| sim.node_traffic(node).sent_packets).sum::<u64>() - sent_before;
    let bytes: u64 = instances.iter().map(|&node| sim.node_traffic(node).sent_bytes).sum::<u64>() - bytes_before;
    let per_instance = sent as f64 / window.as_secs_f64() / INSTANCES as f64;
    let bytes_per_instance = bytes as f64 / window.as_secs_f64() / INSTANCES as f64;
    eprintln!(
        "steady state: {per_instance:.2} packets/s and {bytes_per_instance:.0} payload bytes/s per instance \
         ({INSTANCES} instances, {} discoverers, both protocols)",
        discoverers.len()
    );

    // Heartbeats come every 0.8 to 1.2 heartbeat intervals. On top of them come a seed ANNOUNCE
    // every announce interval, and a native and a seed answer to each discoverer's periodic DISCOVER.
    let config = instance_config(0);
    let answers = 2.0 * discoverers.len() as f64 / DiscovererConfig::new(GROUP).discover_interval.as_secs_f64();
    let others = 1.0 / config.announce_interval.as_secs_f64() + answers;
    let ceiling = 1.0 / (0.8 * config.heartbeat_interval.as_secs_f64()) + others;
    let floor = 1.0 / max_heartbeat_gap(&config).as_secs_f64();
    assert!(per_instance <= ceiling, "{per_instance:.2} packets/s per instance exceeds {ceiling:.2}");
    assert!(per_instance >= floor, "{per_instance:.2} packets/s per instance is below the heartbeat rate {floor:.2}");
    for &discoverer in &discoverers {
        assert_eq!(sim.discoverer(discoverer).len(), INSTANCES, "{discoverer} still lists every instance");
        assert!(downs(&sim, discoverer).is_empty(), "{discoverer} lost no instance in steady state");
    }
}

/// Runs 50 instances and 2 discoverers for 30 virtual minutes with 10 % of packet copies lost.
#[test]
fn loss_removes_no_live_instance() {
    const INSTANCES: usize = 50;
    let start = origin();
    let mut sim = Sim::new(3, start);
    sim.set_instances_hear_instances(false);
    sim.set_loss(0.10);
    let discoverers =
        [sim.add_discoverer(DiscovererConfig::new(GROUP)), sim.add_discoverer(DiscovererConfig::new(GROUP))];
    let ids: BTreeSet<String> = (0..INSTANCES).map(instance_id).collect();
    add_instances(&mut sim, INSTANCES);

    sim.run_for(Duration::from_secs(30 * 60));

    let traffic = sim.traffic();
    eprintln!(
        "10 % loss, 30 min: {} packets sent, {} copies lost of {}",
        traffic.sent_packets,
        traffic.lost,
        traffic.lost + traffic.delivered
    );
    for discoverer in discoverers {
        let stats = sim.discoverer(discoverer).stats();
        eprintln!("10 % loss, 30 min: {discoverer} sent {} probes", stats.sent_native.probe);
        assert!(downs(&sim, discoverer).is_empty(), "{discoverer} removed no live instance");
        assert_eq!(listed_ids(&sim, discoverer), ids, "{discoverer} lists every instance at the end");
        assert_eq!(ups(&sim, discoverer).len(), INSTANCES, "{discoverer} saw each instance come up only once");
        assert!(stats.sent_native.probe > 0, "the loss made {discoverer} probe at least once");
    }
}

#[test]
fn crashed_instance_expires_within_bound() {
    const INSTANCES: usize = 12;
    let start = origin();
    let mut sim = Sim::new(4, start);
    let discoverer_config = DiscovererConfig::new(GROUP);
    let discoverers = [sim.add_discoverer(discoverer_config.clone()), sim.add_discoverer(discoverer_config.clone())];
    let nodes = add_instances(&mut sim, INSTANCES);
    sim.run_for(Duration::from_secs(5));

    // Crash every other instance, 370 ms apart, so the crashes fall at different heartbeat phases.
    let mut crashed_at: BTreeMap<String, Instant> = BTreeMap::new();
    for &node in nodes.iter().step_by(2) {
        crashed_at.insert(id_of(&sim, node), sim.now());
        sim.crash(node);
        sim.run_for(Duration::from_millis(370));
    }
    sim.run_for(Duration::from_secs(10));

    let config = instance_config(0);
    let bound = discoverer_config.native_crash_detection_bound(config.ttl);
    let bound_from_crash = bound + max_heartbeat_gap(&config);
    for discoverer in discoverers {
        let downs = downs(&sim, discoverer);
        let down_ids: BTreeSet<&str> = downs.iter().map(|(_, info, _)| info.id.as_str()).collect();
        let crashed_ids: BTreeSet<&str> = crashed_at.keys().map(String::as_str).collect();
        assert_eq!(down_ids, crashed_ids, "{discoverer} removed exactly the crashed instances");

        for (down_at, info, reason) in downs {
            let since_last_packet = down_at - info.last_seen;
            let since_crash = crashed_at.get(&info.id).map(|&crashed| down_at - crashed).unwrap_or_default();
            eprintln!(
                "crash detection: {discoverer} removed {} {} after its last packet, {} after the crash \
                 (bounds {} and {})",
                info.id,
                ms(since_last_packet),
                ms(since_crash),
                ms(bound),
                ms(bound_from_crash)
            );
            assert_eq!(reason, DownReason::Expired, "{} expired", info.id);
            assert!(
                since_last_packet >= config.ttl,
                "{} removed {since_last_packet:?} after its last packet, before its TTL",
                info.id
            );
            assert!(
                since_last_packet <= bound,
                "{} removed {since_last_packet:?} after its last packet, over the bound {bound:?}",
                info.id
            );
            assert!(
                since_crash <= bound_from_crash,
                "{} removed {since_crash:?} after the crash, over {bound_from_crash:?}",
                info.id
            );
        }
    }
}

#[test]
fn shut_down_instance_logs_off() {
    let start = origin();
    let mut sim = Sim::new(8, start);
    let discoverers =
        [sim.add_discoverer(DiscovererConfig::new(GROUP)), sim.add_discoverer(DiscovererConfig::new(GROUP))];
    let nodes = add_instances(&mut sim, 4);
    sim.run_for(Duration::from_secs(3));

    let stopped = nodes.first().copied().expect("4 instances started");
    let stopped_id = id_of(&sim, stopped);
    let stopped_at = sim.now();
    sim.shutdown(stopped);
    sim.run_for(Duration::from_secs(5));

    // The LOGOFF crosses the network once, so it arrives within the maximum latency.
    let bound = *sim.latency().end();
    for discoverer in discoverers {
        let downs = downs(&sim, discoverer);
        assert_eq!(downs.len(), 1, "{discoverer} removed one instance");
        let Some(&(down_at, info, reason)) = downs.first() else { continue };
        eprintln!("shutdown: {discoverer} removed {} {} after its shutdown", info.id, ms(down_at - stopped_at));
        assert_eq!(info.id, stopped_id, "{discoverer} removed the stopped instance");
        assert_eq!(reason, DownReason::Logoff, "{discoverer} heard the LOGOFF");
        assert!(down_at - stopped_at <= bound, "{discoverer} removed it within {bound:?}");
        assert!(sim.discoverer(discoverer).instance(&stopped_id).is_none(), "{discoverer} did not bring it back");
    }
}

/// Shuts down instances of both protocols while their answers to a periodic DISCOVER are still
/// on their way, with latencies that reorder packets of one sender.
///
/// A seed ANNOUNCE sent before the shutdown can arrive after both LOGOFFs. The tombstone that the
/// native LOGOFF leaves must keep it, and any older native ANNOUNCE, from bringing the stopped
/// instance back.
#[test]
fn shutdown_under_reordering_leaves_no_ghost() {
    let start = origin();
    let mut ghosts = Vec::new();
    for seed in 0..5 {
        let mut sim = Sim::new(seed, start);
        sim.set_instances_hear_instances(false);
        sim.set_latency(Duration::from_micros(100)..=Duration::from_millis(10));
        let discoverer = sim.add_discoverer(DiscovererConfig::new(GROUP));
        let nodes = add_instances(&mut sim, 200);

        // The discoverer's first periodic DISCOVER leaves at 20.75 s, and answers wait up to 100 ms.
        sim.run_until(start + Duration::from_millis(20_800));
        for &node in &nodes {
            sim.shutdown(node);
        }
        sim.run_for(Duration::from_secs(1));
        ghosts.extend(sim.discoverer(discoverer).instances().map(|info| format!("seed {seed}: {}", info.id)));
    }
    assert!(ghosts.is_empty(), "stopped instances still listed 1 s after their LOGOFF: {ghosts:?}");
}

#[test]
fn restart_storm_keeps_one_entry_per_id() {
    const INSTANCES: usize = 200;
    let start = origin();
    let mut sim = Sim::new(5, start);
    sim.set_instances_hear_instances(false);
    // Latencies up to 100 ms keep heartbeats of the old incarnations in flight while the new ones
    // announce themselves.
    sim.set_latency(Duration::from_millis(5)..=Duration::from_millis(100));
    let discoverers =
        [sim.add_discoverer(DiscovererConfig::new(GROUP)), sim.add_discoverer(DiscovererConfig::new(GROUP))];
    let nodes = add_instances(&mut sim, INSTANCES);
    sim.run_for(Duration::from_secs(5));

    let in_flight = sim.in_flight();
    let restart_at = sim.now();
    for (index, &node) in nodes.iter().enumerate() {
        let config = InstanceConfig { incarnation: 2, ..instance_config(index) };
        restart_instance(&mut sim, node, config);
    }
    sim.run_for(Duration::from_secs(5));

    eprintln!("restart storm: {INSTANCES} instances restarted at once with {in_flight} packets in flight");
    let ids: BTreeSet<String> = (0..INSTANCES).map(instance_id).collect();
    let mut late_packets = 0;
    for discoverer in discoverers {
        let engine = sim.discoverer(discoverer);
        let stale = engine.stats().rejected.get("old_incarnation").copied().unwrap_or(0);
        late_packets += stale;
        eprintln!("restart storm: {discoverer} dropped {stale} late packets of old incarnations");

        assert!(downs(&sim, discoverer).is_empty(), "{discoverer} lost no instance");
        assert_eq!(listed_ids(&sim, discoverer), ids, "{discoverer} has one entry per id");
        for info in engine.instances() {
            assert_eq!(info.incarnation, Some(2), "{} is at the new incarnation", info.id);
        }

        let restarts: Vec<&str> = sim
            .events(discoverer)
            .iter()
            .filter(|(at, _)| *at >= restart_at)
            .filter_map(|(_, event)| match event {
                Event::Changed { previous, current } if previous.incarnation != current.incarnation => {
                    assert_eq!(previous.incarnation, Some(1), "{} changed from the old incarnation", current.id);
                    assert_eq!(current.incarnation, Some(2), "{} changed to the new incarnation", current.id);
                    Some(current.id.as_str())
                }
                _ => None,
            })
            .collect();
        let restarted: BTreeSet<&str> = restarts.iter().copied().collect();
        assert_eq!(restarts.len(), INSTANCES, "{discoverer} saw one restart per instance");
        assert_eq!(restarted.len(), INSTANCES, "{discoverer} saw every instance restart");
    }
    assert!(late_packets > 0, "some packets of old incarnations arrived after the restart");
}

/// Rotates the shared key from A to B on every node, one node at a time.
///
/// The engines take their key ring at construction, so each step rebuilds a node's engine with
/// the new ring on the same address, as a process reloading its configuration would. A rebuilt
/// instance keeps its id, gets a higher incarnation and sends no LOGOFF. A rebuilt discoverer
/// starts with an empty table and learns the instances again from its startup DISCOVERs.
#[test]
fn key_rotation_loses_no_instance() {
    const INSTANCES: usize = 16;
    let start = origin();
    let mut sim = Sim::new(6, start);
    let a = Key::from_bytes([0xa1; 32]);
    let b = Key::from_bytes([0xb2; 32]);
    let discoverer_config =
        |keys: &KeyRing| DiscovererConfig { keys: Some(keys.clone()), ..DiscovererConfig::new(GROUP) };
    let instance_config = |index: usize, keys: &KeyRing, incarnation: u64| InstanceConfig {
        keys: Some(keys.clone()),
        incarnation,
        ..instance_config(index)
    };

    // Discoverers sit first and in the middle of the rotation order.
    let only_a = KeyRing::new(a.clone());
    let mut instance_indexes = BTreeMap::new();
    for index in 0..INSTANCES {
        if index % (INSTANCES / 2) == 0 {
            sim.add_discoverer(discoverer_config(&only_a));
        }
        let node = add_instance(&mut sim, instance_config(index, &only_a, 1));
        instance_indexes.insert(node, index);
    }
    sim.run_for(Duration::from_secs(3));

    let stages = [
        ("accept B", KeyRing::new(a.clone()).with_accepted(b.clone())),
        ("sign with B", KeyRing::new(b.clone()).with_accepted(a.clone())),
        ("drop A", KeyRing::new(b.clone())),
    ];
    let discoverers = sim.discoverers().to_vec();
    let rotation_order: Vec<NodeId> = sim.nodes().collect();
    let mut incarnation = 1;
    let mut slowest_relearn = Duration::ZERO;
    for (stage, keys) in &stages {
        incarnation += 1;
        for &node in &rotation_order {
            match instance_indexes.get(&node) {
                Some(&index) => restart_instance(&mut sim, node, instance_config(index, keys, incarnation)),
                None => {
                    let rebuilt_at = sim.now();
                    sim.restart_discoverer(node, discoverer_config(keys));
                    let relearned = sim.run_until_condition(rebuilt_at + Duration::from_secs(1), |sim| {
                        sim.discoverer(node).len() == INSTANCES
                    });
                    let relearned = relearned.map(|at| at - rebuilt_at);
                    assert!(relearned.is_some(), "{node} learned every instance again within 1 s ({stage})");
                    slowest_relearn = slowest_relearn.max(relearned.unwrap_or_default());
                }
            }
            sim.run_for(Duration::from_secs(1));
            for &discoverer in &discoverers {
                let listed = sim.discoverer(discoverer).len();
                assert_eq!(listed, INSTANCES, "{discoverer} lists every instance after {node} switched to {stage}");
            }
        }
    }

    eprintln!(
        "key rotation: {} node rebuilds over {} s; rebuilt discoverers relearned all {INSTANCES} instances within {}",
        rotation_order.len() * stages.len(),
        sim.elapsed().as_secs(),
        ms(slowest_relearn)
    );
    for &discoverer in &discoverers {
        assert!(downs(&sim, discoverer).is_empty(), "{discoverer} lost no instance during the rotation");
        for info in sim.discoverer(discoverer).instances() {
            assert_eq!(info.key_id, Some(b.id()), "{} signs with B", info.id);
        }
    }

    // A node that missed the rotation still signs with A alone.
    let unknown_key = |sim: &Sim, node| sim.discoverer(node).stats().rejected.get("unknown_key").copied().unwrap_or(0);
    let rejected_before: Vec<u64> = discoverers.iter().map(|&node| unknown_key(&sim, node)).collect();
    let straggler =
        InstanceConfig { keys: Some(only_a), ..InstanceConfig::new(GROUP, "straggler", "http://10.9.9.9:8080") };
    add_instance(&mut sim, straggler);
    sim.run_for(Duration::from_secs(3));
    for (&discoverer, before) in discoverers.iter().zip(rejected_before) {
        let rejected = unknown_key(&sim, discoverer) - before;
        eprintln!("key rotation: {discoverer} dropped {rejected} packets signed with the dropped key");
        assert!(rejected > 0, "{discoverer} counted the straggler's packets as unknown_key");
        assert!(sim.discoverer(discoverer).instance("straggler").is_none(), "{discoverer} ignores the straggler");
    }
}

#[test]
fn partitioned_instances_expire_and_return() {
    const INSTANCES: usize = 16;
    const ISOLATED: usize = 6;
    let start = origin();
    let mut sim = Sim::new(7, start);
    let discoverer_config = DiscovererConfig::new(GROUP);
    let discoverers = [sim.add_discoverer(discoverer_config.clone()), sim.add_discoverer(discoverer_config.clone())];
    let nodes = add_instances(&mut sim, INSTANCES);
    sim.run_for(Duration::from_secs(5));

    let (isolated, connected) = nodes.split_at(ISOLATED);
    let isolated_ids: BTreeSet<String> = isolated.iter().map(|&node| id_of(&sim, node)).collect();
    let mut rest = discoverers.to_vec();
    rest.extend_from_slice(connected);
    let partitioned_at = sim.now();
    sim.partition(isolated, &rest);
    sim.run_for(Duration::from_secs(5));

    let config = instance_config(0);
    let bound = discoverer_config.native_crash_detection_bound(config.ttl);
    for discoverer in discoverers {
        let downs = downs(&sim, discoverer);
        let down_ids: BTreeSet<String> = downs.iter().map(|(_, info, _)| info.id.clone()).collect();
        assert_eq!(down_ids, isolated_ids, "{discoverer} removed exactly the isolated instances");
        for (down_at, info, reason) in downs {
            eprintln!(
                "partition: {discoverer} removed {} {} after the partition began",
                info.id,
                ms(down_at - partitioned_at)
            );
            assert_eq!(reason, DownReason::Expired, "{} expired", info.id);
            assert!(down_at - info.last_seen >= config.ttl, "{} outlived its TTL", info.id);
            assert!(down_at - info.last_seen <= bound, "{} removed within {bound:?} of its last packet", info.id);
        }
    }

    let healed_at = sim.now();
    sim.heal();
    sim.run_for(Duration::from_secs(3));

    // The first heartbeat after healing brings an instance back.
    let bound = max_heartbeat_gap(&config) + *sim.latency().end();
    for discoverer in discoverers {
        let returns: Vec<(Instant, &InstanceInfo)> =
            ups(&sim, discoverer).into_iter().filter(|(at, _)| *at >= healed_at).collect();
        let returned_ids: BTreeSet<String> = returns.iter().map(|(_, info)| info.id.clone()).collect();
        assert_eq!(returned_ids, isolated_ids, "{discoverer} saw every isolated instance come back");
        assert_eq!(returns.len(), ISOLATED, "{discoverer} saw each isolated instance come back once");
        for (up_at, info) in returns {
            eprintln!("partition: {discoverer} saw {} again {} after healing", info.id, ms(up_at - healed_at));
            assert!(up_at - healed_at <= bound, "{} came back within {bound:?}", info.id);
        }
        assert_eq!(sim.discoverer(discoverer).len(), INSTANCES, "{discoverer} lists every instance after healing");
    }
}

/// Runs a minute of loss, crashes, a shutdown, a restart and a partition, and returns every
/// discoverer's event log and the traffic counts.
fn eventful_run(seed: u64, start: Instant) -> (Vec<Vec<(Instant, Event)>>, Traffic) {
    let mut sim = Sim::new(seed, start);
    sim.set_loss(0.05);
    let discoverers =
        [sim.add_discoverer(DiscovererConfig::new(GROUP)), sim.add_discoverer(DiscovererConfig::new(GROUP))];
    let nodes = add_instances(&mut sim, 20);
    let [crashed, stopped, restarted, isolated @ ..] = nodes.as_slice() else { panic!("expected 20 instances") };
    sim.run_for(Duration::from_secs(10));

    sim.crash(*crashed);
    sim.shutdown(*stopped);
    restart_instance(&mut sim, *restarted, InstanceConfig { incarnation: 2, ..instance_config(2) });
    sim.run_for(Duration::from_secs(10));
    sim.partition(isolated.get(..3).unwrap_or_default(), &discoverers);
    sim.run_for(Duration::from_secs(10));
    sim.heal();
    sim.run_for(Duration::from_secs(30));

    let logs = discoverers.iter().map(|&node| sim.events(node).to_vec()).collect();
    (logs, sim.traffic())
}

#[test]
fn same_seed_gives_same_events() {
    let start = origin();
    let (first, first_traffic) = eventful_run(11, start);
    let (second, second_traffic) = eventful_run(11, start);
    let (other, _) = eventful_run(12, start);

    let event_count: usize = first.iter().map(Vec::len).sum();
    eprintln!("determinism: {event_count} events and {} packets, identical in both runs", first_traffic.sent_packets);
    assert!(event_count > 0, "the run produced events");
    assert_eq!(first, second, "the same seed gives the same event logs");
    assert_eq!(first_traffic, second_traffic, "the same seed gives the same traffic");
    assert_ne!(first, other, "another seed gives other event logs");
}

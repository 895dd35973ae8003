//! Client-side load balancing over the live instances of a discoverer.
//!
//! A [`Balancer`] picks one instance from a table such as [`Discoverer::instances`] returns.
//! By default it considers only instances that report `serving`, so draining and failing
//! instances get no new work; metadata filters narrow the choice further (a zone, a version).
//!
//! ```
//! use msd::balance::{Balancer, Strategy};
//! # fn table() -> Vec<msd::InstanceInfo> { Vec::new() }
//!
//! let balancer = Balancer::new(Strategy::PowerOfTwoChoices).with_metadata("zone", "eu-1");
//! let instances = table(); // discoverer.instances().await? in real code
//! match balancer.pick(&instances) {
//!     Some(instance) => println!("send to {}", instance.url),
//!     None => println!("no serving instance in zone eu-1"),
//! }
//! ```
//!
//! [`Discoverer::instances`]: crate::Discoverer::instances

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use msd_engine::{Health, InstanceInfo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The rule a [`Balancer`] uses to choose among the eligible instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Uniformly at random.
    Random,
    /// In turn, in id order.
    RoundRobin,
    /// At random, in proportion to each instance's announced weight (1 when it announces none;
    /// weight 0 is never picked).
    Weighted,
    /// Two instances at random, then the one with the lower load: the load it reports, or the
    /// one the caller supplies to [`Balancer::pick_by_load`]. An instance that reports no load
    /// counts as idle.
    PowerOfTwoChoices,
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "random" => Ok(Strategy::Random),
            "round-robin" => Ok(Strategy::RoundRobin),
            "weighted" => Ok(Strategy::Weighted),
            "p2c" | "power-of-two-choices" => Ok(Strategy::PowerOfTwoChoices),
            other => Err(format!("invalid strategy {other:?}: expected random, round-robin, weighted or p2c")),
        }
    }
}

/// Picks instances by a [`Strategy`], among those that pass its filters.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    healths: Vec<Health>,
    metadata: BTreeMap<String, String>,
    rng: Mutex<StdRng>,
    next: AtomicUsize,
}

impl Balancer {
    /// Creates a balancer that considers serving instances only.
    pub fn new(strategy: Strategy) -> Self {
        Balancer {
            strategy,
            healths: vec![Health::Serving],
            metadata: BTreeMap::new(),
            rng: Mutex::new(StdRng::from_rng(&mut rand::rng())),
            next: AtomicUsize::new(0),
        }
    }

    /// Seeds the random choices, so that tests and simulations can be replayed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Mutex::new(StdRng::seed_from_u64(seed));
        self
    }

    /// Considers only instances whose metadata has `key` set to `value`. Several filters must
    /// all match.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Considers instances in any of these health states. Default: serving only.
    #[must_use]
    pub fn with_healths(mut self, healths: &[Health]) -> Self {
        self.healths = healths.to_vec();
        self
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Returns whether an instance passes the health and metadata filters.
    pub fn eligible(&self, instance: &InstanceInfo) -> bool {
        self.healths.contains(&instance.health) && self.metadata_matches(instance)
    }

    /// Returns whether an instance passes the metadata filters, whatever its health.
    pub fn metadata_matches(&self, instance: &InstanceInfo) -> bool {
        self.metadata.iter().all(|(key, value)| instance.metadata.get(key) == Some(value))
    }

    /// Picks one eligible instance, with the reported load for power-of-two-choices.
    pub fn pick<'a>(&self, instances: &'a [InstanceInfo]) -> Option<&'a InstanceInfo> {
        self.pick_by_load(instances, |instance| u64::from(instance.load.unwrap_or(0)))
    }

    /// Picks one eligible instance, with `load` for power-of-two-choices (for example the
    /// caller's own count of open connections to each instance).
    pub fn pick_by_load<'a>(
        &self,
        instances: &'a [InstanceInfo],
        load: impl Fn(&InstanceInfo) -> u64,
    ) -> Option<&'a InstanceInfo> {
        let mut eligible: Vec<&InstanceInfo> = instances.iter().filter(|instance| self.eligible(instance)).collect();
        if eligible.is_empty() {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.strategy {
            Strategy::Random => eligible.get(rng.random_range(0..eligible.len())).copied(),
            Strategy::RoundRobin => {
                eligible.sort_by(|a, b| a.id.cmp(&b.id));
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                eligible.get(turn % eligible.len()).copied()
            }
            Strategy::Weighted => weighted(&eligible, &mut *rng),
            Strategy::PowerOfTwoChoices => {
                let first = rng.random_range(0..eligible.len());
                let mut second = rng.random_range(0..eligible.len());
                if eligible.len() > 1 {
                    while second == first {
                        second = rng.random_range(0..eligible.len());
                    }
                }
                let (a, b) = (eligible.get(first).copied()?, eligible.get(second).copied()?);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

fn weighted<'a>(eligible: &[&'a InstanceInfo], rng: &mut impl Rng) -> Option<&'a InstanceInfo> {
    let weight = |instance: &InstanceInfo| u64::from(instance.weight.unwrap_or(1));
    let total: u64 = eligible.iter().map(|instance| weight(instance)).sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.random_range(0..total);
    for instance in eligible {
        if point < weight(instance) {
            return Some(instance);
        }
        point -= weight(instance);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Instant;

    fn instance(id: &str, health: Health, weight: Option<u32>, load: Option<u32>, zone: &str) -> InstanceInfo {
        let now = Instant::now();
        InstanceInfo {
            id: id.into(),
            url: format!("http://{id}:80"),
            protocol: msd_engine::Protocol::Native,
            health,
            weight,
            load,
            metadata: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
            incarnation: Some(1),
            sequence: Some(1),
            ttl: None,
            key_id: None,
            interface: msd_engine::InterfaceIndex(1),
            source: "10.0.0.1:5".parse().unwrap(),
            first_seen: now,
            last_seen: now,
        }
    }

    fn counts(balancer: &Balancer, instances: &[InstanceInfo], draws: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..draws {
            let picked = balancer.pick(instances).expect("a pick");
            *counts.entry(picked.id.clone()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn draining_and_failing_never_picked() {
        let instances = [
            instance("a", Health::Serving, None, None, "x"),
            instance("b", Health::Draining, None, None, "x"),
            instance("c", Health::Failing, None, None, "x"),
        ];
        for strategy in [Strategy::Random, Strategy::RoundRobin, Strategy::Weighted, Strategy::PowerOfTwoChoices] {
            let balancer = Balancer::new(strategy).with_seed(1);
            let counts = counts(&balancer, &instances, 300);
            assert_eq!(counts.get("a"), Some(&300), "{strategy:?}");
        }
    }

    #[test]
    fn no_eligible_instance_is_none() {
        let instances = [instance("a", Health::Draining, None, None, "x")];
        assert!(Balancer::new(Strategy::Random).pick(&instances).is_none());
        assert!(Balancer::new(Strategy::Random).pick(&[]).is_none());
    }

    #[test]
    fn metadata_filter_applies() {
        let instances =
            [instance("a", Health::Serving, None, None, "eu"), instance("b", Health::Serving, None, None, "us")];
        let balancer = Balancer::new(Strategy::Random).with_seed(2).with_metadata("zone", "us");
        assert_eq!(counts(&balancer, &instances, 100).get("b"), Some(&100));
    }

    #[test]
    fn round_robin_cycles_in_id_order() {
        let instances = [
            instance("c", Health::Serving, None, None, "x"),
            instance("a", Health::Serving, None, None, "x"),
            instance("b", Health::Serving, None, None, "x"),
        ];
        let balancer = Balancer::new(Strategy::RoundRobin);
        let order: Vec<String> = (0..6).map(|_| balancer.pick(&instances).unwrap().id.clone()).collect();
        assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn random_is_roughly_uniform() {
        let instances: Vec<_> = ["a", "b", "c", "d"].iter().map(|id| instance(id, Health::Serving, None, None, "x")).collect();
        let balancer = Balancer::new(Strategy::Random).with_seed(3);
        let counts = counts(&balancer, &instances, 40_000);
        // Expected 10,000 each; the binomial standard deviation is about 87, so ±600 is about
        // seven deviations.
        for id in ["a", "b", "c", "d"] {
            let count = counts[id];
            assert!((9_400..=10_600).contains(&count), "{id}: {count}");
        }
    }

    #[test]
    fn weighted_follows_weights() {
        let instances = [
            instance("heavy", Health::Serving, Some(3), None, "x"),
            instance("light", Health::Serving, Some(1), None, "x"),
            instance("off", Health::Serving, Some(0), None, "x"),
        ];
        let balancer = Balancer::new(Strategy::Weighted).with_seed(4);
        let counts = counts(&balancer, &instances, 40_000);
        // Expected 30,000 and 10,000; the standard deviation is about 87.
        assert!((29_400..=30_600).contains(&counts["heavy"]), "{counts:?}");
        assert!((9_400..=10_600).contains(&counts["light"]), "{counts:?}");
        assert_eq!(counts.get("off"), None, "weight 0 is never picked");
    }

    #[test]
    fn power_of_two_prefers_low_load() {
        let instances = [
            instance("busy", Health::Serving, None, Some(90), "x"),
            instance("idle", Health::Serving, None, Some(1), "x"),
            instance("mid", Health::Serving, None, Some(50), "x"),
        ];
        let balancer = Balancer::new(Strategy::PowerOfTwoChoices).with_seed(5);
        let counts = counts(&balancer, &instances, 30_000);
        // Two distinct of three: the idle one wins whenever drawn (2/3 of pairs), the middle one
        // wins against busy (1/3), and busy never wins.
        assert_eq!(counts.get("busy"), None, "{counts:?}");
        assert!((19_400..=20_600).contains(&counts["idle"]), "{counts:?}");
        assert!((9_400..=10_600).contains(&counts["mid"]), "{counts:?}");
    }

    #[test]
    fn caller_supplied_load() {
        let instances =
            [instance("a", Health::Serving, None, Some(0), "x"), instance("b", Health::Serving, None, Some(0), "x")];
        let balancer = Balancer::new(Strategy::PowerOfTwoChoices).with_seed(6);
        for _ in 0..100 {
            let picked = balancer.pick_by_load(&instances, |instance| if instance.id == "a" { 10 } else { 0 }).unwrap();
            assert_eq!(picked.id, "b");
        }
    }

    #[test]
    fn strategy_names_parse() {
        assert_eq!("p2c".parse::<Strategy>(), Ok(Strategy::PowerOfTwoChoices));
        assert_eq!("round-robin".parse::<Strategy>(), Ok(Strategy::RoundRobin));
        assert!("fastest".parse::<Strategy>().unwrap_err().contains("\"fastest\""));
    }
}

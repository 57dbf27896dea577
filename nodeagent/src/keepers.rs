//! Which agents keep the full member table (the keepers), chosen without a master: a
//! pure roster of the keepers heard on `cluster.registry.keepers.*`, and the decision of
//! this agent to volunteer, stay or step down. It never touches NATS nor reads a clock;
//! the caller passes `now` to every call.
//!
//! Every agent reads the keepers' announcements (a few a heartbeat, whatever the size
//! of the cluster) and knows who keeps the table. When fewer than `target` keepers are
//! heard, an agent volunteers after a delay set by its rank; when more are heard, the
//! keepers of worst rank step down. The rank of a name is a stable hash of it (FNV-1a),
//! so every agent orders the same names the same way: the agents that volunteer first
//! are the ones that stay when too many did, and any keeper may go, the next in rank
//! replacing it.
//!
//! A keeper silent for `SILENT_HEARTBEATS` of its heartbeats no longer counts; one that
//! announces `keeper: false`, leaving or left, is dropped at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::registry::{AnnounceKind, Announcement};

use crate::membership::{MAX_HEARTBEAT, MIN_HEARTBEAT};

/// How many of its heartbeats a keeper may miss before it no longer counts.
pub const SILENT_HEARTBEATS: u32 = 3;

/// The most keepers a roster holds; announcements of further keepers are ignored
/// (a hostile flood of keeper announcements cannot grow it without bound).
pub const MAX_KEEPERS: usize = 64;

/// The longest base delay before volunteering: agents with a longer heartbeat still
/// volunteer within one or two seconds.
pub const MAX_VOLUNTEER_DELAY: Duration = Duration::from_secs(1);

/// What this agent should do about keeping the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changes.
    Stay,
    /// Too few keepers: start keeping the table.
    Volunteer,
    /// Too many keepers, and this one ranks among the last: stop keeping it.
    StepDown,
}

#[derive(Debug, Clone)]
struct Seen {
    boot_id: String,
    seq: u64,
    last_seen: Instant,
    heartbeat: Duration,
}

/// The keepers one agent knows of, and its own standing.
#[derive(Debug, Clone)]
pub struct Roster {
    me: String,
    target: usize,
    /// This agent's heartbeat: its volunteering delay is one to two of them (at most
    /// [`MAX_VOLUNTEER_DELAY`] each).
    heartbeat: Duration,
    keepers: BTreeMap<String, Seen>,
    /// When this agent volunteers, if too few keepers are still heard then.
    volunteer_at: Option<Instant>,
}

/// The rank of a name: lower ranks keep the table first. FNV-1a, stable across builds
/// and versions, so every agent ranks names alike.
pub fn rank(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Roster {
    /// An empty roster for agent `me`, which wants `target` keepers (at least one).
    pub fn new(me: &str, target: usize, heartbeat: Duration) -> Roster {
        Roster {
            me: me.to_owned(),
            target: target.max(1),
            heartbeat,
            keepers: BTreeMap::new(),
            volunteer_at: None,
        }
    }

    /// Takes an announcement heard on the keepers feed. Returns true when it names a
    /// keeper not heard before (a new name or a new boot): the members then announce
    /// themselves to it, so that its table fills at once.
    pub fn observe(&mut self, ann: &Announcement, now: Instant) -> bool {
        if ann.node == self.me {
            return false;
        }
        let keeps = ann.keeper && matches!(ann.kind, AnnounceKind::Join | AnnounceKind::Alive);
        if !keeps {
            self.keepers.remove(&ann.node);
            return false;
        }
        let heartbeat = Duration::from_millis(ann.heartbeat_ms).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
        let same_boot = self
            .keepers
            .get(&ann.node)
            .map(|k| k.boot_id == ann.boot_id);
        match same_boot {
            Some(true) => {
                if let Some(k) = self.keepers.get_mut(&ann.node) {
                    if ann.seq > k.seq {
                        k.seq = ann.seq;
                        k.last_seen = now;
                        k.heartbeat = heartbeat;
                    }
                }
                false
            }
            None if self.keepers.len() >= MAX_KEEPERS => false,
            _ => {
                self.keepers.insert(
                    ann.node.clone(),
                    Seen {
                        boot_id: ann.boot_id.clone(),
                        seq: ann.seq,
                        last_seen: now,
                        heartbeat,
                    },
                );
                true
            }
        }
    }

    /// Forgets a keeper at once (its connection closed).
    pub fn forget(&mut self, node: &str) {
        self.keepers.remove(node);
    }

    /// The other keepers heard, sorted by name.
    pub fn keepers(&self) -> Vec<&str> {
        self.keepers.keys().map(String::as_str).collect()
    }

    /// Whether keeper `node` ranks among the `target` best of the keepers heard and,
    /// when `keeping`, this agent: a keeper that will stay rather than step down.
    pub fn stays(&self, node: &str, keeping: bool) -> bool {
        let key = (rank(node), node);
        let better = self
            .keepers
            .keys()
            .filter(|n| (rank(n), n.as_str()) < key)
            .count()
            + usize::from(keeping && (rank(&self.me), self.me.as_str()) < key);
        better < self.target
    }

    /// Drops the silent keepers and decides. `keeping` says whether this agent keeps
    /// the table now; `connected` whether it can hear the others (no agent volunteers
    /// while it is cut off, or every agent would at once).
    pub fn decide(&mut self, keeping: bool, connected: bool, now: Instant) -> Decision {
        self.keepers.retain(|_, k| {
            now.saturating_duration_since(k.last_seen)
                < k.heartbeat.saturating_mul(SILENT_HEARTBEATS)
        });
        let heard = self.keepers.len();
        if keeping {
            self.volunteer_at = None;
            let total = heard + 1;
            if total <= self.target {
                return Decision::Stay;
            }
            // Too many: the `total - target` of worst rank go.
            let mine = (rank(&self.me), self.me.as_str());
            let better = self
                .keepers
                .keys()
                .filter(|n| (rank(n), n.as_str()) < mine)
                .count();
            return if better >= self.target {
                Decision::StepDown
            } else {
                Decision::Stay
            };
        }
        if heard >= self.target || !connected {
            self.volunteer_at = None;
            return Decision::Stay;
        }
        let delay = self.volunteer_delay();
        let at = *self.volunteer_at.get_or_insert(now + delay);
        if now >= at {
            self.volunteer_at = None;
            Decision::Volunteer
        } else {
            Decision::Stay
        }
    }

    /// One base delay (this agent's heartbeat, at most [`MAX_VOLUNTEER_DELAY`]), plus up
    /// to one more by rank: the best ranked volunteer first, the others hear them and
    /// stay.
    fn volunteer_delay(&self) -> Duration {
        let base = self.heartbeat.min(MAX_VOLUNTEER_DELAY);
        let share = rank(&self.me) as f64 / u64::MAX as f64;
        base + base.mul_f64(share)
    }

    /// When [`Roster::decide`] should run next: a volunteering delay ends, or a keeper
    /// falls silent.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.keepers
            .values()
            .map(|k| k.last_seen + k.heartbeat.saturating_mul(SILENT_HEARTBEATS))
            .chain(self.volunteer_at)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(node: &str, boot: &str, seq: u64, keeper: bool, kind: AnnounceKind) -> Announcement {
        let mut a: Announcement = serde_json::from_value(serde_json::json!({
            "node": node, "kind": "alive", "boot_id": boot, "seq": seq,
            "started_at": 0.0, "time": 0.0, "heartbeat_ms": 1000, "version": "v",
            "hostname": "h", "pid": 1
        }))
        .expect("an announcement");
        a.keeper = keeper;
        a.kind = kind;
        a
    }

    /// Names ordered by rank, best first.
    fn by_rank(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        v.sort_by_key(|n| (rank(n), n.clone()));
        v
    }

    #[test]
    fn the_roster_follows_the_keepers_feed() {
        let t0 = Instant::now();
        let hb = Duration::from_secs(1);
        let mut r = Roster::new("me", 2, hb);
        let alive = AnnounceKind::Alive;
        // (announcement, new keeper?, keepers afterwards)
        let steps: Vec<(Announcement, bool, Vec<&str>)> = vec![
            (ann("a", "1", 1, true, alive), true, vec!["a"]),
            (ann("a", "1", 2, true, alive), false, vec!["a"]),
            // a late announcement changes nothing
            (ann("a", "1", 1, true, alive), false, vec!["a"]),
            // a new boot is a new keeper
            (ann("a", "2", 1, true, alive), true, vec!["a"]),
            (
                ann("b", "1", 1, true, AnnounceKind::Join),
                true,
                vec!["a", "b"],
            ),
            // stepping down, leaving
            (ann("b", "1", 2, false, alive), false, vec!["a"]),
            (ann("a", "2", 2, true, AnnounceKind::Leaving), false, vec![]),
            // our own announcements are not about others
            (ann("me", "1", 1, true, alive), false, vec![]),
        ];
        for (i, (a, new, after)) in steps.into_iter().enumerate() {
            assert_eq!(r.observe(&a, t0), new, "step {i}");
            assert_eq!(r.keepers(), after, "step {i}");
        }
        r.observe(&ann("a", "3", 1, true, alive), t0);
        assert_eq!(r.next_deadline(), Some(t0 + hb * SILENT_HEARTBEATS));
        r.decide(true, true, t0 + hb * SILENT_HEARTBEATS);
        assert!(r.keepers().is_empty(), "a silent keeper no longer counts");
        r.observe(&ann("a", "3", 2, true, alive), t0);
        r.forget("a");
        assert!(r.keepers().is_empty());
    }

    #[test]
    fn too_few_keepers_make_an_agent_volunteer_after_its_delay() {
        let t0 = Instant::now();
        let hb = Duration::from_secs(1);
        let mut r = Roster::new("me", 2, hb);
        r.observe(&ann("a", "1", 1, true, AnnounceKind::Alive), t0);
        assert_eq!(r.decide(false, true, t0), Decision::Stay);
        let at = r.next_deadline().expect("a volunteering time");
        assert!(at >= t0 + hb && at <= t0 + 2 * hb, "{:?}", at - t0);
        // cut off from NATS: never volunteers
        assert_eq!(r.decide(false, false, at), Decision::Stay);
        assert_eq!(r.decide(false, true, t0), Decision::Stay);
        let at = r.next_deadline().unwrap();
        assert_eq!(r.decide(false, true, at), Decision::Volunteer);
        // another keeper came first: no need
        let mut r = Roster::new("me", 2, hb);
        r.observe(&ann("a", "1", 1, true, AnnounceKind::Alive), t0);
        assert_eq!(r.decide(false, true, t0), Decision::Stay);
        r.observe(&ann("b", "1", 1, true, AnnounceKind::Alive), t0);
        assert_eq!(r.decide(false, true, t0 + 2 * hb), Decision::Stay);
        // a long heartbeat still volunteers within two seconds
        let mut r = Roster::new("me", 1, Duration::from_secs(60));
        r.decide(false, true, t0);
        assert!(r.next_deadline().unwrap() <= t0 + 2 * MAX_VOLUNTEER_DELAY);
    }

    #[test]
    fn with_too_many_keepers_the_worst_ranked_step_down() {
        let t0 = Instant::now();
        let hb = Duration::from_secs(1);
        let names = by_rank(&["k1", "k2", "k3", "k4"]);
        // Every keeper hears the three others; the target is two.
        let decisions: Vec<Decision> = names
            .iter()
            .map(|me| {
                let mut r = Roster::new(me, 2, hb);
                for (i, other) in names.iter().enumerate().filter(|(_, n)| *n != me) {
                    r.observe(
                        &ann(other, "1", i as u64 + 1, true, AnnounceKind::Alive),
                        t0,
                    );
                }
                r.decide(true, true, t0)
            })
            .collect();
        use Decision::*;
        assert_eq!(decisions, vec![Stay, Stay, StepDown, StepDown]);
        // Only a keeper that ranks among the best two fills its table from everyone.
        let mut r = Roster::new("me", 2, hb);
        for n in &names {
            r.observe(&ann(n, "1", 1, true, AnnounceKind::Alive), t0);
        }
        let stays: Vec<bool> = names.iter().map(|n| r.stays(n, false)).collect();
        assert_eq!(stays, vec![true, true, false, false]);
        // At or under the target, everyone stays.
        let mut r = Roster::new(&names[3], 2, hb);
        r.observe(&ann(&names[0], "1", 1, true, AnnounceKind::Alive), t0);
        assert_eq!(r.decide(true, true, t0), Stay);
        // The best ranked volunteers first.
        let delay = |n: &str| {
            let mut r = Roster::new(n, 1, hb);
            r.decide(false, true, t0);
            r.next_deadline().unwrap()
        };
        assert!(delay(&names[0]) <= delay(&names[3]));
    }

    #[test]
    fn a_flood_of_keepers_is_capped() {
        let t0 = Instant::now();
        let mut r = Roster::new("me", 3, Duration::from_secs(1));
        for i in 0..(MAX_KEEPERS + 10) {
            r.observe(
                &ann(&format!("k{i}"), "1", 1, true, AnnounceKind::Alive),
                t0,
            );
        }
        assert_eq!(r.keepers().len(), MAX_KEEPERS);
    }
}

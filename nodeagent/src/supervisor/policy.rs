//! The restart policy as a pure function: what to do after a process exited on its own.
//! No I/O, no clock: the caller passes the uptime and the count of failed starts.

use std::time::Duration;

use protocol::reply::ExitStatus;
use protocol::RestartPolicy;

use crate::config::Lifecycle;

/// The parts of a watcher's config the policy reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub restart: RestartPolicy,
    pub exit_codes: Vec<i32>,
    /// Failed starts in a row allowed before giving up; -1 never gives up.
    pub max_retry: i32,
    pub min_uptime: Duration,
    pub restart_delay: Duration,
    pub max_restart_delay: Duration,
}

impl From<&Lifecycle> for Rules {
    fn from(l: &Lifecycle) -> Rules {
        Rules {
            restart: l.restart,
            exit_codes: l.exit_codes.clone(),
            max_retry: l.max_retry,
            min_uptime: l.min_uptime,
            restart_delay: l.restart_delay,
            max_restart_delay: l.max_restart_delay,
        }
    }
}

/// What to do with the slot of a process that exited.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start it again after `delay` (zero: at once).
    Respawn { delay: Duration },
    /// Leave it exited: the policy does not restart this exit.
    Stay,
    /// Give up: too many failed starts in a row.
    Fatal { reason: String },
}

/// Decides after an exit. `exit` is `None` when the program could not be started at
/// all. `failures` is the count of failed starts in a row before this exit; the
/// returned count replaces it. A run of at least `min_uptime` resets the count.
pub fn after_exit(
    rules: &Rules,
    exit: Option<&ExitStatus>,
    uptime: Duration,
    failures: u32,
) -> (Decision, u32) {
    let expected = exit
        .and_then(|e| e.code)
        .is_some_and(|c| rules.exit_codes.contains(&c));
    match rules.restart {
        RestartPolicy::Never => return (Decision::Stay, 0),
        RestartPolicy::OnFailure if expected => return (Decision::Stay, 0),
        _ => {}
    }
    if exit.is_some() && uptime >= rules.min_uptime {
        return (
            Decision::Respawn {
                delay: Duration::ZERO,
            },
            0,
        );
    }
    let failures = failures.saturating_add(1);
    if rules.max_retry >= 0 && failures > rules.max_retry as u32 {
        let last = match exit {
            Some(e) => e.to_string(),
            None => "could not start".into(),
        };
        let tries = if failures == 1 {
            "1 failed start".to_owned()
        } else {
            format!("{failures} failed starts in a row")
        };
        return (
            Decision::Fatal {
                reason: format!(
                    "gave up after {tries}, each shorter than min_uptime {:?} (last: {last})",
                    rules.min_uptime
                ),
            },
            failures,
        );
    }
    (
        Decision::Respawn {
            delay: backoff(rules, failures),
        },
        failures,
    )
}

/// The delay before the next start after `failures` failed starts in a row:
/// `restart_delay`, doubled for each further failure, capped at `max_restart_delay`.
pub fn backoff(rules: &Rules, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    rules
        .restart_delay
        .saturating_mul(1u32 << doublings)
        .min(rules.max_restart_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(restart: RestartPolicy, max_retry: i32) -> Rules {
        Rules {
            restart,
            exit_codes: vec![0, 3],
            max_retry,
            min_uptime: Duration::from_secs(1),
            restart_delay: Duration::from_millis(100),
            max_restart_delay: Duration::from_millis(1000),
        }
    }

    fn code(c: i32) -> ExitStatus {
        ExitStatus {
            code: Some(c),
            signal: None,
        }
    }

    fn killed() -> ExitStatus {
        ExitStatus {
            code: None,
            signal: Some("SIGKILL".into()),
        }
    }

    const SHORT: Duration = Duration::from_millis(10);
    const LONG: Duration = Duration::from_secs(5);

    fn respawn(ms: u64) -> Decision {
        Decision::Respawn {
            delay: Duration::from_millis(ms),
        }
    }

    #[test]
    fn decisions_table() {
        use RestartPolicy::*;
        let cases: Vec<(Rules, Option<ExitStatus>, Duration, u32, Decision, u32)> = vec![
            // A good run is restarted at once and resets the failure count.
            (rules(Always, 5), Some(code(1)), LONG, 4, respawn(0), 0),
            (rules(Always, 5), Some(killed()), LONG, 0, respawn(0), 0),
            (rules(Always, 5), Some(code(0)), LONG, 0, respawn(0), 0),
            // Failed starts back off exponentially, capped.
            (rules(Always, 5), Some(code(1)), SHORT, 0, respawn(100), 1),
            (rules(Always, 5), Some(code(1)), SHORT, 1, respawn(200), 2),
            (rules(Always, 5), Some(code(1)), SHORT, 2, respawn(400), 3),
            (rules(Always, 9), Some(code(1)), SHORT, 5, respawn(1000), 6),
            (rules(Always, 9), None, Duration::ZERO, 0, respawn(100), 1),
            // -1 retries forever.
            (
                rules(Always, -1),
                Some(code(1)),
                SHORT,
                1000,
                respawn(1000),
                1001,
            ),
            // on-failure: expected codes stay exited, others restart.
            (
                rules(OnFailure, 5),
                Some(code(0)),
                SHORT,
                2,
                Decision::Stay,
                0,
            ),
            (
                rules(OnFailure, 5),
                Some(code(3)),
                LONG,
                0,
                Decision::Stay,
                0,
            ),
            (rules(OnFailure, 5), Some(code(2)), LONG, 0, respawn(0), 0),
            (
                rules(OnFailure, 5),
                Some(killed()),
                SHORT,
                0,
                respawn(100),
                1,
            ),
            // never: always stays.
            (rules(Never, 5), Some(code(1)), SHORT, 0, Decision::Stay, 0),
        ];
        for (i, (r, exit, up, failures, want, want_failures)) in cases.into_iter().enumerate() {
            let (got, n) = after_exit(&r, exit.as_ref(), up, failures);
            assert_eq!((got, n), (want, want_failures), "case {i}");
        }
    }

    #[test]
    fn backoff_saturates_at_the_largest_values() {
        let mut r = rules(RestartPolicy::Always, -1);
        r.restart_delay = Duration::from_secs(3600);
        r.max_restart_delay = Duration::MAX;
        assert_eq!(backoff(&r, u32::MAX), Duration::from_secs(3600 << 30));
        r.restart_delay = Duration::MAX;
        assert_eq!(backoff(&r, 40), Duration::MAX);
        let (d, n) = after_exit(&r, Some(&code(1)), SHORT, u32::MAX);
        assert_eq!(
            (d, n),
            (
                Decision::Respawn {
                    delay: Duration::MAX
                },
                u32::MAX
            )
        );
    }

    #[test]
    fn gives_up_after_max_retry() {
        let r = rules(RestartPolicy::Always, 2);
        let (d, n) = after_exit(&r, Some(&code(1)), SHORT, 1);
        assert_eq!((d, n), (respawn(200), 2));
        let (d, n) = after_exit(&r, Some(&code(1)), SHORT, 2);
        assert_eq!(n, 3);
        match d {
            Decision::Fatal { reason } => {
                assert!(reason.contains("3 failed starts in a row"), "{reason}");
                assert!(reason.contains("exit code 1"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let (d, _) = after_exit(&rules(RestartPolicy::Always, 0), None, SHORT, 0);
        assert!(matches!(d, Decision::Fatal { reason } if reason.contains("could not start")));
    }
}

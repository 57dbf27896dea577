//! A watcher's guards and hooks as configured: `max_memory` sizes, `rlimits` by
//! setrlimit's names, and `hooks` command lines with their timeouts, validated into
//! typed values and written back as options. Nothing here runs or limits anything.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::resource::{Resource, RLIM_INFINITY};
use protocol::options::{
    ByteSize, CommandLine, Hook, HookCommand, Hooks, LimitValue, Rlimit, RlimitPair,
};
use protocol::WatcherOptions;

use super::{parse_duration_in_range, Problems};

/// The smallest and largest `max_memory`.
pub const MIN_MAX_MEMORY: u64 = 1 << 20;
pub const MAX_MAX_MEMORY: u64 = 1 << 40;

/// How many readings above `max_memory` in a row restart a process, by default.
pub const MAX_MEMORY_SAMPLES: u32 = 3;

/// How long a hook may run, by default.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The most arguments a hook's command line may have.
const MAX_HOOK_ARGS: usize = 256;

/// Parses a size: a number of bytes, or a number with a unit. K, M, G, T (alone or
/// with "iB") are powers of 1024, KB, MB, GB, TB powers of 1000, B is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?} is not a size; write it like \"512MiB\", \"2G\", \"500MB\" or a number of \
             bytes"
        )
    };
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}

/// A size as `options` shows it: in MiB, GiB... when it is a whole number of them.
pub fn format_size(n: u64) -> String {
    for (unit, factor) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)] {
        if n >= factor && n.is_multiple_of(factor) {
            return format!("{}{unit}", n / factor);
        }
    }
    n.to_string()
}

/// `max_memory`, checked against its range.
pub fn max_memory(v: &ByteSize) -> Result<u64, String> {
    let n = match v {
        ByteSize::Bytes(n) => *n,
        ByteSize::Text(s) => parse_size(s)?,
    };
    if !(MIN_MAX_MEMORY..=MAX_MAX_MEMORY).contains(&n) {
        return Err(format!(
            "{} is out of range; use 1MiB to 1TiB",
            match v {
                ByteSize::Bytes(n) => n.to_string(),
                ByteSize::Text(s) => s.trim().to_owned(),
            }
        ));
    }
    Ok(n)
}

/// The resources `rlimits` may set, by name.
pub const RLIMITS: &[(&str, Resource)] = &[
    ("as", Resource::RLIMIT_AS),
    ("core", Resource::RLIMIT_CORE),
    ("cpu", Resource::RLIMIT_CPU),
    ("data", Resource::RLIMIT_DATA),
    ("fsize", Resource::RLIMIT_FSIZE),
    ("locks", Resource::RLIMIT_LOCKS),
    ("memlock", Resource::RLIMIT_MEMLOCK),
    ("msgqueue", Resource::RLIMIT_MSGQUEUE),
    ("nice", Resource::RLIMIT_NICE),
    ("nofile", Resource::RLIMIT_NOFILE),
    ("nproc", Resource::RLIMIT_NPROC),
    ("rss", Resource::RLIMIT_RSS),
    ("rtprio", Resource::RLIMIT_RTPRIO),
    ("rttime", Resource::RLIMIT_RTTIME),
    ("sigpending", Resource::RLIMIT_SIGPENDING),
    ("stack", Resource::RLIMIT_STACK),
];

/// One resource limit, set in a process before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitSetting {
    pub name: &'static str,
    pub resource: Resource,
    /// `RLIM_INFINITY` for "unlimited".
    pub soft: u64,
    pub hard: u64,
}

fn limit_value(v: &LimitValue) -> Result<u64, String> {
    match v {
        LimitValue::Number(n) if *n == RLIM_INFINITY => Err(format!(
            "{n} is too large; write \"unlimited\" for no limit"
        )),
        LimitValue::Number(n) => Ok(*n),
        LimitValue::Negative(n) => Err(format!(
            "{n} is not a limit; write a number of 0 or more, or \"unlimited\""
        )),
        LimitValue::Word(w) if w.trim().eq_ignore_ascii_case("unlimited") => Ok(RLIM_INFINITY),
        LimitValue::Word(w) => Err(format!(
            "{w:?} is not a limit; write a number or \"unlimited\""
        )),
    }
}

fn show_limit(n: u64) -> LimitValue {
    if n == RLIM_INFINITY {
        LimitValue::Word("unlimited".into())
    } else {
        LimitValue::Number(n)
    }
}

/// Validates `rlimits`; every problem as (key, message).
pub fn rlimits(
    raw: &BTreeMap<String, Rlimit>,
) -> Result<Vec<RlimitSetting>, Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in raw {
        let key = format!("rlimits.{name}");
        let Some((known, resource)) = RLIMITS.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = RLIMITS.iter().map(|(n, _)| *n).collect();
            problems.push((
                key,
                format!("unknown limit '{name}'; limits are: {}", names.join(", ")),
            ));
            continue;
        };
        let pair = match value {
            Rlimit::Both(v) => limit_value(v).map(|n| (n, n)),
            Rlimit::Each(RlimitPair { soft, hard }) => {
                limit_value(soft).and_then(|s| limit_value(hard).map(|h| (s, h)))
            }
        };
        match pair {
            Ok((soft, hard)) if soft > hard => problems.push((
                key,
                "the soft limit is above the hard limit; lower soft or raise hard".into(),
            )),
            Ok((soft, hard)) => out.push(RlimitSetting {
                name: known,
                resource: *resource,
                soft,
                hard,
            }),
            Err(m) => problems.push((key, m)),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// `rlimits` as options.
pub fn rlimits_options(list: &[RlimitSetting]) -> BTreeMap<String, Rlimit> {
    list.iter()
        .map(|r| {
            let v = if r.soft == r.hard {
                Rlimit::Both(show_limit(r.soft))
            } else {
                Rlimit::Each(RlimitPair {
                    soft: show_limit(r.soft),
                    hard: show_limit(r.hard),
                })
            };
            (r.name.to_owned(), v)
        })
        .collect()
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HookKind {
    BeforeStart,
    AfterStart,
    BeforeStop,
    AfterStop,
    BeforeSpawn,
    AfterSpawn,
    AfterExit,
}

impl HookKind {
    pub const ALL: [HookKind; 7] = [
        HookKind::BeforeStart,
        HookKind::AfterStart,
        HookKind::BeforeStop,
        HookKind::AfterStop,
        HookKind::BeforeSpawn,
        HookKind::AfterSpawn,
        HookKind::AfterExit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::BeforeStart => "before_start",
            HookKind::AfterStart => "after_start",
            HookKind::BeforeStop => "before_stop",
            HookKind::AfterStop => "after_stop",
            HookKind::BeforeSpawn => "before_spawn",
            HookKind::AfterSpawn => "after_spawn",
            HookKind::AfterExit => "after_exit",
        }
    }

    /// Whether its failure stops what it comes before.
    pub fn is_before(self) -> bool {
        match self {
            HookKind::BeforeStart | HookKind::BeforeStop | HookKind::BeforeSpawn => true,
            HookKind::AfterStart
            | HookKind::AfterStop
            | HookKind::AfterSpawn
            | HookKind::AfterExit => false,
        }
    }

    fn of(hooks: &Hooks, kind: HookKind) -> Option<&Hook> {
        match kind {
            HookKind::BeforeStart => hooks.before_start.as_ref(),
            HookKind::AfterStart => hooks.after_start.as_ref(),
            HookKind::BeforeStop => hooks.before_stop.as_ref(),
            HookKind::AfterStop => hooks.after_stop.as_ref(),
            HookKind::BeforeSpawn => hooks.before_spawn.as_ref(),
            HookKind::AfterSpawn => hooks.after_spawn.as_ref(),
            HookKind::AfterExit => hooks.after_exit.as_ref(),
        }
    }

    fn slot(hooks: &mut Hooks, kind: HookKind) -> &mut Option<Hook> {
        match kind {
            HookKind::BeforeStart => &mut hooks.before_start,
            HookKind::AfterStart => &mut hooks.after_start,
            HookKind::BeforeStop => &mut hooks.before_stop,
            HookKind::AfterStop => &mut hooks.after_stop,
            HookKind::BeforeSpawn => &mut hooks.before_spawn,
            HookKind::AfterSpawn => &mut hooks.after_spawn,
            HookKind::AfterExit => &mut hooks.after_exit,
        }
    }
}

/// A hook, validated: its program and arguments, and how long it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// A watcher's hooks, by kind.
pub type HooksConfig = BTreeMap<HookKind, HookConfig>;

fn argv(line: &CommandLine) -> Result<Vec<String>, String> {
    let argv = match line {
        CommandLine::Line(s) => shlex::split(s).ok_or_else(|| {
            format!("{s:?} has an unclosed quote or a trailing backslash; close it")
        })?,
        CommandLine::Argv(v) => v.clone(),
    };
    if argv.first().is_none_or(|p| p.trim().is_empty()) {
        return Err("the command is empty; name the program to run".into());
    }
    if argv.len() > MAX_HOOK_ARGS {
        return Err(format!(
            "{} arguments, more than {MAX_HOOK_ARGS}; pass fewer",
            argv.len()
        ));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("an argument holds a NUL byte".into());
    }
    Ok(argv)
}

/// Validates `hooks`; every problem as (key, message). `timeout` parses a duration in
/// its range.
pub fn hooks(
    raw: &Hooks,
    timeout: impl Fn(&str) -> Result<Duration, String>,
) -> Result<HooksConfig, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for kind in HookKind::ALL {
        let Some(hook) = HookKind::of(raw, kind) else {
            continue;
        };
        let key = format!("hooks.{}", kind.as_str());
        let (line, t) = match hook {
            Hook::Cmd(line) => (line, None),
            Hook::Full(HookCommand { cmd, timeout }) => (cmd, timeout.as_deref()),
        };
        let t = match t.map(&timeout) {
            None => Ok(HOOK_TIMEOUT),
            Some(r) => r,
        };
        match (argv(line), t) {
            (Ok(argv), Ok(timeout)) => {
                out.insert(kind, HookConfig { argv, timeout });
            }
            (Err(m), _) => problems.push((key, m)),
            (_, Err(m)) => problems.push((format!("{key}.timeout"), m)),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// `hooks` as options (none when there is none).
pub fn hooks_options(hooks: &HooksConfig) -> Option<Hooks> {
    if hooks.is_empty() {
        return None;
    }
    let mut out = Hooks::default();
    for (kind, h) in hooks {
        *HookKind::slot(&mut out, *kind) = Some(Hook::Full(HookCommand {
            cmd: CommandLine::Argv(h.argv.clone()),
            timeout: Some(super::format_duration(h.timeout)),
        }));
    }
    Some(out)
}

/// A watcher's guards and hooks, validated.
pub(super) struct Guards {
    pub max_memory: Option<u64>,
    pub max_memory_samples: u32,
    pub rlimits: Vec<RlimitSetting>,
    pub max_age: Option<Duration>,
    pub max_age_variance: Duration,
    pub hooks: HooksConfig,
}

/// Reads `max_memory`, `max_memory_samples`, `rlimits`, `max_age`,
/// `max_age_variance` and `hooks`, with their defaults.
pub(super) fn from_options(o: &WatcherOptions, t: &mut Problems) -> Guards {
    let max_memory = o
        .max_memory
        .as_ref()
        .and_then(|v| max_memory(v).map_err(|m| t.at("max_memory", m)).ok());
    let max_memory_samples = o.max_memory_samples.unwrap_or(MAX_MEMORY_SAMPLES);
    t.count("max_memory_samples", max_memory_samples.into());
    let rlimits = match o.rlimits.as_ref().map(rlimits) {
        None => Vec::new(),
        Some(Ok(list)) => list,
        Some(Err(list)) => {
            t.each(list);
            Vec::new()
        }
    };
    let max_age = t.maybe_duration("max_age", o.max_age.as_ref());
    let max_age_variance = t
        .maybe_duration("max_age_variance", o.max_age_variance.as_ref())
        .unwrap_or_default();
    if o.max_age_variance.is_some() && o.max_age.is_none() {
        t.at(
            "max_age_variance",
            "set without max_age; set max_age too, or remove it",
        );
    }
    let hooks = match o
        .hooks
        .as_ref()
        .map(|h| hooks(h, |d| parse_duration_in_range("hooks.timeout", d)))
    {
        None => BTreeMap::new(),
        Some(Ok(h)) => h,
        Some(Err(list)) => {
            t.each(list);
            BTreeMap::new()
        }
    };
    Guards {
        max_memory,
        max_memory_samples,
        rlimits,
        max_age,
        max_age_variance,
        hooks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        let cases = [
            ("512MiB", Ok(512 << 20)),
            ("512M", Ok(512 << 20)),
            ("2g", Ok(2 << 30)),
            ("500MB", Ok(500_000_000)),
            ("1024", Ok(1024)),
            (" 64 KiB ", Ok(64 << 10)),
            ("1.5G", Err(())),
            ("MiB", Err(())),
            ("12 parsecs", Err(())),
            ("99999999999999999999T", Err(())),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s).map_err(|_| ()), want, "{s}");
        }
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(3 << 30), "3GiB");
        assert_eq!(format_size(1000), "1000");
        let e = max_memory(&ByteSize::Text("10k".into())).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn rlimits_are_checked_by_name_and_value() {
        let raw: BTreeMap<String, Rlimit> = serde_json::from_value(serde_json::json!({
            "nofile": 1024,
            "core": "unlimited",
            "nproc": {"soft": 10, "hard": 20},
        }))
        .unwrap();
        let got = rlimits(&raw).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(rlimits_options(&got), raw);
        let bad: BTreeMap<String, Rlimit> = serde_json::from_value(serde_json::json!({
            "nofiles": 1,
            "core": "lots",
            "nproc": {"soft": 30, "hard": 20},
        }))
        .unwrap();
        let problems = rlimits(&bad).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["rlimits.core", "rlimits.nofiles", "rlimits.nproc"]);
        assert!(problems[1].1.contains("nofile"), "{problems:?}");
    }

    #[test]
    fn a_config_reports_every_guard_and_hook_problem_at_once() {
        let text = r#"
[agent]
name = "n"

[watcher.w]
cmd = "sleep"
max_memory = "lots"
max_memory_samples = 0
max_age = "2s"
max_age_variance = "forever"
rlimits = { nofiles = 1, core = -1 }
hooks = { before_start = "", after_exit = { cmd = "true", timeout = "0s" } }

[watcher.v]
cmd = "sleep"
max_age_variance = "1m"
"#;
        let e = super::super::parse(std::path::Path::new("t.toml"), text)
            .unwrap_err()
            .to_string();
        for needle in [
            "[watcher.w] max_memory",
            "[watcher.w] max_memory_samples",
            "[watcher.w] max_age_variance",
            "[watcher.w] hooks.before_start",
            "[watcher.w] hooks.after_exit.timeout",
            "[watcher.v] max_age_variance: set without max_age",
            "[watcher.w] rlimits.nofiles: unknown limit",
            "[watcher.w] rlimits.core: -1 is not a limit",
        ] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn hooks_take_strings_lists_and_tables() {
        let raw: Hooks = serde_json::from_value(serde_json::json!({
            "before_start": "echo 'a b' c",
            "after_exit": ["logger", "exited"],
            "before_stop": {"cmd": "true", "timeout": "2s"},
        }))
        .unwrap();
        let got = hooks(&raw, super::super::parse_duration).unwrap();
        assert_eq!(got[&HookKind::BeforeStart].argv, ["echo", "a b", "c"]);
        assert_eq!(got[&HookKind::BeforeStart].timeout, HOOK_TIMEOUT);
        assert_eq!(got[&HookKind::BeforeStop].timeout, Duration::from_secs(2));
        let back = hooks_options(&got).unwrap();
        assert_eq!(hooks(&back, super::super::parse_duration).unwrap(), got);
        let bad: Hooks = serde_json::from_value(serde_json::json!({
            "before_start": "echo 'a",
            "after_start": [],
            "after_stop": {"cmd": "x", "timeout": "soon"},
        }))
        .unwrap();
        let problems = hooks(&bad, super::super::parse_duration).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "hooks.before_start",
                "hooks.after_start",
                "hooks.after_stop.timeout"
            ]
        );
        assert!(serde_json::from_value::<Hooks>(serde_json::json!({"before_lunch": "x"})).is_err());
    }
}

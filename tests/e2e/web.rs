//! `ctl web` end to end: headless Chromium (through chromedriver and WebDriver) on the
//! dashboard of a real cluster of two agents; the token and read-only refusals over
//! plain HTTP; `/metrics` read by a Prometheus text parser and compared with
//! `ctl stats`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use e2e::web::{http, Driver, Web};
use e2e::*;
use fantoccini::{ClientBuilder, Locator};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The bound on every wait; a wait ends as soon as its condition holds.
const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "s3cret-web-token";

/// An agent with one watcher of two processes that each print a line when they start
/// (up after 200 ms, replaced two at a time in a rolling restart), sampled twice a
/// second.
fn agent(nats: &NatsServer, name: &str) -> Agent {
    Agent::start_config(
        nats,
        &format!(
            "[agent]\nname = \"{name}\"\nstate_dir = \"{{dir}}/state\"\nlog_dir = \"{{dir}}/logs\"\n\
             stats_interval = \"500ms\"\ntags = {{ zone = \"z-{name}\" }}\n\n\
             [nats]\nservers = [\"{{nats_url}}\"]\n\n\
             [watcher.dummy]\ncmd = \"sh\"\nargs = [\"-c\", \"echo hello from $$; exec sleep 1000\"]\n\
             numprocesses = 2\nmin_uptime = \"200ms\"\nmax_surge = 2\n"
        ),
    )
}

/// A WebDriver session on headless Chromium, closed (and its browser killed) on drop.
struct Browser {
    client: Option<fantoccini::Client>,
    rt: tokio::runtime::Runtime,
    _driver: Driver,
}

impl Browser {
    fn start() -> Browser {
        let driver = Driver::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), driver.chrome_options());
        let client = rt
            .block_on(async {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                tokio::time::timeout(
                    bound(T),
                    ClientBuilder::new(connector)
                        .capabilities(caps)
                        .connect(&driver.url()),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("no WebDriver session within {T:?}"))
            .unwrap_or_else(|e| panic!("cannot start a WebDriver session: {e}"));
        Browser {
            client: Some(client),
            rt,
            _driver: driver,
        }
    }

    fn c(&self) -> &fantoccini::Client {
        self.client.as_ref().expect("a session")
    }

    fn goto(&self, url: &str) {
        self.rt
            .block_on(self.c().goto(url))
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Runs `js` (a function body) in the page and returns its value.
    fn js(&self, js: &str) -> Value {
        self.rt
            .block_on(self.c().execute(js, vec![]))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{js}"))
    }

    /// Polls `js` until it returns something other than null or false.
    fn wait_js(&self, what: &str, js: &str) -> Value {
        wait_for(T, what, || {
            let v = self.js(js);
            (!v.is_null() && v != Value::Bool(false)).then_some(v)
        })
    }

    /// Clicks the element `css` finds, as a user does.
    fn click(&self, css: &str) {
        self.rt
            .block_on(async {
                let e = self.c().find(Locator::Css(css)).await?;
                e.click().await
            })
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    fn screenshot(&self) -> Vec<u8> {
        self.rt
            .block_on(self.c().screenshot())
            .unwrap_or_else(|e| panic!("cannot take a screenshot: {e}"))
    }

    fn resize(&self, w: u32, h: u32) {
        self.rt
            .block_on(self.c().set_window_size(w, h))
            .unwrap_or_else(|e| panic!("cannot resize the window: {e}"));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), c.close()).await });
        }
    }
}

/// Writes `png` under target/ and checks that it is a real picture: its size, and
/// pixels that are not all alike.
fn check_screenshot(png: &[u8], name: &str) {
    let path = bins::bin_dir()
        .parent()
        .map(|t| t.join(name))
        .expect("target dir");
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    assert!(info.width >= 300 && info.height >= 300, "{info:?}");
    let lum: Vec<f64> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| p.iter().take(3).map(|&c| f64::from(c)).sum::<f64>() / 3.0)
        .collect();
    let mean = lum.iter().sum::<f64>() / lum.len() as f64;
    let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64;
    let dark = lum.iter().filter(|l| **l < 128.0).count();
    eprintln!(
        "screenshot {} ({}x{}): luminance mean {mean:.1}, variance {var:.1}, {dark} dark pixels",
        path.display(),
        info.width,
        info.height
    );
    assert!(var > 100.0, "the screenshot looks blank: variance {var:.1}");
    assert!(
        dark > 1000,
        "the screenshot has no text: {dark} dark pixels"
    );
}

/// The pid the page shows for a process.
fn page_pid(b: &Browser, node: &str, wid: u32) -> Option<u32> {
    let v = b.js(&format!(
        "const td = document.querySelector('tr[data-node=\"{node}\"][data-watcher=\"dummy\"][data-wid=\"{wid}\"] .pid'); return td ? Number(td.textContent) : null;"
    ));
    v.as_u64().map(|p| p as u32)
}

#[test]
fn the_page_shows_the_cluster_follows_it_live_and_acts_on_it() {
    let nats = NatsServer::start();
    let first = agent(&nats, "first");
    let second = agent(&nats, "second");
    let web = Web::start(&nats.url(), "127.0.0.1", &["--allow-control"]);
    let b = Browser::start();
    b.goto(&format!("{}/", web.url()));

    // Both members, alive, and both nodes' processes.
    b.wait_js(
        "both members alive and their four processes on the page",
        r#"const rows = [...document.querySelectorAll('#members tbody tr')]
             .map(r => r.cells[0].textContent + '=' + r.cells[1].textContent).join(',');
           const procs = document.querySelectorAll('tr[data-watcher="dummy"][data-wid]').length;
           return rows === 'first=alive,second=alive' && procs === 4;"#,
    );
    let mode = b.js("return document.getElementById('mode').textContent;");
    assert_eq!(mode, json!("control allowed"));
    for (a, node) in [(&first, "first"), (&second, "second")] {
        let pids: BTreeMap<u32, u32> = a.pids("dummy").into_iter().collect();
        for (wid, pid) in pids {
            assert_eq!(page_pid(&b, node, wid), Some(pid), "{node} wid {wid}");
        }
    }

    // The live log of first/dummy: the tail, with the line each process printed.
    b.js("document.getElementById('logs-node').value = 'first'; document.getElementById('logs-node').dispatchEvent(new Event('change')); document.getElementById('logs-watcher').value = 'dummy';");
    b.click("#logs-follow");
    b.wait_js(
        "the tail of first/dummy in the log view",
        "return (document.getElementById('logs').textContent.match(/hello from/g) || []).length >= 2;",
    );

    // A process killed: its exit in the events feed, its restart count up, a new pid.
    let (wid, pid) = first.pids("dummy")[0];
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");
    b.wait_js(
        "the exit of the killed process in the events feed",
        &format!("return !!document.querySelector('#events li[data-kind=\"exit\"][data-node=\"first\"][data-pid=\"{pid}\"]');"),
    );
    b.wait_js(
        "the killed process's restart count up and its new pid on the page",
        &format!(
            r#"const tr = document.querySelector('tr[data-node="first"][data-watcher="dummy"][data-wid="{wid}"]');
               return !!tr && Number(tr.querySelector('.restarts').textContent) >= 1
                 && Number(tr.querySelector('.pid').textContent) !== {pid};"#
        ),
    );
    // The new process's line arrived live, through the follow lease.
    b.wait_js(
        "the respawned process's line in the live log",
        "return (document.getElementById('logs').textContent.match(/hello from/g) || []).length >= 3;",
    );

    // A click on restart: the processes of second/dummy are replaced.
    let before: BTreeSet<u32> = second.pids("dummy").into_iter().map(|p| p.1).collect();
    b.click(r#".watcher[data-node="second"][data-watcher="dummy"] button[data-action="restart"]"#);
    let result = b.wait_js(
        "the result of the restart",
        "const r = document.getElementById('result'); return r.classList.contains('ok') && /done/.test(r.textContent) ? r.textContent : null;",
    );
    assert!(
        result.as_str().unwrap_or_default().contains("second"),
        "{result}"
    );
    let after: BTreeSet<u32> = second.pids("dummy").into_iter().map(|p| p.1).collect();
    assert_eq!(after.len(), 2);
    assert!(before.is_disjoint(&after), "pids {before:?} then {after:?}");
    wait_until(T, "the new pids of second on the page", || {
        (1..=2).all(|w| page_pid(&b, "second", w).is_some_and(|p| after.contains(&p)))
    });

    // A rolling restart of every node, node by node, with its progress on the page.
    let pids = || -> BTreeSet<u32> {
        [&first, &second]
            .iter()
            .flat_map(|a| a.pids("dummy"))
            .map(|p| p.1)
            .collect()
    };
    let before = pids();
    b.js("document.getElementById('cluster-watcher').value = 'dummy';");
    b.click(r#"button[data-cluster="rolling"]"#);
    b.wait_js(
        "the rolling restart done on both nodes, its progress at 2 of 2",
        r#"return /dummy: 2\/2 nodes/.test(document.getElementById('rolling-text').textContent)
             && /done on 2 node/.test(document.getElementById('result').textContent);"#,
    );
    let after = pids();
    assert_eq!(after.len(), 4);
    assert!(before.is_disjoint(&after), "pids {before:?} then {after:?}");

    check_screenshot(&b.screenshot(), "web-dashboard.png");

    // Phone width: nothing wider than the screen but what scrolls on its own.
    b.resize(390, 844);
    b.wait_js(
        "the page fitting a phone-wide window",
        "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
    );
    check_screenshot(&b.screenshot(), "web-dashboard-phone.png");
}

#[test]
fn without_control_actions_are_refused_and_beyond_loopback_a_token_is_needed() {
    let nats = NatsServer::start();
    let first = agent(&nats, "first");
    let mut web = Web::start(&nats.url(), "0.0.0.0", &["--web-token", TOKEN]);
    let port = web.port();
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    // Without the token (or with another), every path is 401.
    for path in [
        "/",
        "/app.js",
        "/api/state",
        "/api/stream",
        "/metrics",
        "/api/logs?node=first&watcher=dummy",
    ] {
        let r = http(port, "GET", path, &[], None);
        assert_eq!(r.status, 401, "GET {path} without a token: {r:?}");
        assert!(r.body.contains("needs its token"), "{}", r.body);
        let r = http(
            port,
            "GET",
            path,
            &[("Authorization", "Bearer wrong-token-x")],
            None,
        );
        assert_eq!(r.status, 401, "GET {path} with a wrong token");
    }
    let r = http(port, "GET", "/?token=wrong-token-x", &[], None);
    assert_eq!(r.status, 401);
    // With it: served; a first visit with ?token= sets the cookie.
    assert_eq!(http(port, "GET", "/metrics", &auth, None).status, 200);
    let r = http(port, "GET", &format!("/?token={TOKEN}"), &[], None);
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = r.header("set-cookie").expect("a cookie").to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let jar = cookie.split(';').next().unwrap_or_default().to_owned();
    assert_eq!(
        http(port, "GET", "/api/state", &[("Cookie", &jar)], None).status,
        200
    );

    // Read-only: an action is refused with 403 and says how to allow it.
    let body = r#"{"action":"restart","node":"first","watcher":"dummy"}"#;
    let r = http(
        port,
        "POST",
        "/api/control",
        &[auth[0], ("Content-Type", "application/json")],
        Some(body),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("--allow-control"), "{}", r.body);

    // And in the browser: the click is refused, the processes stay.
    let before = first.pids("dummy");
    let b = Browser::start();
    b.goto(&format!("http://127.0.0.1:{port}/?token={TOKEN}"));
    b.wait_js(
        "the read-only page with the processes of first",
        "return document.getElementById('mode').textContent === 'read-only' && document.querySelectorAll('tr[data-node=\"first\"][data-wid]').length === 2;",
    );
    let url = b.js("return location.href;");
    assert_eq!(
        url,
        json!(format!("http://127.0.0.1:{port}/")),
        "the token left the address"
    );
    b.click(r#".watcher[data-node="first"][data-watcher="dummy"] button[data-action="restart"]"#);
    let refused = b.wait_js(
        "the refusal on the page",
        "const r = document.getElementById('result'); return r.classList.contains('bad') ? r.textContent : null;",
    );
    assert!(
        refused.as_str().unwrap_or_default().contains("read-only"),
        "{refused}"
    );
    assert_eq!(
        first.pids("dummy"),
        before,
        "a refused restart changed the processes"
    );
    assert!(web.is_running(), "{}", web.stderr());
}

#[test]
fn ctl_web_refuses_to_listen_beyond_loopback_without_a_token() {
    let out = ctl_url("nats://127.0.0.1:1", &["web", "--listen", "0.0.0.0:0"]);
    out.expect_code(2, "no token beyond loopback");
    assert!(out.stderr.contains("needs a token"), "{}", out.stderr);
}

/// A sample's value, whatever type the parser gave it.
fn value(v: &prometheus_parse::Value) -> f64 {
    match v {
        prometheus_parse::Value::Counter(x)
        | prometheus_parse::Value::Gauge(x)
        | prometheus_parse::Value::Untyped(x) => *x,
        other => panic!("unexpected sample {other:?}"),
    }
}

#[test]
fn metrics_parse_and_agree_with_ctl_stats() {
    let nats = NatsServer::start();
    let first = agent(&nats, "first");
    let _second = agent(&nats, "second");
    let web = Web::start(&nats.url(), "127.0.0.1", &[]);
    // One restart, so that restarts are not all 0.
    let (wid, pid) = first.pids("dummy")[0];
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");

    type Key = (String, String, String);
    let scrape = || {
        let r = http(web.port(), "GET", "/metrics", &[], None);
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/openmetrics-text")),
            "{r:?}"
        );
        let lines = r.body.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text page");
        let samples = r
            .body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(parsed.samples.len(), samples, "every sample line parses");
        assert!(r.body.ends_with("# EOF\n"));
        let mut by: BTreeMap<&str, BTreeMap<Key, f64>> = BTreeMap::new();
        for s in &parsed.samples {
            let l = |k: &str| s.labels.get(k).unwrap_or_default().to_owned();
            by.entry(match s.metric.as_str() {
                "nodeagent_process_cpu_seconds_total" => "cpu",
                "nodeagent_process_resident_memory_bytes" => "rss",
                "nodeagent_process_restarts_total" => "restarts",
                _ => continue,
            })
            .or_default()
            .insert((l("node"), l("watcher"), l("wid")), value(&s.value));
        }
        (by, parsed)
    };
    let restarted = ("first".to_owned(), "dummy".to_owned(), wid.to_string());
    let (by, parsed) = wait_for(T, "four processes in /metrics, one restarted", || {
        let (by, parsed) = scrape();
        let ok = by.get("rss").is_some_and(|m| m.len() == 4)
            && by
                .get("restarts")
                .and_then(|m| m.get(&restarted))
                .is_some_and(|r| *r >= 1.0);
        ok.then_some((by, parsed))
    });
    for state in ["alive", "failed"] {
        let s = parsed
            .samples
            .iter()
            .find(|s| {
                s.metric == "nodeagent_member_state"
                    && s.labels.get("node") == Some("first")
                    && s.labels.get("state") == Some(state)
            })
            .unwrap_or_else(|| panic!("no member_state of first, {state}"));
        assert_eq!(value(&s.value), f64::from(u8::from(state == "alive")));
    }

    let replies = ctl_json(&nats, &["--all", "stats"]);
    let mut stats: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for r in &replies {
        let node = r["node"].as_str().expect("node");
        for w in r["watchers"].as_array().expect("watchers") {
            for p in w["processes"].as_array().expect("processes") {
                let key = (
                    node.to_owned(),
                    w["name"].as_str().expect("name").to_owned(),
                    p["wid"].as_u64().expect("wid").to_string(),
                );
                let rss = p["rss_bytes"].as_u64().expect("rss");
                stats.insert(key, (rss, p["restarts"].as_u64().expect("restarts")));
            }
        }
    }
    let keys = |m: &BTreeMap<Key, f64>| m.keys().cloned().collect::<BTreeSet<_>>();
    let stat_keys: BTreeSet<Key> = stats.keys().cloned().collect();
    for metric in ["cpu", "rss", "restarts"] {
        assert_eq!(
            keys(&by[metric]),
            stat_keys,
            "{metric}: node/watcher/wid sets"
        );
    }
    for (k, (rss, restarts)) in &stats {
        let m_rss = by["rss"][k];
        let tolerance = (*rss as f64 * 0.25).max(512.0 * 1024.0);
        assert!(
            (m_rss - *rss as f64).abs() <= tolerance,
            "{k:?}: /metrics rss {m_rss} against ctl stats {rss}"
        );
        assert_eq!(by["restarts"][k], *restarts as f64, "{k:?}: restarts");
        assert!(by["cpu"][k] >= 0.0);
    }
}

/// The state `/metrics` gives `node` (the one of its `nodeagent_member_state` samples
/// at 1), if it lists the node.
fn metrics_member_state(web: &Web, node: &str) -> Option<String> {
    let r = http(web.port(), "GET", "/metrics", &[], None);
    assert_eq!(r.status, 200, "{r:?}");
    let lines = r.body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text page");
    parsed
        .samples
        .iter()
        .find(|s| {
            s.metric == "nodeagent_member_state"
                && s.labels.get("node") == Some(node)
                && value(&s.value) == 1.0
        })
        .and_then(|s| s.labels.get("state").map(str::to_owned))
}

/// With `--system-events-account`, the dashboard reads the server's disconnect
/// advisories (nats.conf shares them with the CLUSTER account) and shows a SIGKILLed
/// agent failed at once, long before its silence would (suspect after 3 s, failed after
/// 10 s); the other member stays alive.
#[test]
fn with_system_events_a_killed_agent_is_failed_at_once_on_the_dashboard() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats.conf");
    let nats = NatsServer::start_with_config(&conf);
    // Before the agents, so that it hears their joins (which name their connections).
    let mut web = Web::start(
        &nats.url(),
        "127.0.0.1",
        &["--system-events-account", "CLUSTER"],
    );
    let mut victim = agent(&nats, "victim");
    let _other = agent(&nats, "other");
    for node in ["victim", "other"] {
        wait_until(T, &format!("{node} alive in /metrics"), || {
            metrics_member_state(&web, node).as_deref() == Some("alive")
        });
    }
    victim.kill();
    let (_, took) = timed(|| {
        wait_until(T, "victim failed in /metrics", || {
            metrics_member_state(&web, "victim").as_deref() == Some("failed")
        })
    });
    eprintln!("SIGKILLed agent failed on the dashboard after {took:?}");
    assert!(
        took < bound(Duration::from_secs(3)),
        "failed after {took:?}: the disconnect advisory was not used"
    );
    assert_eq!(
        metrics_member_state(&web, "other").as_deref(),
        Some("alive")
    );
    assert!(web.is_running(), "{}", web.stderr());
}

/// A bad account name is a usage error that says what to give.
#[test]
fn ctl_web_refuses_an_account_that_is_no_subject_token() {
    let out = ctl_url(
        "nats://127.0.0.1:1",
        &["web", "--system-events-account", "A.B"],
    );
    out.expect_code(2, "an account with a dot");
    assert!(
        out.stderr.contains("--system-events-account \"A.B\""),
        "{}",
        out.stderr
    );
}

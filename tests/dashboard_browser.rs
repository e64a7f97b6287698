//! The dashboard page in a real browser: headless Chromium opens the page served by the real
//! binary on a real MongoDB wire-protocol server, and what a person would see is checked.
//! Skipped with a message only when Chromium is absent and `CI` is unset; in CI it must run.
#![cfg(feature = "dashboard")]

mod common;
mod dashboard_support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use mongodb::bson::DateTime;
use serde_json::json;

use common::MongoServer;
use dashboard_support::cdp::{chromium, Browser};
use dashboard_support::{insert, readings, Dashboard};

// The page draws tiles with the latest values and non-blank charts with no console error, a
// reading inserted afterwards appears on its tile without a reload, and with the database
// stopped the page says so, then clears it by itself once the database is back.
#[tokio::test(flavor = "multi_thread")]
async fn page_shows_latest_readings_and_updates_itself() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let mut server = MongoServer::start_persistent().unwrap_or_else(MongoServer::start);
    let db = common::unique_name("dash_browser");
    let client = server.client().await;
    let now = DateTime::now().timestamp_millis();
    let start = now - 6 * 3_600_000;
    let mut docs = readings(
        "greenhouse-pi",
        0,
        start,
        20_000,
        1080,
        start + 7_200_000..start + 8_400_000,
        101,
    );
    docs.extend(readings("shed-pi", 1, start + 5_000, 20_000, 1080, 0..0, 0));
    let last = docs
        .iter()
        .rfind(|d| d.get_str("nodeName") == Ok("greenhouse-pi"))
        .unwrap();
    let last = last.get_f64("temperature").unwrap();
    insert(&client, &db, docs).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    let url = format!("http://{}/", dash.addr);
    let shot_to = std::env::var_os("DASHBOARD_SCREENSHOT");

    let mut browser = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&exe, (1280, 1100));
        b.navigate(&url);
        b.wait_for("document.querySelectorAll('.tile').length === 2", Duration::from_secs(30), "two tiles");
        b.wait_for("['temperature','humidity','pressure'].every(f => document.querySelectorAll('#chart-' + f + ' path.line').length >= 2)",
                   Duration::from_secs(60), "a line per node in each chart");
        let shown = b.eval("document.querySelector('.tile[data-node=\"greenhouse-pi\"] [data-field=temperature]').textContent");
        assert_eq!(shown.as_str(), Some(format!("{last:.1} °C").as_str()));
        // Gaps are drawn as gaps: greenhouse-pi's line has two pieces.
        let pieces = b.eval("document.querySelectorAll('#chart-temperature path.line[data-node=\"greenhouse-pi\"]').length");
        assert_eq!(pieces.as_i64(), Some(2));
        let png = b.screenshot();
        if let Some(p) = shot_to {
            std::fs::write(p, &png).unwrap();
        }
        let rect = b.eval("(() => { const r = document.getElementById('chart-temperature').getBoundingClientRect(); return [r.left, r.top, r.width, r.height].map(Math.round); })()");
        let r: Vec<u32> = rect.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert!(coloured_pixels(&png, (r[0], r[1], r[2], r[3])) > 500, "the temperature chart looks blank");
        // Refreshes that overlap (a control changed while the charts' answer is awaited) leave
        // one poll running, not one each: every call used to schedule the next on its own.
        b.eval("(() => { window.polls = 0; const set = window.setTimeout; \
                window.setTimeout = (f, ms, ...a) => { if (f === refreshCharts) { window.polls++; window.pollMs = ms; } return set(f, ms, ...a); }; \
                window.overlapDone = false; \
                Promise.all([refreshCharts(), refreshCharts(), refreshCharts()]) \
                  .then(() => { window.overlapDone = true; window.setTimeout = set; }); })()");
        b.wait_for("window.overlapDone === true", Duration::from_secs(30), "three overlapping refreshes");
        assert_eq!(b.eval("window.polls").as_i64(), Some(1), "polls scheduled by three overlapping refreshes");
        // Charts are asked for again once a bucket's time has passed, within 5-60 s: the day's
        // (the page's default) 5 min buckets every minute, the hour's 10 s ones every 10 s.
        // Each ask aggregates the whole window, and the day's was asked for every 5 s.
        assert_eq!(b.eval("window.pollMs").as_i64(), Some(60_000), "the day's charts asked for again after");
        b.eval("(() => { const set = window.setTimeout; window.pollMs = 0; \
                window.setTimeout = (f, ms, ...a) => { if (f === refreshCharts) window.pollMs = ms; return set(f, ms, ...a); }; \
                $('window').value = '1h'; refreshCharts().then(() => { window.setTimeout = set; }); })()");
        b.wait_for("window.pollMs > 0", Duration::from_secs(30), "the hour's charts");
        assert_eq!(b.eval("window.pollMs").as_i64(), Some(10_000), "the hour's charts asked for again after");
        b.eval("$('window').value = '24h'");
        // A node whose chart the server refuses (here one it has no readings of: a real 404)
        // leaves the others' lines drawn and is named in the status bar; every chart used to
        // stay blank. The charts are cleared first so that what shows is this refresh's.
        b.eval("(() => { document.querySelectorAll('svg.chart').forEach((c) => c.replaceChildren()); \
                nodes = nodes.concat(['ghost-pi']); refreshCharts(); })()");
        b.wait_for("document.getElementById('status').textContent.includes('ghost-pi')",
                   Duration::from_secs(30), "the failed node in the status bar");
        for node in ["greenhouse-pi", "shed-pi"] {
            let drawn = b.eval(&format!("['temperature','humidity','pressure'].every(f => \
                document.querySelectorAll('#chart-' + f + ' path.line[data-node=\"{node}\"]').length >= 1)"));
            assert_eq!(drawn.as_bool(), Some(true), "{node}'s lines beside the failed node");
        }
        // The browser logs the refused request itself; that is the point here, not an error.
        b.errors.retain(|e| !e.contains("404"));
        b
    })
    .await
    .unwrap();

    // A new reading, not in any earlier answer, shows on its tile within a few seconds.
    let mut fresh = readings(
        "greenhouse-pi",
        0,
        DateTime::now().timestamp_millis(),
        500,
        1,
        0..0,
        0,
    );
    fresh[0].insert("temperature", 42.4);
    insert(&client, &db, fresh).await;
    let mut browser = tokio::task::spawn_blocking(move || {
        browser.wait_for("document.querySelector('.tile[data-node=\"greenhouse-pi\"] [data-field=temperature]').textContent === '42.4 °C'",
                         Duration::from_secs(10), "the new reading on its tile");
        assert!(browser.errors.is_empty(), "console errors: {:?}", browser.errors);
        browser
    })
    .await
    .unwrap();
    if !server.owned {
        return;
    }
    server.stop();
    let mut browser = tokio::task::spawn_blocking(move || {
        let status = "document.getElementById('status')";
        browser.wait_for(
            &format!("!{status}.hidden && {status}.textContent.includes('database unavailable')"),
            Duration::from_secs(30),
            "the outage in the status bar",
        );
        // Charts that failed are asked for again after the bucket width their window implies,
        // not every 5 s: a window too long for the server's time limit would be re-read at once.
        browser.eval("(() => { const set = window.setTimeout; window.pollMs = 0; \
                window.setTimeout = (f, ms, ...a) => { if (f === refreshCharts) window.pollMs = ms; return set(f, ms, ...a); }; \
                refreshCharts().then(() => { window.setTimeout = set; }); })()");
        browser.wait_for("window.pollMs > 0", Duration::from_secs(30), "the failed charts");
        assert_eq!(browser.eval("window.pollMs").as_i64(), Some(60_000), "failed day's charts asked for again after");
        browser
    })
    .await
    .unwrap();
    server.launch();
    tokio::task::spawn_blocking(move || {
        // Within the tiles' polls and the driver's reconnection, not the minute the failed
        // day's charts would otherwise wait: the tiles ask for them at once.
        browser.wait_for(
            "document.getElementById('status').hidden",
            Duration::from_secs(40),
            "the status bar to clear once the database is back",
        );
        drop(dash);
    })
    .await
    .unwrap();
}

// A resize redraws the charts at the new size from the answers the page holds, asking nothing
// (each resize event used to fetch every chart again), and a refresh cancels the requests of
// the one it supersedes.
#[tokio::test(flavor = "multi_thread")]
async fn resizing_redraws_without_asking_and_a_new_refresh_cancels_the_old() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let server = MongoServer::start();
    let db = common::unique_name("dash_resize");
    let client = server.client().await;
    let start = DateTime::now().timestamp_millis() - 3_600_000;
    let mut docs = readings("greenhouse-pi", 0, start, 20_000, 180, 0..0, 0);
    docs.extend(readings("shed-pi", 1, start + 5_000, 20_000, 180, 0..0, 0));
    insert(&client, &db, docs).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    let url = format!("http://{}/", dash.addr);
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&exe, (1280, 900));
        b.navigate(&url);
        b.wait_for(&format!("{LINES_DRAWN} && document.querySelectorAll('.tile').length === 2"),
                   Duration::from_secs(60), "a line per node in each chart");
        let before = b.eval("document.getElementById('chart-temperature').clientWidth").as_i64().unwrap();
        // The regular chart poll stopped, so that only the resize can redraw; from here on,
        // count the chart requests the page makes.
        b.eval("clearTimeout(chartTimer)");
        b.eval("(() => { window.chartFetches = 0; const f = window.fetch; \
                window.fetch = (u, ...a) => { if (String(u).startsWith('/api/chart')) window.chartFetches++; \
                return f(u, ...a); }; })()");
        // The window gets narrower, then a drag's worth of resize events: 60, one every 16 ms.
        b.call("Emulation.setDeviceMetricsOverride",
               json!({ "width": 900, "height": 900, "deviceScaleFactor": 1, "mobile": false }));
        b.eval("(() => { window.resizes = 0; const t = setInterval(() => { \
                window.dispatchEvent(new Event('resize')); if (++window.resizes === 60) clearInterval(t); }, 16); })()");
        b.wait_for("window.resizes === 60", Duration::from_secs(10), "60 resize events");
        // Each chart is drawn again to the size it now has, its lines with it.
        b.wait_for(&format!("{LINES_DRAWN} && ['temperature','humidity','pressure'].every(f => {{ \
                    const c = document.getElementById('chart-' + f); \
                    return c.getAttribute('viewBox') === `0 0 ${{c.clientWidth}} ${{c.clientHeight}}`; }})"),
                   Duration::from_secs(30), "the charts redrawn at the new width");
        let after = b.eval("document.getElementById('chart-temperature').clientWidth").as_i64().unwrap();
        assert!(after < before, "the chart did not narrow: {before} -> {after}");
        // Redrawn from the answers the page had, with no request.
        let fetched = b.eval("window.chartFetches").as_i64().unwrap();
        assert_eq!(fetched, 0, "{fetched} chart requests for one resize");

        // Two refreshes in a row: the first one's requests are cancelled, the second's answered.
        // (The tiles' requests are left out, and so are the next poll's, should it come.)
        b.eval("(() => { window.calls = []; const f = window.fetch; \
                window.fetch = (u, ...a) => { const p = f(u, ...a); if (!String(u).startsWith('/api/chart')) return p; \
                  const c = { outcome: 'pending' }; window.calls.push(c); \
                  p.then(() => { c.outcome = 'answered'; }, (e) => { c.outcome = e.name; }); return p; }; \
                refreshCharts(); refreshCharts(); })()");
        b.wait_for("window.calls.length >= 4 && window.calls.slice(0, 4).every((c) => c.outcome !== 'pending')",
                   Duration::from_secs(30), "both refreshes' requests settled");
        let outcomes = b.eval("window.calls.slice(0, 4).map((c) => c.outcome)");
        assert_eq!(outcomes, json!(["AbortError", "AbortError", "answered", "answered"]));
        b.wait_for(LINES_DRAWN, Duration::from_secs(10), "the second refresh drawn");
        assert_eq!(b.eval("document.getElementById('status').hidden"), json!(true));
        assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
        drop(dash);
    })
    .await
    .unwrap();
}

// While the dashboard cannot be reached (stopped, then a port that never answers, as a dead
// kept-alive socket), tiles' ages count on and turn stale past --stale-after, the request that
// never answers is given up on, and the page recovers by itself once the dashboard is back.
#[tokio::test(flavor = "multi_thread")]
async fn tiles_go_stale_while_the_dashboard_cannot_be_reached() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let server = MongoServer::start();
    let db = common::unique_name("dash_unreachable");
    let client = server.client().await;
    let now = DateTime::now().timestamp_millis();
    insert(
        &client,
        &db,
        readings("porch-pi", 2, now - 600_000, 20_000, 30, 0..0, 0),
    )
    .await;
    let dash = Dashboard::start(&server.uri, &db, "10s");
    let addr = dash.addr.clone();
    let url = format!("http://{addr}/");
    let port = addr.clone();
    let mut b = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&exe, (1280, 900));
        b.navigate(&url);
        b.wait_for(
            &format!("{TILE} !== null"),
            Duration::from_secs(30),
            "the tile",
        );
        b
    })
    .await
    .unwrap();
    insert(&client, &db, reading_now("porch-pi", 33.3)).await;
    let (mut b, hole) = tokio::task::spawn_blocking(move || {
        b.wait_for(&format!("{TILE}.querySelector('[data-field=temperature]').textContent === '33.3 °C' \
                             && !{TILE}.classList.contains('stale')"),
                   Duration::from_secs(10), "the new reading on a fresh tile");
        assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
        // The dashboard stops; its port accepts connections (the kernel does) and never answers.
        drop(dash);
        let hole = TcpListener::bind(&port).expect("bind the dashboard's port again");
        // 10 s of --stale-after from a reading a second or two old, and a second's tick.
        b.wait_for(&format!("{TILE}.classList.contains('stale') && \
                             {TILE}.querySelector('[data-field=age]').textContent.startsWith('stale: ')"),
                   Duration::from_secs(25), "the tile marked stale");
        b.wait_for("document.getElementById('status').textContent.includes('no answer')",
                   Duration::from_secs(60), "the request that never answers given up on");
        (b, hole)
    })
    .await
    .unwrap();
    // The dashboard is back with a newer reading: the page, still polling, shows it, fresh.
    drop(hole);
    insert(&client, &db, reading_now("porch-pi", 44.4)).await;
    let dash = Dashboard::start_on(&addr, &server.uri, &db, "10s", &[]);
    tokio::task::spawn_blocking(move || {
        b.wait_for(
            &format!(
                "{TILE}.querySelector('[data-field=temperature]').textContent === '44.4 °C' \
                 && !{TILE}.classList.contains('stale') && document.getElementById('status').hidden"
            ),
            Duration::from_secs(30),
            "the page back on its own with the newer reading",
        );
        drop(dash);
    })
    .await
    .unwrap();
}

// A fleet's all-nodes view asks for and draws the first ALL_NODES_MAX nodes only, and says
// so (it used to ask for every node's chart every 5 s, hundreds of aggregations); picking a
// node beyond them charts that node alone. The drawing function draws 200,000 points, in one
// line and in 200,000 pieces, without the "Maximum call stack size exceeded" that spreading
// them as arguments to Math.min and replaceChildren threw.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_charts_a_bounded_number_of_nodes_and_any_number_of_points() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let server = MongoServer::start();
    let db = common::unique_name("dash_fleet");
    let client = server.client().await;
    let start = DateTime::now().timestamp_millis() - 1_800_000;
    let names: Vec<String> = (0..15).map(|i| format!("node-{i:02}")).collect();
    let mut docs = Vec::new();
    for (k, name) in names.iter().enumerate() {
        docs.extend(readings(name, k as u32, start, 60_000, 20, 0..0, 0));
    }
    insert(&client, &db, docs).await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    let url = format!("http://{}/", dash.addr);
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&exe, (1280, 900));
        b.navigate(&url);
        b.wait_for("document.querySelectorAll('.tile').length === 15", Duration::from_secs(30), "15 tiles");
        b.wait_for("new Set([...document.querySelectorAll('#chart-temperature path.line')].map((p) => p.dataset.node)).size >= 1",
                   Duration::from_secs(60), "the charts drawn");
        // One refresh of the all-nodes view: the chart requests it makes, counted as it sends them.
        let sent = b.eval("(() => { clearTimeout(chartTimer); window.chartFetches = []; const f = window.fetch; \
                window.fetch = (u, ...a) => { if (String(u).startsWith('/api/chart')) window.chartFetches.push(String(u)); \
                return f(u, ...a); }; window.refreshed = false; refreshCharts().then(() => { window.refreshed = true; }); \
                return window.chartFetches.length; })()");
        assert_eq!(sent.as_i64(), Some(12), "chart requests of one all-nodes refresh of 15 nodes");
        b.wait_for("window.refreshed === true", Duration::from_secs(30), "the refresh drawn");
        let lines = b.eval("new Set([...document.querySelectorAll('#chart-temperature path.line')].map((p) => p.dataset.node)).size");
        assert_eq!(lines.as_i64(), Some(12), "nodes drawn");
        // Each in a colour of its own, far enough from the others to tell apart (the lines have
        // no legend): nodes 1 and 9 were drawn alike, from 8 colours.
        let strokes = b.eval("[...new Set([...document.querySelectorAll('#chart-temperature path.line')].map((p) => p.dataset.node + ' ' + p.getAttribute('stroke')))]");
        let strokes: Vec<&str> = strokes.as_array().unwrap().iter().map(|s| s.as_str().unwrap().split(' ').nth(1).unwrap()).collect();
        assert_eq!(strokes.len(), 12, "one colour per node: {strokes:?}");
        for (i, a) in strokes.iter().enumerate() {
            for b in &strokes[i + 1..] {
                let apart = delta_e(a, b);
                assert!(apart >= 25.0, "{a} and {b} are {apart:.1} apart (CIE76)");
            }
        }
        let note = b.eval("document.getElementById('chart-note').hidden ? '' : document.getElementById('chart-note').textContent");
        assert!(note.as_str().unwrap().contains("showing 12 of 15 nodes"), "the note: {note}");
        // A node past the first twelve, picked: its chart alone, and no note.
        b.eval("(() => { window.chartFetches = []; window.refreshed = false; const m = document.getElementById('node'); \
                m.value = 'node-14'; m.dispatchEvent(new Event('change')); })()");
        b.wait_for("window.chartFetches.length >= 1 && document.querySelectorAll('#chart-temperature path.line').length >= 1 \
                    && [...document.querySelectorAll('#chart-temperature path.line')].every((p) => p.dataset.node === 'node-14')",
                   Duration::from_secs(30), "node-14's chart alone");
        assert_eq!(b.eval("document.getElementById('chart-note').hidden"), json!(true));
        // 200,000 points, contiguous (one line), then each alone (a dot each).
        for (step, drawn) in [(1, "path.line"), (2, "circle")] {
            let outcome = b.eval(&format!("(() => {{ clearTimeout(chartTimer); const n = 200000, from = Date.now() - n * 2000; \
                const points = []; for (let i = 0; i < n; i++) points.push({{ ms: from + i * {step} * 1000, \
                  min: 20 - (i % 7), max: 21 + (i % 5), avg: 20.5, count: 1 }}); \
                const target = document.getElementById('chart-temperature'); \
                try {{ drawChart(target, FIELDS[0], [{{ node: 'big-pi', bucketMs: 1000, points }}], [], \
                  {{ from: new Date(from).toISOString(), to: new Date(from + n * 2000).toISOString() }}); }} \
                catch (e) {{ return String(e); }} \
                return target.querySelectorAll('{drawn}').length; }})()"));
            let want = if step == 1 { 1 } else { 200_000 };
            assert_eq!(outcome, json!(want), "drawing 200,000 points {drawn}");
        }
        assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
        drop(dash);
    })
    .await
    .unwrap();
}

/// The test server with one node, porch-pi, read every minute over the last hour, and a
/// dashboard on it.
async fn porch_pi_last_hour(name: &str) -> (MongoServer, Dashboard) {
    let server = MongoServer::start();
    let db = common::unique_name(name);
    let start = DateTime::now().timestamp_millis() - 3_600_000;
    insert(
        &server.client().await,
        &db,
        readings("porch-pi", 0, start, 60_000, 60, 0..0, 0),
    )
    .await;
    let dash = Dashboard::start(&server.uri, &db, "1h");
    (server, dash)
}

// The windows end at the dashboard's now, not the browser's: with the browser's clock three
// days ahead of the dashboard's (a phone set right, the Pi without a real-time clock behind),
// the day's charts draw the last hour's readings, and the CSV link and the from-to fields end
// at the dashboard's now. They ended at the browser's: "no readings in this window", and a CSV
// of no rows.
#[tokio::test(flavor = "multi_thread")]
async fn windows_end_at_the_dashboards_now_whatever_the_browsers_clock() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let (_server, dash) = porch_pi_last_hour("dash_skew").await;
    let url = format!("http://{}/", dash.addr);
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&exe, (1280, 900));
        b.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": skewed_clock(3 * 86_400_000) }));
        b.navigate(&url);
        b.wait_for("document.querySelector('#chart-temperature path.line, #chart-temperature text.empty') !== null",
                   Duration::from_secs(60), "the temperature chart drawn");
        // The page's clock is the skewed one (performance keeps the real time).
        let skew = b.eval("Math.round((Date.now() - performance.timeOrigin - performance.now()) / 3600e3)");
        assert_eq!(skew.as_i64(), Some(72), "the browser's clock, hours ahead");
        let lines = b.eval("document.querySelectorAll('#chart-temperature path.line').length");
        assert_eq!(lines.as_i64(), Some(1), "porch-pi's line in the day's chart");
        b.eval("(() => { const m = document.getElementById('node'); m.value = 'porch-pi'; \
                m.dispatchEvent(new Event('change')); })()");
        b.wait_for("!document.getElementById('csv').hidden", Duration::from_secs(30), "the CSV link");
        let to = b.eval("Date.parse(new URL(document.getElementById('csv').href).searchParams.get('to'))");
        let late = DateTime::now().timestamp_millis() - to.as_i64().unwrap();
        assert!(late.abs() < 10_000, "the CSV window ends {late} ms before the dashboard's now");
        let csv = dash.get(b.eval("document.getElementById('csv').getAttribute('href')").as_str().unwrap());
        assert_eq!(csv.body.lines().count(), 61, "the CSV: a header and the hour's readings");
        // The from-to fields start as the last day on the dashboard's clock (to the minute).
        b.eval("(() => { const w = document.getElementById('window'); w.value = 'custom'; \
                w.dispatchEvent(new Event('change')); })()");
        let to = b.eval("new Date(document.getElementById('to').value).getTime()");
        let late = DateTime::now().timestamp_millis() - to.as_i64().unwrap();
        assert!((0..120_000).contains(&late), "the to field is {late} ms before the dashboard's now");
        assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
        drop(dash);
    })
    .await
    .unwrap();
}

// A from-to window with a time missing asks for nothing: the page says to enter both times,
// the charts are cleared and the CSV link hidden, until both are given. It used to chart, and
// link the CSV of, the last day.
#[tokio::test(flavor = "multi_thread")]
async fn a_from_to_window_with_a_time_missing_asks_for_nothing() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let (_server, dash) = porch_pi_last_hour("dash_custom").await;
    let url = format!("http://{}/", dash.addr);
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&exe, (1280, 900));
        b.navigate(&url);
        b.wait_for("document.querySelectorAll('.tile').length === 1", Duration::from_secs(30), "the tile");
        // porch-pi alone, over a from-to window (filled in as the last day): drawn, with its CSV.
        b.eval("(() => { const m = document.getElementById('node'); m.value = 'porch-pi'; \
                const w = document.getElementById('window'); w.value = 'custom'; \
                w.dispatchEvent(new Event('change')); })()");
        let drawn = "document.querySelectorAll('#chart-temperature path.line').length === 1 \
                     && !document.getElementById('csv').hidden";
        b.wait_for(drawn, Duration::from_secs(30), "porch-pi's chart and CSV link");
        // From here on, count the chart requests the page makes.
        b.eval("(() => { window.chartFetches = 0; const f = window.fetch; \
                window.fetch = (u, ...a) => { if (String(u).startsWith('/api/chart')) window.chartFetches++; \
                return f(u, ...a); }; })()");
        b.eval("(() => { const from = document.getElementById('from'); window.given = from.value; from.value = ''; \
                from.dispatchEvent(new Event('change')); })()");
        b.wait_for("document.getElementById('status').textContent.includes('Enter both a from and a to time')",
                   Duration::from_secs(10), "the page asking for both times");
        assert_eq!(b.eval("document.getElementById('csv').hidden"), json!(true), "the CSV link");
        assert_eq!(b.eval("document.querySelectorAll('svg.chart *').length"), json!(0), "what the charts show");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(b.eval("window.chartFetches"), json!(0), "chart requests without a from time");
        // Given again, the time brings the charts and the link back, and the message goes.
        b.eval("(() => { const from = document.getElementById('from'); from.value = window.given; \
                from.dispatchEvent(new Event('change')); })()");
        b.wait_for(&format!("{drawn} && document.getElementById('status').hidden"),
                   Duration::from_secs(30), "the charts and the link back");
        assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
        drop(dash);
    })
    .await
    .unwrap();
}

// With no readings at all, each chart says "no readings in this window" beside the tiles'
// "No readings yet."; they stayed blank: the first node list, empty, changed no menu, and
// the charts were drawn only when the menu changed.
#[tokio::test(flavor = "multi_thread")]
async fn with_no_readings_the_charts_say_so() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let server = MongoServer::start();
    let db = common::unique_name("dash_empty");
    let dash = Dashboard::start(&server.uri, &db, "1h");
    let url = format!("http://{}/", dash.addr);
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&exe, (1280, 900));
        b.navigate(&url);
        b.wait_for("document.getElementById('tiles').textContent === 'No readings yet.'",
                   Duration::from_secs(30), "the empty tiles");
        b.wait_for("['temperature','humidity','pressure'].every(f => \
                    document.querySelector('#chart-' + f + ' text.empty')?.textContent === 'no readings in this window')",
                   Duration::from_secs(10), "each chart saying it has no readings");
        assert_eq!(b.eval("document.getElementById('status').hidden"), json!(true));
        assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
        drop(dash);
    })
    .await
    .unwrap();
}

/// A script setting the page's clock (`Date.now()`, `new Date()`) `skew_ms` off the real one,
/// as in a browser whose clock is wrong; timers and `performance` keep the real time.
fn skewed_clock(skew_ms: i64) -> String {
    format!(
        "(() => {{ const Real = Date, skew = {skew_ms}; \
         class Skewed extends Real {{ \
           constructor(...a) {{ if (a.length) super(...a); else super(Real.now() + skew); }} \
           static now() {{ return Real.now() + skew; }} }} \
         window.Date = Skewed; }})()"
    )
}

/// A line per node (two) in each chart.
const LINES_DRAWN: &str = "['temperature','humidity','pressure'].every(f => \
    document.querySelectorAll('#chart-' + f + ' path.line').length >= 2)";

// The page's CSV link for a window holding more readings than a CSV may (here a cap of 100,
// against 150 readings in the last hour) shows the reason, to choose a shorter window, where it
// used to download the oldest 100 rows and say nothing of the newest.
#[tokio::test(flavor = "multi_thread")]
async fn the_csv_link_of_a_window_over_the_cap_says_why() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let server = MongoServer::start();
    let db = common::unique_name("dash_csv_link");
    let start = DateTime::now().timestamp_millis() - 1_800_000;
    insert(
        &server.client().await,
        &db,
        readings("porch-pi", 0, start, 10_000, 150, 0..0, 0),
    )
    .await;
    let dash = Dashboard::start_with(&server.uri, &db, "1h", &["--csv-max-rows", "100"]);
    let url = format!("http://{}/", dash.addr);
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&exe, (1280, 900));
        b.navigate(&url);
        b.wait_for("document.querySelectorAll('.tile').length === 1", Duration::from_secs(30), "the tile");
        b.eval("(() => { const w = document.getElementById('window'); w.value = '1h'; \
                const m = document.getElementById('node'); m.value = 'porch-pi'; \
                m.dispatchEvent(new Event('change')); })()");
        b.wait_for("!document.getElementById('csv').hidden && document.getElementById('csv').href.includes('porch-pi')",
                   Duration::from_secs(30), "the CSV link");
        b.eval("document.getElementById('csv').click()");
        b.wait_for("document.body !== null && document.body.innerText.includes('choose a shorter window')",
                   Duration::from_secs(30), "the reason the CSV was refused");
        let shown = b.eval("document.body.innerText");
        assert!(shown.as_str().unwrap().contains("more than 100 readings of porch-pi"), "{shown}");
        drop(dash);
    })
    .await
    .unwrap();
}

/// porch-pi's tile.
const TILE: &str = "document.querySelector('.tile[data-node=\"porch-pi\"]')";

/// Chromium, or `None` (with a message) when it is absent outside CI.
fn chromium_or_skip() -> Option<PathBuf> {
    let exe = chromium();
    if exe.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test: apt-get install -y chromium"
        );
        eprintln!("skipping: chromium is not installed (apt-get install -y chromium)");
    }
    exe
}

/// One reading of `node` dated now, with temperature `t`.
fn reading_now(node: &str, t: f64) -> Vec<mongodb::bson::Document> {
    let mut r = readings(node, 0, DateTime::now().timestamp_millis(), 500, 1, 0..0, 0);
    r[0].insert("temperature", t);
    r
}

/// How far apart two `#rrggbb` colours look: the distance between them in CIELAB (CIE76, D65);
/// about 2 is just noticeable, and lines 25 apart are told apart at a glance.
fn delta_e(a: &str, b: &str) -> f64 {
    fn lab(hex: &str) -> [f64; 3] {
        let channel = |i: usize| {
            let c = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        let (r, g, b) = (channel(1), channel(3), channel(5));
        let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
        let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
        let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
        let f = |t: f64| {
            if t > 0.008856 {
                t.cbrt()
            } else {
                7.787 * t + 16.0 / 116.0
            }
        };
        [
            116.0 * f(y) - 16.0,
            500.0 * (f(x) - f(y)),
            200.0 * (f(y) - f(z)),
        ]
    }
    let (p, q) = (lab(a), lab(b));
    p.iter()
        .zip(q)
        .map(|(p, q)| (p - q).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Pixels in the rectangle that are neither white nor near-white grey: lines and bands.
fn coloured_pixels(png_bytes: &[u8], (x, y, w, h): (u32, u32, u32, u32)) -> usize {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let mut n = 0;
    for row in y..(y + h).min(info.height) {
        for col in x..(x + w).min(info.width) {
            let i = (row as usize * info.width as usize + col as usize) * channels;
            let (r, g, b) = (buf[i] as i32, buf[i + 1] as i32, buf[i + 2] as i32);
            if (r - g).abs() + (g - b).abs() + (r - b).abs() > 60 {
                n += 1;
            }
        }
    }
    n
}

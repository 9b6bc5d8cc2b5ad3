//! The dashboard as a person sees it, in a real headless browser (Debian's `chromium` through `chromedriver`,
//! installed by the test when missing): sign in with a team token, find the experiment in the list, watch its
//! training curve gain points while stage 1 trains (no reload: a marker set in the page survives), check the job
//! graph and the thesis tables against what the coordinator stored, compare two experiments, and see that markup
//! in a stored job name is shown as text. Each page's screenshot is written to
//! `target/dashboard-screenshots/` for a reviewer (the committed ones are in `docs/dashboard/`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tandem_tests::browser::Browser;
use tandem_tests::{FAST, Lab, TINY_STAGE1_TRAINING, tiny_manifest, wait_for};

const WIDTH: u32 = 1400;

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn save(browser: &Browser, name: &str) {
    let png = browser.screenshot(WIDTH);
    assert!(png.starts_with(b"\x89PNG"), "{name}: a PNG screenshot");
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// The number of points the page's training-loss curve of stage 1 is drawn with (`null` before it is drawn).
const CURVE_POINTS: &str = r#"
  const panel = document.querySelector('svg[data-series="Training loss"]');
  if (!panel) return null;
  const lines = [...panel.querySelectorAll('polyline.curve')];
  return lines.length ? Math.max(...lines.map((l) => Number(l.dataset.points))) : null;
"#;

#[test]
fn a_person_signs_in_watches_training_and_reads_the_tables() {
    let http = free_addr();
    let mut args = FAST.to_vec();
    args.extend(["--http", http.as_str()]);
    let lab = Lab::start_with(&args);
    let base = format!("http://{http}/");

    // A tiny two-stage experiment whose stage-1 training logs every update, queued before any worker runs, so
    // the page is open when training starts.
    let training = TINY_STAGE1_TRAINING
        .replace("epochs = 1.0", "epochs = 100.0")
        .replace("max_steps = 2", "max_steps = 400")
        .replace("eval_every = 1", "eval_every = 50")
        .replace("checkpoint_every = 1", "checkpoint_every = 200");
    let manifest = lab.dir.path().join("browser.toml");
    std::fs::write(
        &manifest,
        tiny_manifest(
            "browser-two-stage",
            "none",
            &training,
            r#""base:stage1", "stage1:stage1", "two-stage:stage2""#,
        ),
    )
    .unwrap();
    let manifest = manifest.to_str().unwrap();
    let id = lab.tandem_ok(&["submit", manifest]).trim().to_string();

    let browser = Browser::start(WIDTH, 1000);
    browser.goto(&base);
    // Signing in: the page asks for a token; a wrong one is refused with a message.
    browser.wait_for(
        "the sign-in form",
        Duration::from_secs(20),
        "return document.querySelector('#token') !== null;",
    );
    browser.type_into("#token", "not-a-token");
    browser.click("#login button");
    browser.wait_for(
        "the refusal",
        Duration::from_secs(20),
        "return document.body.textContent.includes('was not accepted');",
    );
    browser.type_into("#token", &lab.team);
    browser.click("#login button");
    let listed = browser.wait_for(
        "the experiment list",
        Duration::from_secs(20),
        "const rows = document.querySelectorAll('#experiments tbody tr'); \
         return rows.length ? [...rows].map((r) => r.dataset.id) : null;",
    );
    assert_eq!(listed, json!([id]), "the list holds the queued experiment");

    // The experiment's page before any worker: every job of the graph is drawn, none has run.
    browser.run("location.hash = '#/e/' + arguments[0];", json!([id]));
    let status = lab.status(&id);
    let jobs = status["jobs"].as_array().unwrap();
    let nodes = browser.wait_for(
        "the job graph",
        Duration::from_secs(20),
        "const n = document.querySelectorAll('#graph g.node'); return n.length ? n.length : null;",
    );
    assert_eq!(nodes, json!(jobs.len()), "one box per job");
    browser.run("window.tandemMarker = 'no reload';", json!([]));

    // Training starts; the curve gains points while it runs, without a reload.
    let _w0 = lab.worker("w0");
    let _w1 = lab.worker("w1");
    let first = browser
        .wait_for("the training curve", Duration::from_secs(120), CURVE_POINTS)
        .as_u64()
        .unwrap();
    let later = browser
        .wait_for(
            "the curve to gain points",
            Duration::from_secs(120),
            &format!("const n = (() => {{ {CURVE_POINTS} }})(); return n > {first} ? n : null;"),
        )
        .as_u64()
        .unwrap();
    assert!(later > first);
    assert_eq!(
        browser.run("return window.tandemMarker;", json!([])),
        json!("no reload"),
        "the page was updated in place"
    );

    // Finished: the graph's states and the tables are the stored ones.
    let status = wait_for("the experiment to finish", Duration::from_secs(600), || {
        let status = lab.status(&id);
        match status["state"].as_str() {
            Some("succeeded") => Some(status),
            Some("failed") => panic!("{status:#}"),
            _ => None,
        }
    });
    let drawn = browser.wait_for(
        "every box succeeded and the tables",
        Duration::from_secs(30),
        "const n = [...document.querySelectorAll('#graph g.node')]; \
         if (!n.length || n.some((g) => g.dataset.state !== 'succeeded')) return null; \
         if (!document.querySelector('table.results')) return null; \
         return n.map((g) => [g.dataset.job, g.querySelector('title').textContent.split('\\n')[0]]);",
    );
    let mut drawn: Vec<(String, String)> = serde_json::from_value(drawn).unwrap();
    let mut stored: Vec<(String, String)> = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_string(),
                j["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    drawn.sort();
    stored.sort();
    assert_eq!(drawn, stored, "the graph shows every stored job by name");

    let results: Value =
        serde_json::from_str(&lab.tandem_ok(&["results", &id, "--format", "json"])).unwrap();
    let shown = browser.run(
        "return [...document.querySelectorAll('table.results')].map((t) => [t.dataset.task, \
         [...t.querySelectorAll('tbody tr')].map((r) => [...r.querySelectorAll('td')].map((d) => d.textContent))]);",
        json!([]),
    );
    let shown: Vec<(String, Vec<Vec<String>>)> = serde_json::from_value(shown).unwrap();
    let tables = results["tables"].as_array().unwrap();
    assert_eq!(shown.len(), tables.len(), "{shown:?}");
    let mut cells = 0;
    for ((task, rows), table) in shown.iter().zip(tables) {
        assert_eq!(task, table["task"].as_str().unwrap());
        let stored_rows = table["rows"].as_array().unwrap();
        assert_eq!(rows.len(), stored_rows.len(), "rows of {task}");
        for (row, stored_row) in rows.iter().zip(stored_rows) {
            assert_eq!(row[1], stored_row["n"].to_string(), "n of {task}");
            for (text, cell) in row[2..].iter().zip(stored_row["cells"].as_array().unwrap()) {
                match cell["mean"].as_f64() {
                    Some(mean) => {
                        assert!(
                            text.starts_with(&format!("{mean:.2}")),
                            "{task}: {text} shows {mean}"
                        );
                        cells += 1;
                    }
                    None => assert_eq!(text, "n/a"),
                }
            }
        }
    }
    assert!(cells >= 9, "the tables show stored scores ({cells} cells)");
    // Stage 2 ran in two folds: its training curve is drawn as the mean with a band over the folds.
    let bands = browser.run(
        "return document.querySelectorAll('#curves polygon.band').length;",
        json!([]),
    );
    assert!(bands.as_u64().unwrap() >= 1, "a fold band: {bands}");
    // The figures `tandem plot` draws, served by the same code and shown as images.
    browser.click("#figures-box summary");
    let figures = browser.wait_for(
        "the figures",
        Duration::from_secs(60),
        "const imgs = [...document.querySelectorAll('#figures img')]; \
         return imgs.length && imgs.every((i) => i.complete && i.naturalWidth > 0) \
           ? imgs.map((i) => i.dataset.name) : null;",
    );
    assert_eq!(figures, json!(["curves.svg"]));
    // The audit view: where each job ran, and the re-hash of every stored file.
    browser.click("#audit-box summary");
    let environments = browser.wait_for(
        "the audit view",
        Duration::from_secs(30),
        "const r = document.querySelectorAll('table.environments tbody tr'); return r.length ? r.length : null;",
    );
    assert_eq!(environments, json!(stored.len()), "one environment per job");
    browser.click("#verify-button");
    let verdict = browser.wait_for(
        "the re-hash",
        Duration::from_secs(60),
        "const p = document.querySelector('#verify p'); \
         return p && !p.textContent.includes('…') ? p.textContent : null;",
    );
    assert!(
        verdict.as_str().unwrap().starts_with("all "),
        "every stored file matches: {verdict}"
    );
    save(&browser, "experiment.png");

    // Markup in a stored name is text in the page, never run.
    let hostile = "<img src=x onerror=\"window.tandemInjected=1\">";
    let emit = lab.submit(
        "emit.json",
        json!({"name": "markup", "jobs": [
            {"name": hostile, "kind": "test.emit", "config": {"steps": 3, "points_per_step": 1, "step_ms": 10}}
        ]}),
    );
    lab.wait_state(&emit, "succeeded");
    browser.run("location.hash = '#/e/' + arguments[0];", json!([emit]));
    let shown_name = browser.wait_for(
        "the job row",
        Duration::from_secs(20),
        "const title = document.querySelector('#title'); \
         if (!title || title.textContent !== 'markup') return null; \
         const td = document.querySelector('table.jobs tbody td'); return td ? td.textContent : null;",
    );
    assert_eq!(shown_name, json!(hostile));
    assert_eq!(
        browser.run(
            "return [window.tandemInjected === undefined, document.querySelectorAll('main img').length];",
            json!([])
        ),
        json!([true, 0]),
        "the name was not parsed as HTML"
    );

    // Two experiments compared: the same manifest again (served from the cache) overlays its curves.
    let again = lab.tandem_ok(&["submit", manifest]).trim().to_string();
    lab.wait_state(&again, "succeeded");
    browser.run("location.hash = '#/';", json!([]));
    browser.wait_for(
        "both experiments listed",
        Duration::from_secs(20),
        "return document.querySelectorAll('#experiments tbody tr').length === 3;",
    );
    save(&browser, "experiments.png");
    for experiment in [&id, &again] {
        browser.click(&format!("input.pick[data-id=\"{experiment}\"]"));
    }
    browser.click("#compare");
    let overlaid = browser.wait_for(
        "the comparison",
        Duration::from_secs(30),
        "const p = document.querySelector('svg[data-series=\"Training loss\"]'); \
         return p ? p.querySelectorAll('polyline.curve').length : null;",
    );
    assert!(
        overlaid.as_u64().unwrap() >= 4,
        "stage 1 and the stage-2 mean of each experiment: {overlaid}"
    );
    save(&browser, "compare.png");

    browser.run("location.hash = '#/workers';", json!([]));
    let workers = browser.wait_for(
        "the workers",
        Duration::from_secs(20),
        "const r = document.querySelectorAll('#workers tbody tr'); return r.length ? r.length : null;",
    );
    assert_eq!(workers, json!(2));
    save(&browser, "workers.png");
}

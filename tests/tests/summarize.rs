//! End-to-end `tandem summarize`: SYNTHETIC multi-visit patients chained from 20 IU X-ray reports (`tandem data
//! chain`; IU X-ray has no patient ids, so the patients are made up), summarised through the tiny LLaMA's
//! stage-1 and two-stage adapters by two real workers, one job per patient; a second run comes from the cache.

use tandem_tests::{Lab, TINY_STAGE1_TRAINING, tiny_manifest};

#[test]
fn histories_are_summarised_one_job_per_patient_and_cached() {
    let lab = Lab::start();
    let _workers = [lab.worker("w0"), lab.worker("w1")];
    let dir = lab.dir.path();
    let manifest = dir.join("tiny.toml");
    std::fs::write(
        &manifest,
        tiny_manifest(
            "summaries",
            "none",
            TINY_STAGE1_TRAINING,
            r#""two-stage:stage2""#,
        ),
    )
    .unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let reports = repo.join("tests/fixtures/runners/iu-20.csv");
    let histories = dir.join("patients.csv");
    let chained = lab.tandem_ok(&[
        "data",
        "chain",
        reports.to_str().unwrap(),
        "--patients",
        "3",
        "--min-visits",
        "2",
        "--max-visits",
        "3",
        "--blank-impressions",
        "0.5",
        "--seed",
        "5",
        "-o",
        histories.to_str().unwrap(),
    ]);
    assert!(
        chained.starts_with("SYNTHETIC: 3 made-up patients"),
        "{chained}"
    );
    let rows = std::fs::read_to_string(&histories).unwrap();
    // (subject, visits, visits without an impression) as the CSV has them.
    let mut expected: Vec<(String, usize, usize)> = Vec::new();
    for line in rows.lines().skip(1) {
        let subject = line.split(',').next().unwrap().to_string();
        let blank = line.ends_with(",,true");
        match expected.iter_mut().find(|e| e.0 == subject) {
            Some(e) => {
                e.1 += 1;
                e.2 += usize::from(blank);
            }
            None => expected.push((subject, 1, usize::from(blank))),
        }
    }
    assert_eq!(expected.len(), 3, "{rows}");

    let out = dir.join("out");
    let run = || {
        let output = lab.tandem(&[
            "summarize",
            manifest.to_str().unwrap(),
            histories.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "summarize failed:\n{}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
        stderr
    };
    let first = run();
    let summaries = std::fs::read_to_string(out.join("summaries.jsonl")).unwrap();
    let chains: Vec<serde_json::Value> = summaries
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(chains.len(), 3, "{summaries}");
    for (subject, visits, blank) in &expected {
        let chain = chains
            .iter()
            .find(|c| c["subject_id"] == subject.as_str())
            .unwrap_or_else(|| panic!("no summary of {subject}"));
        let steps = chain["steps"].as_array().unwrap();
        assert_eq!(steps.len(), *visits, "{chain:#}");
        let generated = steps
            .iter()
            .filter(|s| s["impression_generated"] == true)
            .count();
        assert_eq!(generated, *blank, "{chain:#}");
        let dates: Vec<&str> = steps.iter().map(|s| s["date"].as_str().unwrap()).collect();
        assert!(dates.windows(2).all(|w| w[0] < w[1]), "{dates:?}");
        assert_eq!(chain["summary"], steps.last().unwrap()["summary"]);
    }
    let csv = std::fs::read_to_string(out.join("summaries.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");

    // The same histories again: every job (training included) is served from the cache, the summaries equal.
    let second = run();
    let counts = |text: &str| -> (u64, u64) {
        let line = text
            .lines()
            .find(|l| l.starts_with("submitted "))
            .unwrap_or_else(|| panic!("{text}"));
        let inner = line.split('(').nth(1).unwrap();
        let numbers: Vec<u64> = inner
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        (numbers[0], numbers[1])
    };
    let (jobs, cached) = counts(&second);
    assert_eq!(jobs, cached, "{second}\nfirst run:\n{first}");
    assert_eq!(
        std::fs::read_to_string(out.join("summaries.jsonl")).unwrap(),
        summaries
    );

    // A history with a bad date is refused before anything is queued, naming the line.
    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        "subject_id,study_id,date,findings,impression\nP1,S1,2021-02-30,Clear lungs.,Normal.\n",
    )
    .unwrap();
    let output = lab.tandem(&[
        "summarize",
        manifest.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.csv:2: date \"2021-02-30\""),
        "{stderr}"
    );
}

//! A real headless browser for the dashboard's tests: Debian's `chromium` driven through `chromedriver`'s W3C
//! WebDriver protocol (plain HTTP/1.1 with JSON bodies on loopback), installed by
//! `scripts/browser/ensure-chromium.sh` when missing. Only what the tests use: open a URL, find elements, type,
//! click, run a script, take a screenshot.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// A running `chromedriver` with one headless Chromium session; both end when this is dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

/// The W3C key under which an element reference travels.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Installs the browser when missing, starts `chromedriver` on a free port and opens a headless session
    /// with a `width` x `height` window.
    pub fn start(width: u32, height: u32) -> Browser {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let ensure = Command::new(repo.join("scripts/browser/ensure-chromium.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/browser/ensure-chromium.sh");
        assert!(
            ensure.status.success(),
            "the browser test needs chromium and chromium-driver (apt-get as root); \
             scripts/browser/ensure-chromium.sh failed"
        );
        let driver_path = String::from_utf8_lossy(&ensure.stdout).trim().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {driver_path}: {e}"));
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
        };
        let started = Instant::now();
        while browser.call("GET", "/status", None).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                format!("--window-size={width},{height}"),
            ]},
        }}});
        let reply = browser
            .call("POST", "/session", Some(capabilities))
            .unwrap_or_else(|e| panic!("opening a browser session: {e}"));
        browser.session = reply["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser
    }

    /// One WebDriver command: its `value`, or the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let (head, body) = read_reply(&mut stream)?;
        let reply: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        let status_ok = head.split(' ').nth(1) == Some("200");
        if status_ok {
            Ok(reply["value"].clone())
        } else {
            Err(reply["value"].to_string())
        }
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        self.call(method, &full, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns what it returns.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Waits until `script` returns something other than `null`/`false` and returns it.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.run(script, json!([]));
            if !value.is_null() && value != json!(false) {
                return value;
            }
            assert!(
                started.elapsed() < timeout,
                "waited {timeout:?} for {what} in the browser"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The element matching CSS `selector` (the first one).
    fn element(&self, selector: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": selector })),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector}: {found}"))
            .to_string()
    }

    /// Types `text` into the element matching `selector`, as a person at a keyboard would.
    pub fn type_into(&self, selector: &str, text: &str) {
        let id = self.element(selector);
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Clicks the element matching `selector`.
    pub fn click(&self, selector: &str) {
        let id = self.element(selector);
        self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// A PNG of the whole page as it is drawn now (the page is resized to its full height first).
    pub fn screenshot(&self, width: u32) -> Vec<u8> {
        let height = self
            .run(
                "return Math.ceil(document.documentElement.scrollHeight);",
                json!([]),
            )
            .as_u64()
            .unwrap_or(1000)
            .clamp(400, 6000);
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
        self.run("window.scrollTo(0, 0);", json!([]));
        let encoded = self.session_call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("a base64 screenshot"))
            .expect("valid base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One HTTP/1.1 reply: its header block and body. The driver may keep the connection open, so the body is read
/// by its `Content-Length` (or its chunks), not to the end of the stream.
fn read_reply(stream: &mut TcpStream) -> Result<(String, String), String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the driver closed the connection before replying".into());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut body = raw.split_off(head_end + 4);
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = lower.contains("transfer-encoding: chunked");
    loop {
        let complete = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok((head, if chunked { dechunk(&body) } else { body }))
}

/// The body of a chunked HTTP/1.1 reply.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

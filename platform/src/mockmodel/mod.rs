//! `karta mock-model`: a deterministic fake model server for offline runs and tests.
//!
//! It speaks the Anthropic Messages API (`POST /v1/messages`) and OpenAI Chat Completions
//! (`POST /v1/chat/completions`), streamed or not, answers from a JSON script (see [`script`]),
//! and logs every request: `GET /__requests` returns the log,
//! `POST /__script` replaces the script, `POST /__reset` clears the log and rewinds the script.
//! A harness-app author points `[providers.anthropic] base_url` at it to run an app offline.

pub mod anthropic;
pub mod openai;
pub mod script;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use script::{RequestShape, Script};

/// Server state: the script, the request log and a reply counter.
pub struct MockState {
    script: Mutex<Script>,
    log: Mutex<Vec<Value>>,
    log_file: Option<PathBuf>,
    counter: Mutex<u64>,
}

impl MockState {
    /// State with a script and an optional JSON-lines log file.
    pub fn new(script: Script, log_file: Option<PathBuf>) -> Self {
        Self {
            script: Mutex::new(script),
            log: Mutex::new(Vec::new()),
            log_file,
            counter: Mutex::new(0),
        }
    }

    fn record(&self, req: &HttpRequest, body: &Value) {
        let headers: serde_json::Map<String, Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
            .collect();
        let entry = json!({
            "method": req.method().as_str(),
            "path": req.uri().to_string(),
            "headers": headers,
            "body": body,
        });
        if let Some(f) = &self.log_file {
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
            {
                let _ = writeln!(file, "{entry}");
            }
        }
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
    }

    fn next_n(&self) -> u64 {
        let mut c = self.counter.lock().unwrap_or_else(|p| p.into_inner());
        *c += 1;
        *c
    }
}

fn json_body(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// A reply chosen for a request: the step, its number, the model asked for, the usage to report.
struct Pick {
    step: script::Step,
    n: u64,
    model: String,
    usage: script::ScriptedUsage,
}

/// Logs the request, picks its step, waits its delay; a scripted error is answered right away
/// with `error_body`'s shape.
async fn pick(
    state: &MockState,
    req: &HttpRequest,
    body: &Value,
    last_user_text: &str,
    assistant_messages: usize,
    error_body: fn(u16, &str) -> Value,
) -> Result<Pick, HttpResponse> {
    state.record(req, body);
    let step = state
        .script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .select(&RequestShape {
            last_user_text,
            has_tools: body["tools"].as_array().is_some_and(|t| !t.is_empty()),
            assistant_messages,
        });
    if let Some(ms) = step.delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(err) = &step.error {
        let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(HttpResponse::build(status).json(error_body(err.status, &err.message)));
    }
    Ok(Pick {
        n: state.next_n(),
        model: body["model"].as_str().unwrap_or("fake-model").to_string(),
        usage: step.usage.unwrap_or_default(),
        step,
    })
}

async fn messages(state: web::Data<MockState>, req: HttpRequest, bytes: Bytes) -> HttpResponse {
    let body = json_body(&bytes);
    let last = anthropic::last_user_text(&body);
    let assistants = anthropic::assistant_messages(&body);
    let Pick {
        step,
        n,
        model,
        usage,
    } = match pick(
        &state,
        &req,
        &body,
        &last,
        assistants,
        anthropic::error_body,
    )
    .await
    {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let blocks = anthropic::blocks(&step, n);
    if body["stream"] != json!(true) {
        return HttpResponse::Ok().json(anthropic::message(&model, n, blocks, &usage));
    }
    let events = anthropic::stream_events(&model, n, blocks, &usage);
    let gap = Duration::from_millis(step.chunk_delay.unwrap_or(0));
    let stream = futures_util::stream::unfold(events.into_iter(), move |mut it| async move {
        let (name, data) = it.next()?;
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let frame = Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
        Some((Ok::<_, actix_web::Error>(frame), it))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream)
}

async fn chat_completions(
    state: web::Data<MockState>,
    req: HttpRequest,
    bytes: Bytes,
) -> HttpResponse {
    let body = json_body(&bytes);
    state.record(&req, &body);
    let last = openai::last_user_text(&body);
    let step = state
        .script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .select(&RequestShape {
            last_user_text: &last,
            has_tools: body["tools"].as_array().is_some_and(|t| !t.is_empty()),
            assistant_messages: openai::assistant_messages(&body),
        });
    if let Some(ms) = step.delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(err) = &step.error {
        let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return HttpResponse::build(status).json(openai::error_body(err.status, &err.message));
    }
    let n = state.next_n();
    let model = body["model"].as_str().unwrap_or("fake-model").to_string();
    let usage = step.usage.unwrap_or_default();
    if body["stream"] != json!(true) {
        return HttpResponse::Ok().json(openai::completion(&model, n, &step, &usage));
    }
    let chunks = openai::stream_chunks(&model, n, &step, &usage);
    let gap = Duration::from_millis(step.chunk_delay.unwrap_or(0));
    let stream = futures_util::stream::unfold(chunks.into_iter(), move |mut it| async move {
        let data = it.next()?;
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        Some((
            Ok::<_, actix_web::Error>(Bytes::from(format!("data: {data}\n\n"))),
            it,
        ))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream)
}

async fn count_tokens(state: web::Data<MockState>, req: HttpRequest, bytes: Bytes) -> HttpResponse {
    let body = json_body(&bytes);
    state.record(&req, &body);
    HttpResponse::Ok().json(json!({"input_tokens": 100}))
}

async fn models(state: web::Data<MockState>, req: HttpRequest) -> HttpResponse {
    state.record(&req, &Value::Null);
    // One shape that satisfies both APIs' model listings.
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": [{"type": "model", "object": "model", "id": "fake-model", "display_name": "Fake Model",
                  "created_at": "2026-01-01T00:00:00Z", "created": 1_767_225_600, "owned_by": "karta"}],
        "has_more": false, "first_id": "fake-model", "last_id": "fake-model",
    }))
}

async fn requests(state: web::Data<MockState>) -> HttpResponse {
    let log = state.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    HttpResponse::Ok().json(log)
}

async fn set_script(state: web::Data<MockState>, bytes: Bytes) -> HttpResponse {
    match Script::parse(&String::from_utf8_lossy(&bytes)) {
        Ok(s) => {
            *state.script.lock().unwrap_or_else(|p| p.into_inner()) = s;
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        Err(e) => HttpResponse::UnprocessableEntity().json(json!({"detail": e})),
    }
}

async fn reset(state: web::Data<MockState>) -> HttpResponse {
    state.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    state
        .script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .rewind();
    HttpResponse::Ok().json(json!({"ok": true}))
}

async fn unknown(state: web::Data<MockState>, req: HttpRequest, bytes: Bytes) -> HttpResponse {
    state.record(&req, &json_body(&bytes));
    if req.method() == actix_web::http::Method::HEAD {
        return HttpResponse::Ok().finish();
    }
    HttpResponse::NotFound().json(anthropic::error_body(
        404,
        &format!("no route {}", req.uri()),
    ))
}

/// Serves the fake model on `listener` until the process stops.
pub async fn serve(listener: TcpListener, state: MockState) -> std::io::Result<()> {
    let data = web::Data::new(state);
    HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(32 << 20))
            .route("/v1/messages", web::post().to(messages))
            .route("/v1/messages/count_tokens", web::post().to(count_tokens))
            .route("/v1/chat/completions", web::post().to(chat_completions))
            .route("/v1/models", web::get().to(models))
            .route("/__requests", web::get().to(requests))
            .route("/__script", web::post().to(set_script))
            .route("/__reset", web::post().to(reset))
            .default_service(web::to(unknown))
    })
    .workers(1)
    .listen(listener)?
    .run()
    .await
}

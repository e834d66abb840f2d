//! The client-side file system an ACP agent may use (`fs/read_text_file`,
//! `fs/write_text_file`), served inside the session's workspace only.
//!
//! The agent runs as the tenant and may have planted links in its workspace; the driver runs as
//! the host. Every path is resolved by the kernel beneath the workspace without following any
//! link (`tenant_fs::open_beneath`), so nothing outside the workspace can be read or written.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use karta_driver_kit::sandbox::tenant_fs::{open_beneath, Owner};
use serde_json::{json, Value};

/// The largest file an agent may read or write through its client, in bytes.
pub const MAX_FILE: u64 = 8 << 20;

/// A JSON-RPC error: invalid params.
const INVALID_PARAMS: i64 = -32602;
/// ACP's "resource not found".
const NOT_FOUND: i64 = -32002;

/// The workspace-relative form of `path` (absolute, as ACP sends it, or relative), or why not.
fn inside(workspace: &Path, path: &str) -> Result<PathBuf, (i64, String)> {
    let p = Path::new(path);
    let rel = if p.is_absolute() {
        p.strip_prefix(workspace).map_err(|_| {
            (
                INVALID_PARAMS,
                format!("{path} is outside the session workspace"),
            )
        })?
    } else {
        p
    };
    if rel.as_os_str().is_empty() {
        return Err((INVALID_PARAMS, format!("{path} names no file")));
    }
    Ok(rel.to_path_buf())
}

/// Serves one file-system request; `Err` is a JSON-RPC error (code, message).
pub fn serve(
    method: &str,
    params: &Value,
    workspace: &Path,
    owner: Option<Owner>,
) -> Result<Value, (i64, String)> {
    let path = params["path"]
        .as_str()
        .ok_or((INVALID_PARAMS, "`path` is required".to_string()))?;
    let rel = inside(workspace, path)?;
    let io_err = |e: std::io::Error| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            NOT_FOUND
        } else {
            INVALID_PARAMS
        };
        (code, format!("{path}: {e}"))
    };
    match method {
        "fs/read_text_file" => {
            let f = open_beneath(workspace, &rel, false, owner).map_err(io_err)?;
            let mut text = String::new();
            f.take(MAX_FILE + 1)
                .read_to_string(&mut text)
                .map_err(io_err)?;
            if text.len() as u64 > MAX_FILE {
                return Err((
                    INVALID_PARAMS,
                    format!("{path} is larger than {MAX_FILE} bytes"),
                ));
            }
            let first = params["line"].as_u64().unwrap_or(1).max(1) as usize;
            let limit = params["limit"].as_u64().map(|n| n as usize);
            let content = if first == 1 && limit.is_none() {
                text
            } else {
                let lines = text.lines().skip(first - 1);
                let picked: Vec<&str> = match limit {
                    Some(n) => lines.take(n).collect(),
                    None => lines.collect(),
                };
                picked.join("\n")
            };
            Ok(json!({ "content": content }))
        }
        "fs/write_text_file" => {
            let content = params["content"]
                .as_str()
                .ok_or((INVALID_PARAMS, "`content` is required".to_string()))?;
            if content.len() as u64 > MAX_FILE {
                return Err((INVALID_PARAMS, format!("more than {MAX_FILE} bytes")));
            }
            let mut f = open_beneath(workspace, &rel, true, owner).map_err(io_err)?;
            f.write_all(content.as_bytes()).map_err(io_err)?;
            Ok(Value::Null)
        }
        other => Err((-32601, format!("{other} is not offered"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_stay_in_the_workspace() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(d.path().join("secret"), "host").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), ws.join("link")).unwrap();
        let abs = |p: &str| ws.join(p).display().to_string();

        serve(
            "fs/write_text_file",
            &json!({"path": abs("a/b.txt"), "content": "1\n2\n3"}),
            &ws,
            None,
        )
        .unwrap();
        let r = serve(
            "fs/read_text_file",
            &json!({"path": abs("a/b.txt"), "line": 2, "limit": 1}),
            &ws,
            None,
        )
        .unwrap();
        assert_eq!(r["content"], "2");
        assert_eq!(
            serve("fs/read_text_file", &json!({"path": "a/b.txt"}), &ws, None).unwrap()["content"],
            "1\n2\n3"
        );
        for bad in [
            json!({"path": abs("link")}),
            json!({"path": d.path().join("secret").display().to_string()}),
            json!({"path": abs("../secret")}),
            json!({"path": "/etc/passwd"}),
        ] {
            assert!(
                serve("fs/read_text_file", &bad, &ws, None).is_err(),
                "{bad}"
            );
            let mut w = bad.clone();
            w["content"] = json!("x");
            assert!(serve("fs/write_text_file", &w, &ws, None).is_err(), "{bad}");
        }
        assert_eq!(
            std::fs::read_to_string(d.path().join("secret")).unwrap(),
            "host"
        );
        let missing = serve(
            "fs/read_text_file",
            &json!({"path": abs("nope")}),
            &ws,
            None,
        );
        assert_eq!(missing.unwrap_err().0, NOT_FOUND);
    }
}

//! Gemini CLI (npm `@google/gemini-cli`) under `gemini-cli`, driven through the Gemini API
//! (`tests/support/model_gemini.py`).

use super::*;

fn run() -> Result<AgentRun, String> {
    let gemini = installed("gemini-cli", "node_modules/.bin/gemini")?;
    let w = World::new(2);
    // Its read_file tool runs in the agent's own (node) process.
    let (steps, script) = hooked_script(
        &w,
        |key| serde_json::json!({ "tool": "read_file", "input": { "file_path": key } }),
    );
    let model = ModelServer::start(&w.root, &script);
    // API-key auth against the base URL below (0.61 takes the URL from the environment
    // but needs the auth type from settings), no folder-trust prompt (it would turn yolo
    // off), and nothing that calls out: usage statistics, telemetry, auto-update, IDE.
    let settings = w.home.join(".gemini");
    fs::create_dir_all(&settings).unwrap();
    fs::write(
        settings.join("settings.json"),
        serde_json::json!({
            "security": {
                "auth": { "selectedType": "gemini-api-key" },
                "folderTrust": { "enabled": false },
            },
            "general": { "enableAutoUpdate": false, "enableAutoUpdateNotification": false },
            "privacy": { "usageStatisticsEnabled": false },
            "telemetry": { "enabled": false },
            "ide": { "enabled": false },
            "tools": { "sandbox": false },
            "model": { "disableLoopDetection": true },
        })
        .to_string(),
    )
    .unwrap();
    w.user.chown(&settings);
    let out = w
        .run("gemini-cli", "gemini-e2e")
        .env(
            "GOOGLE_GEMINI_BASE_URL",
            format!("http://127.0.0.1:{}", model.port),
        )
        .env("GEMINI_API_KEY", "sk-test")
        .arg(gemini)
        .args(["-p", "run the scripted commands", "--approval-mode", "yolo"])
        // Its own workspace check would refuse the key's path before opening it: the
        // directory is let in, as a user widening the workspace would, so that the
        // kernel is what refuses the read.
        .arg("--include-directories")
        .arg(w.key.parent().unwrap())
        .output_within();
    Ok(AgentRun::collect_model(
        w,
        "gemini-cli",
        "gemini-e2e",
        steps,
        out,
        &model,
    ))
}

agent_claims!("Gemini CLI", run);

/// Gemini CLI prints the model's final answer, and its own read of the key (read_file)
/// came back to the model as a tool error naming the refusal.
#[test]
fn it_reports_the_final_answer_and_its_own_read_failed_on_the_refusal() {
    let Some(r) = the_run() else { return };
    assert_eq!(r.stdout.trim(), "done", "{}\n{}", r.stdout, r.stderr);
    let (is_error, own) = r.result(Step::OwnReadKey);
    assert!(*is_error, "{own}");
    assert!(
        own.contains("EPERM") || own.contains("not permitted"),
        "{own}"
    );
}

/// Gemini CLI loads the project's `.env` at start-up: refused, and it went on to do the work.
#[test]
fn its_start_up_load_of_the_project_env_is_refused() {
    let Some(r) = the_run() else { return };
    claims::own_env_load_is_refused(r);
}

hook_claims!();

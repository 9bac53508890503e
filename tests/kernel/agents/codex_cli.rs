//! Codex CLI (npm `@openai/codex`) under `codex-cli`, driven through the OpenAI Responses
//! API (`tests/support/model_openai_responses.py`).

use super::*;

fn run() -> Result<AgentRun, String> {
    let codex = installed("codex-cli", "node_modules/.bin/codex")?;
    let w = World::new(1);
    // Codex has no file-read tool; view_image reads a file in its own process.
    let (steps, script) = hooked_script(
        &w,
        |key| serde_json::json!({ "tool": "view_image", "input": { "path": key } }),
    );
    let model = ModelServer::start(&w.root, &script);
    // A provider of its own on loopback; nothing that calls out (update check,
    // analytics, feedback, OpenTelemetry, the plugin catalog it fetches with git).
    let home_codex = w.home.join(".codex");
    fs::create_dir_all(&home_codex).unwrap();
    fs::write(
        home_codex.join("config.toml"),
        format!(
            "model = \"gpt-scripted\"\nmodel_provider = \"scripted\"\n\
             approval_policy = \"never\"\nsandbox_mode = \"danger-full-access\"\n\
             check_for_update_on_startup = false\n\
             [model_providers.scripted]\nname = \"scripted\"\n\
             base_url = \"http://127.0.0.1:{}/v1\"\nwire_api = \"responses\"\n\
             env_key = \"SCRIPTED_API_KEY\"\n\
             [analytics]\nenabled = false\n[feedback]\nenabled = false\n\
             [otel]\nexporter = \"none\"\n\
             [features]\nplugins = false\nremote_plugin = false\nplugin_sharing = false\n\
             apps = false\n",
            model.port
        ),
    )
    .unwrap();
    w.user.chown(&home_codex);
    let out = w
        .run("codex-cli", "codex-e2e")
        .env("SCRIPTED_API_KEY", "sk-test")
        .arg(codex)
        .args(["exec", "--dangerously-bypass-approvals-and-sandbox"])
        .args(["--skip-git-repo-check", "--color", "never"])
        .arg("run the scripted commands")
        .output_within();
    Ok(AgentRun::collect_model(
        w,
        "codex-cli",
        "codex-e2e",
        steps,
        out,
        &model,
    ))
}

agent_claims!("Codex CLI", run);

/// Codex prints the model's final answer, and its own read of the key (view_image)
/// failed with the refusal's errno, not with the key's content.
#[test]
fn it_reports_the_final_answer_and_its_own_read_failed_on_the_refusal() {
    let Some(r) = the_run() else { return };
    assert_eq!(r.stdout.trim(), "done", "{}\n{}", r.stdout, r.stderr);
    let own = &r.result(Step::OwnReadKey).1;
    assert!(own.contains("Operation not permitted"), "{own}");
}

hook_claims!();

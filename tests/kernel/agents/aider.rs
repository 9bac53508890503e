//! aider (PyPI `aider-chat`) under `aider`, driven through an OpenAI-compatible chat API
//! (`tests/support/model_openai_chat.py`). aider has no tool calls: the scripted model
//! proposes each command in a fenced block, and aider asks before running it and before
//! adding its output to the chat, so its answers come from stdin (`y` lines, the way a
//! user at the terminal says yes; `--yes-always` answers no to running commands).

use super::*;

fn run() -> Result<AgentRun, String> {
    let aider = installed("aider", "bin/aider")?;
    let w = World::new(3);
    // An edit of the key that cannot match: aider reads the file in its own process to
    // apply it.
    let (steps, script) = standard_script(
        &w,
        |key| serde_json::json!({ "tool": "read", "input": { "path": key } }),
    );
    let model = ModelServer::start(&w.root, &script);
    // The scripted model's limits and price, so that aider does not fetch litellm's
    // model list from GitHub.
    let metadata = w.home.join("scripted.model.metadata.json");
    fs::write(
        &metadata,
        serde_json::json!({ "openai/scripted": {
            "max_input_tokens": 128000, "max_output_tokens": 8192, "max_tokens": 8192,
            "input_cost_per_token": 0, "output_cost_per_token": 0,
            "litellm_provider": "openai", "mode": "chat",
        }})
        .to_string(),
    )
    .unwrap();
    // Three answers per command (message, run, add the output), two per edit, and one
    // to spare: end of input at the chat prompt ends aider normally.
    let answers = w.root.join("answers.txt");
    fs::write(&answers, "y\n".repeat(3 * steps.len() + 1)).unwrap();
    let out = w
        .run("aider", "aider-e2e")
        .env(
            "OPENAI_API_BASE",
            format!("http://127.0.0.1:{}/v1", model.port),
        )
        .env("OPENAI_API_KEY", "sk-test")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .arg(aider)
        .args(["--model", "openai/scripted", "--model-metadata-file"])
        .arg(&metadata)
        .args(["--edit-format", "diff", "--no-git", "--no-gitignore"])
        .args(["--no-auto-commits", "--no-check-update", "--no-analytics"])
        .args(["--no-show-release-notes", "--no-show-model-warnings"])
        .args(["--no-pretty", "--no-fancy-input", "--map-tokens", "0"])
        .args(["--no-auto-lint", "--no-detect-urls", "--no-notifications"])
        .stdin(fs::File::open(&answers).unwrap())
        .output_within();
    Ok(AgentRun::collect_model(
        w,
        "aider",
        "aider-e2e",
        steps,
        out,
        &model,
    ))
}

agent_claims!("aider", run);

/// aider's own read of the key failed on the refusal: it reported the errno on its
/// terminal, dropped the file from the chat and sent the model nothing of it (aider
/// tells the model only that it "updated the files").
#[test]
fn its_own_read_failed_on_the_refusal() {
    let Some(r) = the_run() else { return };
    // Its terminal output is wrapped at 80 columns.
    let said = r.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        said.contains("id_rsa: unable to read: [Errno 1] Operation not permitted"),
        "{}",
        r.stdout
    );
    let (is_error, own) = r.result(Step::OwnReadKey);
    assert!(*is_error && !own.contains("CANARY"), "{own}");
}

/// aider loads the project's `.env` at start-up: refused, and it went on to do the work.
#[test]
fn its_start_up_load_of_the_project_env_is_refused() {
    let Some(r) = the_run() else { return };
    claims::own_env_load_is_refused(r);
}

/// Without hooks, each command it ran is an inferred invocation named by its command
/// line, with the command's actions under it.
#[test]
fn its_commands_are_inferred_invocations() {
    let Some(r) = the_run() else { return };
    claims::inferred_invocations_name_their_commands(r);
}

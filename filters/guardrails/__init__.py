"""The seven guardrails (type `guardrail`): word-filter, max-token, pii-redact, secret-scan,
prompt-shield, schema-guard and regex-guard.

`base` holds what they share: the `action` / `apply_to` options, acting on findings (block,
redact, warn, log), hit reporting; `text` pulls the screenable text out of request and reply
bodies and rewrites it; `stream` screens streamed output with a small look-behind window.
"""

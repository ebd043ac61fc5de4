"""The router's parts, one job per module: strategies (target order), conditions (rule
matching), retry (backoff), breaker (circuit breakers), limits (per-target concurrency),
latency (rolling latency estimates) and state (what survives config reloads)."""

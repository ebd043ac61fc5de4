"""Kubernetes integration: the sidecar injector (mutating admission webhook)."""

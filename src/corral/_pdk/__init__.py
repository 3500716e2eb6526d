"""The plugin development kit: validate, lint, SARIF, docs and scaffolding."""

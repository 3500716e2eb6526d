"""The strict sandbox: kernel confinement, the fork server, RPC and the broker."""

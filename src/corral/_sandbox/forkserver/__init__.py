"""The fork server that forks every worker (:mod:`.server`), the shared per-home daemon
that forks fork servers (:mod:`.daemon`), and the host's client of either (:mod:`.client`).
"""

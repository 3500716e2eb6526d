"""The worker runtime: code that runs inside a sandboxed worker process.

The fork server forks a spare that runs :func:`.start.spare` (session,
no_new_privs, no capabilities but, in strict, those of its own namespaces, warm
caches) and waits for its assignment; then :func:`.start.enter` confines it to
one plugin (:mod:`.confine`: rlimits, environment, descriptors, cwd, then for
``strict`` its writable directories mounted ``noexec``, Landlock, no
capabilities and two seccomp layers), says :class:`~corral._sandbox.rpc.Hello` and serves
calls (:mod:`.serve`) until the host stops it, over its end of the RPC socket
(:mod:`.channel`); plugin code sees the host through ``ctx`` (:mod:`.context`).
Nothing here trusts the plugin: the host checks everything the worker says again.
"""

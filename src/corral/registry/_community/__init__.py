"""The registry's community: user accounts, sessions, reviews, discussions, moderation.

The web pages and the JSON API (:mod:`.api`) call one facade,
``Community`` (:mod:`.service`); ``create_app`` builds it and leaves it at
``app.state.community``.  ``User`` (:mod:`.users`) is who acts; ``Session``
(:mod:`.sessions`) a new sign-in; errors are the registry's (``Unauthenticated``
401, ``PermissionDenied`` 403, ``NotFoundError`` 404, ``UsageError`` 400,
``RateLimited`` 429 with ``retry_after`` seconds).

Accounts and sessions::

    signup(name, password, *, client="") -> User
    sign_in(name, password, *, client="", old_session=None) -> Session
        # Session.id (cookie value), .csrf_token, .expires_at; ends old_session (no fixation)
    create_session(user, *, old_session=None) -> Session   # e.g. right after signup
    sign_out(session_id) -> None
    session_user(session_id) -> User             # raises Unauthenticated
    rotate(session_id) -> Session
    csrf_token(session_id) -> str
    check_csrf(session_id, token) -> bool
    authenticate(bearer) -> User                 # "cru_..." token or "crs_..." session
    user(name) -> User                           # User.public() for pages
    link_publisher(user, publisher_token) -> User
    create_token(user, *, description="", expires_days=90) -> dict  # {"token", "token_id", ...}
    list_tokens(user) -> list[dict]
    revoke_token(user, token_id) -> None

Installs and reviews::

    record_install(user, plugin_id, version=None) -> dict
    has_installed(user, plugin_id) -> bool
    reviews(plugin_id, *, limit=50, offset=0) -> dict
        # {"id", "total", "bayes_rating", "distribution": {"1".."5": n}, "reviews": [...]}
    review(review_id) -> dict
    my_review(user, plugin_id) -> dict | None
    post_review(user, plugin_id, stars, body) -> tuple[dict, bool]   # (review, created)
    delete_review(user, review_id) -> None
    reply_to_review(user, review_id, body) -> dict
    rating_prior() -> dict                       # {"mean", "weight", "rated_plugins"}

Discussions::

    threads(plugin_id, *, limit=50, offset=0) -> dict   # {"id", "total", "threads": [...]}
    thread(thread_id) -> dict                            # with "posts": [{"is_publisher", ...}]
    create_thread(user, plugin_id, title, body) -> dict
    post(user, thread_id, body) -> dict
    accept_answer(user, thread_id, post_id | None) -> dict
    close_thread(user, thread_id, closed=True) -> dict

Flags and moderation::

    flag(user, kind, target, reason, note="") -> dict
        # kind: review|reply|thread|post|plugin; reason: spam|abuse|malware|other
    moderator_of(user) -> Moderator              # raises unless user.is_admin
    moderator(bearer) -> Moderator               # admin user, or publisher token with "admin"
    moderation_queue(moderator, *, limit=100) -> list[dict]   # malware first, then score
    moderate(moderator, action, kind, target, reason="") -> dict
        # action: hide|delete|restore (content), close|reopen (plugin),
        #         quarantine|release (version "id@version"), ban|unban (user),
        #         moderator|unmoderator (user; the admin token or CLI only)
    reverse(moderator, action_id, reason="") -> dict
    moderation_log(moderator, *, kind=None, target=None, limit=100, offset=0) -> list[dict]

The tables are in the registry's schema (``_db``, migration 5).  Modules: :mod:`.text`
(input checks), :mod:`.limits`
(rate limits), :mod:`.users`, :mod:`.sessions`, :mod:`.tokens`, :mod:`.plugins`,
:mod:`.installs`, :mod:`.ratings` (Bayesian average), :mod:`.reviews`,
:mod:`.threads`, :mod:`.targets`, :mod:`.flags`, :mod:`.moderation`,
:mod:`.service` (the facade), :mod:`.api` (routes).
"""

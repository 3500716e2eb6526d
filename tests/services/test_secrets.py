"""Secrets: encryption at rest, grants, config references, and no value ever printed."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral._errors import (
    CorralError,
    NotFoundError,
    PermissionDenied,
    UnavailableError,
    UsageError,
)
from corral._model.permissions import Permissions
from corral._services.config import ConfigManager
from corral._services.secrets import SecretRedactor, SecretStore, secrets_broker_op

VALUE = "s3cr3t-VALUE-9f8e7d"


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    return SecretStore(tmp_path, use_keyring=False)


def test_encrypted_at_rest_with_a_private_key_file(store: SecretStore, tmp_path: Path) -> None:
    store.set("github-token", VALUE)
    assert store.get("github-token") == VALUE
    assert VALUE not in (tmp_path / "secrets.json").read_text()
    key = tmp_path / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
    # a second store on the same home reads it back
    assert SecretStore(tmp_path, use_keyring=False).get("github-token") == VALUE
    assert store.names() == ["github-token"]
    assert store.remove("github-token") is True
    assert store.remove("github-token") is False
    with pytest.raises(NotFoundError, match="github-token"):
        store.get("github-token")


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    SecretStore(tmp_path, use_keyring=False).set("a", VALUE)
    os.chmod(tmp_path / "secret.key", 0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        SecretStore(tmp_path, use_keyring=False).get("a")


def test_a_wrong_key_says_so_without_the_value(tmp_path: Path) -> None:
    SecretStore(tmp_path, use_keyring=False).set("a", VALUE)
    (tmp_path / "secret.key").unlink()
    with pytest.raises(CorralError, match="cannot be decrypted") as info:
        SecretStore(tmp_path, use_keyring=False).get("a")
    assert VALUE not in str(info.value.to_dict())


def test_keyring_absent_or_unusable_falls_back_cleanly(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)  # use_keyring=None: tries keyring, if any
    store.set("a", VALUE)
    assert store.get("a") == VALUE
    if store.key_source == "keyring":
        assert not (tmp_path / "secret.key").exists()
    else:  # no usable keyring here: the private key file, and only that
        assert store.key_source == str(tmp_path / "secret.key")
        assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


def test_grants(store: SecretStore) -> None:
    store.set("github-token", VALUE)
    store.set("other", "x" * 10)
    perms = Permissions(host_api=("secrets:github-token",))
    ctx = store.for_plugin("acme.git", perms)
    assert ctx.get("github-token") == VALUE
    with pytest.raises(PermissionDenied) as info:
        ctx.get("other")
    assert info.value.permission == "host-api:secrets:other"
    # denied before looking: no oracle for which names exist
    with pytest.raises(PermissionDenied):
        ctx.get("missing")
    assert secrets_broker_op(store, "acme.git", perms, "secrets.get",
                             {"name": "github-token"}) == VALUE
    assert VALUE not in repr(ctx)


@pytest.mark.parametrize("name", ["", "a b", "a/b", "x" * 200, 5])
def test_malformed_names(store: SecretStore, name: Any) -> None:
    with pytest.raises(UsageError, match="malformed secret name"):
        store.set(name, VALUE)


def test_bad_values(store: SecretStore) -> None:
    with pytest.raises(UsageError, match="must be a string"):
        store.set("a", 5)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="empty"):
        store.set("a", "")


def test_config_references_resolve_only_with_the_grant(store: SecretStore,
                                                       tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[plugins."acme.git"]\ntoken = "${secret:github-token}"\nmissing = "${secret:nope}"\n')
    store.set("github-token", VALUE)
    config = ConfigManager(tmp_path, environ={}).effective("acme.git")
    assert config["token"] == "${secret:github-token}"
    granted = Permissions(host_api=("secrets:github-token", "secrets:nope"))
    with pytest.raises(NotFoundError, match=r"config key missing of acme\.git refers to secret "
                                            "'nope'"):
        store.resolve_config(config, perms=granted, plugin_id="acme.git")
    del config["missing"]
    assert store.resolve_config(config, perms=granted, plugin_id="acme.git") == {
        "token": VALUE}
    with pytest.raises(PermissionDenied):
        store.resolve_config(config, perms=Permissions(), plugin_id="acme.git")


def test_redactor_scrubs_logs(store: SecretStore, caplog: pytest.LogCaptureFixture) -> None:
    store.set("github-token", VALUE)
    log = logging.getLogger("corral.plugin.acme.leaky")
    redactor = SecretRedactor(store)
    log.addFilter(redactor)
    try:
        with caplog.at_level(logging.INFO):
            log.info("token is %s", VALUE)
    finally:
        log.removeFilter(redactor)
    assert "token is ***" in caplog.text
    assert VALUE not in caplog.text


def cli(home: Path, *args: str, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", "--home", str(home), *args],
        input=stdin if stdin is not None else "", capture_output=True, text=True, timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_cli_never_prints_a_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outputs: list[str] = []

    def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        proc = cli(tmp_path, *args, **kw)
        outputs.extend([proc.stdout, proc.stderr])
        return proc

    with caplog.at_level(logging.DEBUG):
        assert run("secret", "set", "github-token", stdin=VALUE + "\n").returncode == 0
        assert run("secret", "set", "from-env", "--from-env", "MY_VAR", "--json",
                   env={"MY_VAR": VALUE}).returncode == 0
        listed = run("secret", "list", "--json")
        assert [s["name"] for s in json.loads(listed.stdout)["secrets"]] == [
            "from-env", "github-token"]
        assert run("secret", "list").stdout.split() == ["from-env", "github-token"]
        (tmp_path / "config.toml").write_text(
            '[plugins."acme.git"]\ntoken = "${secret:github-token}"\n')
        shown = run("config", "show", "--json")
        assert json.loads(shown.stdout)["plugins"]["acme.git"]["secrets"] == {
            "token": "github-token"}
        run("config", "show")
        run("config", "get", "acme.git", "token", "--json")
        missing = run("secret", "rm", "nope", "--json")
        assert missing.returncode == 1
        assert json.loads(missing.stdout)["error"]["code"] == "not_found"
        assert run("secret", "set", "bad name", stdin=VALUE).returncode == 2
        assert run("secret", "rm", "from-env").returncode == 0
        assert SecretStore(tmp_path).get("github-token") == VALUE
        # errors on the way to a plugin carry the name only
        try:
            SecretStore(tmp_path).get("github-token", perms=Permissions(), plugin_id="x")
        except PermissionDenied as exc:
            outputs.append(json.dumps(exc.to_dict()))
    outputs.append(caplog.text)
    outputs.append((tmp_path / "secrets.json").read_text())
    outputs.append((tmp_path / "config.toml").read_text())
    assert all(VALUE not in text for text in outputs)


LEAKY_CODE = '''
def leak(value, ctx):
    token = ctx.secrets.get("token")
    ctx.log.warning("calling upstream with %s", token)
    raise RuntimeError(f"upstream refused token {token}")
'''


@pytest.mark.parametrize("isolation", ["none", "limited"])
def test_corral_call_scrubs_a_secret_from_the_plugin_log_and_its_error(
    tmp_path: Path, isolation: str
) -> None:
    # The product's own path: `corral call` attaches the redactor, nothing in
    # the test does. The plugin logs its secret and quotes it in its error.
    from helpers.plugins import make_plugin

    home = tmp_path / "home"
    src = make_plugin(tmp_path, "acme.leaky", files={"acme_leaky.py": LEAKY_CODE},
                      exports={"leak": "acme_leaky:leak"}, isolation=isolation,
                      permissions={"host-api": ["secrets:token"]})
    assert cli(home, "secret", "set", "token", stdin=VALUE + "\n").returncode == 0
    for verb in (["add", str(src)], ["enable", "acme.leaky"]):
        done = cli(home, *verb)
        assert done.returncode == 0, done.stderr
    for extra in ([], ["--json"]):
        called = cli(home, "call", "acme.leaky", "leak", *extra)
        assert called.returncode == 5, called.stderr
        assert VALUE not in called.stdout + called.stderr
        shown = json.loads(called.stdout)["error"]["message"] if extra else called.stderr
        assert "upstream refused token ***" in shown
    assert "calling upstream with ***" in called.stderr


# -- the OS keyring -----------------------------------------------------------------------

import keyring  # noqa: E402
import keyring.backends.null  # noqa: E402
from keyring.backend import KeyringBackend  # noqa: E402

#: Chosen now, before the backends below exist: keyring picks the best-ranked subclass of
#: KeyringBackend ever defined when first asked, and must not pick a test's stand-in.
_ENVIRONMENT_KEYRING = keyring.get_keyring()


class _MemoryKeyring(KeyringBackend):
    """A keyring backend kept in memory, standing in for the desktop's keyring service."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.kept: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.kept.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.kept[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.kept[(service, username)]


class _UnusableKeyring(_MemoryKeyring):
    priority = 0  # type: ignore[assignment]  # says of itself that it should not be used


class _PlaintextKeyring(_MemoryKeyring):
    __module__ = "keyrings.alt.file"  # keyrings.alt keeps passwords in a file: no better


@pytest.fixture
def use_keyring(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("CORRAL_SECRETS_KEYRING", raising=False)

    def use(backend: Any) -> Any:
        keyring.set_keyring(backend)
        return backend

    yield use
    keyring.set_keyring(_ENVIRONMENT_KEYRING)


def test_a_usable_keyring_keeps_the_key_and_no_key_file_is_written(
    tmp_path: Path, use_keyring: Any
) -> None:
    ring = use_keyring(_MemoryKeyring())
    store = SecretStore(tmp_path)
    store.set("a", VALUE)
    assert store.key_source == "keyring"
    assert not (tmp_path / "secret.key").exists()
    assert list(ring.kept) == [("corral", f"secrets-key:{tmp_path}")]
    # a second store finds the same key there and reads the value back
    again = SecretStore(tmp_path)
    assert again.get("a") == VALUE
    assert again.key_source == "keyring"
    assert len(ring.kept) == 1


@pytest.mark.parametrize("backend", [keyring.backends.null.Keyring, _UnusableKeyring,
                                     _PlaintextKeyring])
def test_a_keyring_that_cannot_keep_a_key_safely_is_not_used(
    tmp_path: Path, use_keyring: Any, backend: type
) -> None:
    ring = use_keyring(backend())
    store = SecretStore(tmp_path)
    store.set("a", VALUE)
    assert store.key_source == str(tmp_path / "secret.key")
    assert getattr(ring, "kept", {}) == {}
    # the key was not lost in a keyring that forgets: another store decrypts the value
    assert SecretStore(tmp_path).get("a") == VALUE


def test_corral_secrets_keyring_0_keeps_the_key_in_the_file(
    tmp_path: Path, use_keyring: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = use_keyring(_MemoryKeyring())
    monkeypatch.setenv("CORRAL_SECRETS_KEYRING", "0")
    store = SecretStore(tmp_path)
    store.set("a", VALUE)
    assert store.key_source == str(tmp_path / "secret.key")
    assert ring.kept == {}


@pytest.mark.parametrize("doc", ['[]', '{"secrets": []}', '{"secrets": "x"}', '"secrets"'])
def test_a_damaged_secrets_file_is_reported_and_left_alone(
    store: SecretStore, tmp_path: Path, doc: str
) -> None:
    (tmp_path / "secrets.json").write_text(doc)
    with pytest.raises(UnavailableError, match=r"secrets\.json is damaged \(no secrets table\)"):
        store.get("a")
    with pytest.raises(UnavailableError, match="no secrets table"):
        store.set("a", VALUE)
    assert (tmp_path / "secrets.json").read_text() == doc

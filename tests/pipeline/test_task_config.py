"""A run's configuration: loaders, merge order, custom loaders, secrets, the stored form and changes."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pylo.errors import ConfigError, PyloError
from pylo.pipeline import FrozenConfig, Secret, _config_loaders, register_config_loader
from pylo.pipeline._config import describe_changes, from_stored, load_config, resume_config, to_stored


@pytest.fixture(autouse=True)
def own_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test registers loaders in a registry of its own."""
    monkeypatch.setattr(_config_loaders, "_LOADERS", dict(_config_loaders._BUILT_IN))
    yield


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class Vault:
    """A stand-in secrets vault: ``vault://<path>`` -> the secrets under it; counts its reads."""

    def __init__(self, secrets: dict[str, dict[str, Any]]) -> None:
        self.secrets = secrets
        self.reads: list[str] = []

    def __call__(self, source: str) -> Mapping[str, Any]:
        self.reads.append(source)
        return self.secrets[source.removeprefix("vault://")]


# -- each loader ---------------------------------------------------------------


def test_json_file(tmp_path: Path) -> None:
    path = write(tmp_path / "settings.json", '{"api": {"url": "https://a.test", "retries": 3}, "on": true}')
    assert load_config(path).values == {"api": {"url": "https://a.test", "retries": 3}, "on": True}


def test_toml_file_with_dates_as_iso_strings(tmp_path: Path) -> None:
    path = write(tmp_path / "settings.toml", '[api]\nurl = "https://a.test"\nsince = 2026-11-28\nids = [1, 2]\n')
    config = load_config(str(path)).values
    assert config == {"api": {"url": "https://a.test", "since": "2026-11-28", "ids": (1, 2)}}
    assert isinstance(config, FrozenConfig)


@pytest.mark.parametrize("suffix", [".yml", ".yaml", ".YAML"])
def test_yaml_file(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"settings{suffix}", "api:\n  url: https://a.test\n  since: 2026-11-28\nids: [1, 2]\n")
    assert load_config(path).values == {"api": {"url": "https://a.test", "since": "2026-11-28"}, "ids": (1, 2)}


def test_an_empty_yaml_file_is_an_empty_configuration(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "empty.yml", "")).values == {}


def test_environment_variables_by_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTLY_API__URL", "https://a.test")
    monkeypatch.setenv("NIGHTLY_API__RETRIES", "3")
    monkeypatch.setenv("NIGHTLY_NAME", "nightly")
    monkeypatch.setenv("NIGHTLY", "the prefix alone is no key")
    monkeypatch.setenv("OTHER_NAME", "not ours")
    assert load_config("env://NIGHTLY_").values == {"api": {"url": "https://a.test", "retries": "3"}, "name": "nightly"}


def test_environment_without_a_prefix_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"env:// needs a prefix, such as env://MYAPP_"):
        load_config("env://")


def test_environment_variables_that_clash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASH_DB", "x")
    monkeypatch.setenv("CLASH_DB__HOST", "y")
    with pytest.raises(ConfigError, match="CLASH_DB and CLASH_DB__HOST both set db"):
        load_config("env://CLASH_")


def test_missing_pyyaml_gives_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    path = write(tmp_path / "settings.yml", "a: 1\n")
    with pytest.raises(ConfigError, match=r"needs PyYAML, which is not installed: pip install pyyaml") as info:
        load_config(path)
    assert isinstance(info.value, PyloError)
    assert isinstance(info.value.__cause__, ImportError)


# -- merge order ---------------------------------------------------------------


def test_sources_merge_in_order_nested_mappings_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = write(tmp_path / "base.toml", '[api]\nurl = "https://a.test"\nretries = 3\nids = [1, 2]\n[db]\nhost = "h"\n')
    override = write(tmp_path / "prod.yml", "api:\n  url: https://prod.test\n  ids: [9]\ndb: none\n")
    monkeypatch.setenv("RUN_API__TOKEN_NAME", "t")
    config = load_config([base, override, {"api": {"retries": 5}}, "env://RUN_"]).values
    assert config == {
        # url from prod.yml, retries from the mapping, token_name from the
        # environment: merged key by key; ids replaced whole (lists are not
        # concatenated); db's mapping replaced by a scalar.
        "api": {"url": "https://prod.test", "retries": 5, "ids": (9,), "token_name": "t"},
        "db": "none",
    }


def test_no_sources_is_an_empty_configuration() -> None:
    assert load_config(None).values == {}
    assert load_config([]).values == {}


# -- errors --------------------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"configuration file '.*nowhere.json' not found"):
        load_config(tmp_path / "nowhere.json")


def test_an_unknown_suffix_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no configuration loader for the file .*\.ini.*\.json, \.toml"):
        load_config(write(tmp_path / "settings.ini", "[a]\n"))


def test_an_unknown_scheme_says_how_to_add_one() -> None:
    with pytest.raises(ConfigError, match=r"no configuration loader for vault://.*register_config_loader"):
        load_config("vault://prod/db")


def test_a_file_that_does_not_parse_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"could not load configuration from '.*bad.json': JSONDecodeError") as info:
        load_config(write(tmp_path / "bad.json", "{not json"))
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_a_top_level_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping at the top level, got list"):
        load_config(write(tmp_path / "list.json", "[1, 2]"))


def test_values_must_be_json_data() -> None:
    with pytest.raises(ConfigError, match=r"api.client is object .*configuration values are JSON data"):
        load_config({"api": {"client": object()}})
    with pytest.raises(ConfigError, match=r"key api\.1 is int, keys are strings"):
        load_config({"api": {1: "x"}})


def test_a_source_of_another_type() -> None:
    with pytest.raises(TypeError, match="got int 3 at position 1"):
        load_config([{}, 3])


# -- custom loaders ------------------------------------------------------------


def test_a_registered_scheme_loads_and_overrides_in_order(tmp_path: Path) -> None:
    vault = Vault({"prod/db": {"db": {"password": "s3cr3t"}}})
    register_config_loader("vault://", vault)
    config = load_config([{"db": {"host": "h", "password": "placeholder"}}, "vault://prod/db"]).values
    assert config == {"db": {"host": "h", "password": "s3cr3t"}}
    assert vault.reads == ["vault://prod/db"]


def test_a_registered_suffix(tmp_path: Path) -> None:
    register_config_loader(".kv", lambda path: dict(line.split("=") for line in Path(path).read_text().split()))
    assert load_config(write(tmp_path / "settings.KV", "a=1 b=2")).values == {"a": "1", "b": "2"}


def test_the_longest_registered_suffix_wins(tmp_path: Path) -> None:
    register_config_loader(".secrets.json", lambda path: {"from": "secrets loader"})
    assert load_config(write(tmp_path / "db.secrets.json", "{}")).values == {"from": "secrets loader"}
    assert load_config(write(tmp_path / "db.json", '{"from": "json"}')).values == {"from": "json"}


def test_a_built_in_loader_can_be_replaced(tmp_path: Path) -> None:
    register_config_loader(".json", lambda path: {"replaced": True})
    assert load_config(write(tmp_path / "a.json", "{}")).values == {"replaced": True}


def test_what_a_loader_raises_names_the_source() -> None:
    def broken(source: str) -> Mapping[str, Any]:
        raise PermissionError("token expired")

    register_config_loader("vault://", broken)
    with pytest.raises(ConfigError, match="could not load configuration from 'vault://x': PermissionError: token"):
        load_config("vault://x")


@pytest.mark.parametrize(
    ("key", "loader", "error", "message"),
    [
        ("vault", dict, ValueError, "a file suffix starting with '.' .* or a scheme ending in '://'"),
        ("1vault://", dict, ValueError, "scheme '1vault://' is not valid"),
        (".", dict, ValueError, "suffix '.' is not valid"),
        ("./x", dict, ValueError, "suffix './x' is not valid"),
        (".ini", "not callable", TypeError, "loader must be callable"),
        (3, dict, TypeError, "suffix_or_scheme must be a string, got int"),
    ],
)
def test_registering_checks_its_arguments(key: Any, loader: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        register_config_loader(key, loader)


# -- secrets, the stored form, resuming ----------------------------------------


@pytest.fixture
def vault() -> Vault:
    vault = Vault({"prod/db": {"db": {"password": "s3cr3t", "user": "app"}}, "prod/api": {"api": {"token": "t0k"}}})
    register_config_loader("vault://", vault, secret=True)
    return vault


def test_stored_form_is_json_and_leaves_secrets_out(tmp_path: Path, vault: Vault) -> None:
    path = write(tmp_path / "base.json", '{"db": {"host": "h"}, "api": {"url": "u"}}')
    resolved = load_config([path, "vault://prod/db", {"db": {"user": "override"}}])
    assert resolved.values == {"db": {"host": "h", "password": "s3cr3t", "user": "override"}, "api": {"url": "u"}}
    # db.user came from the vault, then a plain mapping overrode it: not secret any more.
    assert resolved.secret_keys == {("db", "password")}
    stored = json.loads(json.dumps(to_stored(resolved)))
    assert "s3cr3t" not in json.dumps(stored)
    assert stored == {
        "format": 1,
        "values": {"db": {"host": "h", "user": "override"}, "api": {"url": "u"}},
        "secrets": [{"source": "vault://prod/db", "keys": [["db", "password"]]}],
    }


def test_secrets_are_resolved_again_from_their_source(vault: Vault) -> None:
    resolved = load_config([{"db": {"host": "h"}}, "vault://prod/db"])
    stored = json.loads(json.dumps(to_stored(resolved)))
    vault.secrets["prod/db"]["db"]["password"] = "rotated"
    again = from_stored(stored)
    assert again.values == {"db": {"host": "h", "password": "rotated", "user": "app"}}
    assert again.secrets == resolved.secrets
    assert vault.reads == ["vault://prod/db", "vault://prod/db"]


def test_a_source_marked_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBSECRET_PASSWORD", "pw")
    resolved = load_config([{"url": "u"}, Secret("env://DBSECRET_")])
    assert to_stored(resolved)["values"] == {"url": "u"}
    monkeypatch.setenv("DBSECRET_PASSWORD", "pw2")
    assert from_stored(to_stored(resolved)).values == {"url": "u", "password": "pw2"}


def test_a_mapping_cannot_be_secret() -> None:
    with pytest.raises(TypeError, match="a mapping cannot be marked Secret: it could not be loaded again"):
        Secret({"password": "x"})  # type: ignore[arg-type]


def test_a_secret_that_cannot_be_resolved_again(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = to_stored(load_config("vault://prod/api"))
    del vault.secrets["prod/api"]["api"]["token"]
    with pytest.raises(ConfigError, match=r"'vault://prod/api' no longer has the key api\.token"):
        from_stored(stored)
    # A resume in a process that forgot to register the vault:
    monkeypatch.setattr(_config_loaders, "_LOADERS", dict(_config_loaders._BUILT_IN))
    with pytest.raises(ConfigError, match="cannot be resolved again: no configuration loader for vault://"):
        from_stored(stored)


@pytest.mark.parametrize("stored", [{}, {"format": 2, "values": {}, "secrets": []}, {"format": 1, "values": []}])
def test_a_damaged_stored_form(stored: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="the stored configuration is damaged"):
        from_stored(stored)


def test_changes_since_the_run_are_described_without_secret_values(vault: Vault) -> None:
    run = from_stored(to_stored(load_config([{"db": {"host": "h", "port": 5432}, "old": 1}, "vault://prod/db"])))
    vault.secrets["prod/db"]["db"]["password"] = "rotated"
    now = load_config([{"db": {"host": "h2", "port": 5432}, "new": [1]}, "vault://prod/db"])
    assert describe_changes(run, now) == [
        "db.host: was 'h', now 'h2'",
        "db.password: changed (secret)",
        "new: was missing, now [1]",
        "old: was 1, now missing",
    ]
    assert describe_changes(run, run) == []
    assert describe_changes(load_config({"n": 1}), load_config({"n": 1.0})) == ["n: was 1, now 1.0"]


def test_a_resume_uses_the_stored_configuration_and_says_what_changed(
    vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    stored = json.loads(json.dumps(to_stored(load_config([{"url": "a"}, "vault://prod/api"]))))
    with caplog.at_level(logging.WARNING, logger="pylo.pipeline._config"):
        resolved, changes = resume_config(stored, [{"url": "b"}, "vault://prod/api"], run_id="run-1")
    assert resolved.values == {"url": "a", "api": {"token": "t0k"}}
    assert changes == ["url: was 'a', now 'b'"]
    assert "the configuration changed since run run-1" in caplog.text
    assert "url: was 'a', now 'b'" in caplog.text
    caplog.clear()
    assert resume_config(stored, None)[1] == []
    assert resume_config(stored, [{"url": "a"}, "vault://prod/api"])[1] == []
    assert not caplog.records

"""Configuration (config.py): defaults < TOML file < SOCA_* environment < command line.

Every test passes ``env`` explicitly (never the real environment) and points the default
config path at a file that does not exist, so the machine's /etc cannot leak in.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from soca_appliance import config
from soca_appliance.config import Config, ConfigError, Leds, check_url, is_loopback, load

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "config.example.toml"
KEY = "sk-live-7f3a9c1e5b2d4068a1f0"


@pytest.fixture(autouse=True)
def no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "config.toml")


def toml(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(**kwargs: Any) -> str:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    return str(info.value)


# --- defaults, file, environment, command line --------------------------------------------

class TestSources:
    def test_defaults(self) -> None:
        cfg = load(env={})
        assert cfg == Config()
        assert cfg.url == "wss://api.soca.ai/voice-ws"
        assert cfg.lang == "id"
        assert cfg.frame_ms == 20
        assert cfg.key_field == "private_key"
        assert cfg.session_id == ""
        assert cfg.allow_insecure is False
        assert cfg.vad is False
        assert (cfg.ping_interval, cfg.ping_timeout) == (10.0, 5.0)
        assert (cfg.backoff_initial, cfg.backoff_max) == (0.5, 30.0)
        assert cfg.leds == Leds()
        assert cfg.leds.rgb == ()

    def test_default_path_is_read_when_present(self, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        path = toml(tmp_path, 'lang = "en"\n', "default.toml")
        monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
        assert load(env={}).lang == "en"

    def test_file_values(self, tmp_path: Path) -> None:
        path = toml(tmp_path, """
url = "wss://staging.soca.ai/v1/voice-ws"
agent_id = "agent-42"
lang = "en"
key_field = "token"
frame_ms = 40
vad = true
vad_aggressiveness = 3
ping_interval = 20
ping_timeout = 4.5
max_pending_sentences = 8

[leds]
ready = 22
error = 25
""")
        cfg = load(path, env={})
        assert cfg.url == "wss://staging.soca.ai/v1/voice-ws"
        assert cfg.agent_id == "agent-42"
        assert cfg.lang == "en"
        assert cfg.key_field == "token"
        assert cfg.frame_ms == 40
        assert cfg.vad is True
        assert cfg.vad_aggressiveness == 3
        assert cfg.ping_interval == 20.0 and isinstance(cfg.ping_interval, float)
        assert cfg.ping_timeout == 4.5
        assert cfg.max_pending_sentences == 8
        assert cfg.leds == Leds(ready=22, error=25)
        # untouched keys keep their defaults
        assert cfg.duplex == "auto"
        assert cfg.mic_gain == 1.0

    def test_file_rgb_is_a_tuple(self, tmp_path: Path) -> None:
        cfg = load(toml(tmp_path, "[leds]\nrgb = [5, 6, 13]\n"), env={})
        assert cfg.leds.rgb == (5, 6, 13)
        assert cfg.leds.ready is None

    def test_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.toml"
        text = error_of(path=path)
        assert str(path) in text
        assert "does not exist" in text

    def test_invalid_toml(self, tmp_path: Path) -> None:
        path = toml(tmp_path, "lang = \n")
        text = error_of(path=path)
        assert str(path) in text
        assert "TOML" in text

    def test_env_overrides(self) -> None:
        cfg = load(env={"SOCA_FRAME_MS": "50", "SOCA_LANG": "en", "SOCA_AGENT_ID": "a-1",
                        "SOCA_PING_INTERVAL": "12.5", "SOCA_URL": "ws://127.0.0.1:8765"})
        assert cfg.frame_ms == 50
        assert cfg.lang == "en"
        assert cfg.agent_id == "a-1"
        assert cfg.ping_interval == 12.5
        assert cfg.url == "ws://127.0.0.1:8765"

    def test_env_leds(self) -> None:
        cfg = load(env={"SOCA_LEDS_READY": "5", "SOCA_LEDS_ERROR": "6"})
        assert cfg.leds.ready == 5
        assert cfg.leds.error == 6
        assert cfg.leds.listening is None

    def test_env_leds_rgb(self) -> None:
        assert load(env={"SOCA_LEDS_RGB": "5,6,13"}).leds.rgb == (5, 6, 13)
        assert load(env={"SOCA_LEDS_RGB": "5 6 13"}).leds.rgb == (5, 6, 13)

    def test_env_empty_led_pin_clears_the_file_value(self, tmp_path: Path) -> None:
        path = toml(tmp_path, "[leds]\nready = 22\n")
        assert load(path, env={"SOCA_LEDS_READY": ""}).leds.ready is None

    @pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " On "])
    def test_env_bool_true(self, text: str) -> None:
        assert load(env={"SOCA_VAD": text}).vad is True

    @pytest.mark.parametrize("text", ["0", "false", "False", "no", "off"])
    def test_env_bool_false(self, tmp_path: Path, text: str) -> None:
        path = toml(tmp_path, "vad = true\n")
        assert load(path, env={"SOCA_VAD": text}).vad is False

    @pytest.mark.parametrize("name, value", [
        ("SOCA_VAD", "maybe"), ("SOCA_FRAME_MS", "abc"), ("SOCA_FRAME_MS", "20.0"),
        ("SOCA_PING_INTERVAL", "ten"), ("SOCA_LEDS_READY", "GPIO5"), ("SOCA_LEDS_RGB", "5,x,7"),
        ("SOCA_BUTTON_PIN", ""),
    ])
    def test_env_bad_value_names_the_variable(self, name: str, value: str) -> None:
        text = error_of(env={name: value})
        assert name in text

    def test_env_beats_file(self, tmp_path: Path) -> None:
        path = toml(tmp_path, 'lang = "en"\nframe_ms = 40\n')
        cfg = load(path, env={"SOCA_LANG": "id"})
        assert cfg.lang == "id"
        assert cfg.frame_ms == 40

    def test_unrelated_environment_ignored(self) -> None:
        cfg = load(env={"SOCA_NOT_A_KEY": "1", "FRAME_MS": "30", "LANG": "fr_FR.UTF-8",
                        "SOCA_PRIVATE_KEY": KEY, "soca_frame_ms": "30"})
        assert cfg == Config()

    def test_cli_beats_env_and_file(self, tmp_path: Path) -> None:
        path = toml(tmp_path, 'lang = "en"\nframe_ms = 40\nagent_id = "file"\n')
        cfg = load(path, env={"SOCA_FRAME_MS": "50", "SOCA_AGENT_ID": "env"},
                   overrides={"frame_ms": 20, "agent_id": "cli"})
        assert cfg.frame_ms == 20
        assert cfg.agent_id == "cli"
        assert cfg.lang == "en"

    def test_cli_none_is_ignored(self, tmp_path: Path) -> None:
        path = toml(tmp_path, 'lang = "en"\n')
        cfg = load(path, env={"SOCA_FRAME_MS": "40"},
                   overrides={"lang": None, "frame_ms": None, "vad": None, "leds.ready": None})
        assert cfg.lang == "en"
        assert cfg.frame_ms == 40
        assert cfg.vad is False

    def test_cli_led_override(self) -> None:
        assert load(env={}, overrides={"leds.ready": 4}).leds.ready == 4

    def test_known_keys(self) -> None:
        keys = config.known_keys()
        for key in ("url", "agent_id", "lang", "frame_ms", "vad", "leds.ready", "leds.rgb"):
            assert key in keys
        assert "leds" not in keys
        assert "private_key" not in keys


# --- refused -------------------------------------------------------------------------------

class TestRefused:
    def test_unknown_key_in_file(self, tmp_path: Path) -> None:
        path = toml(tmp_path, 'lang = "id"\nframe_size = 20\n')
        text = error_of(path=path)
        assert "frame_size" in text
        assert "unknown" in text

    def test_unknown_led_key_in_file(self, tmp_path: Path) -> None:
        text = error_of(path=toml(tmp_path, "[leds]\ncolour = 3\n"))
        assert "leds.colour" in text

    def test_unknown_section(self, tmp_path: Path) -> None:
        assert "audio" in error_of(path=toml(tmp_path, "[audio]\nframe_ms = 20\n"))

    def test_unknown_override(self) -> None:
        text = error_of(overrides={"volume": 3})
        assert "volume" in text and "unknown" in text

    @pytest.mark.parametrize("line, key", [
        ('frame_ms = "20"', "frame_ms"), ("frame_ms = 20.0", "frame_ms"),
        ("frame_ms = true", "frame_ms"), ('vad = "yes"', "vad"), ("vad = 1", "vad"),
        ("url = 5", "url"), ('ping_interval = "10"', "ping_interval"),
        ("ping_interval = false", "ping_interval"), ("lang = ['id']", "lang"),
        ('[leds]\nready = "GPIO22"', "leds.ready"), ("[leds]\nready = 2.5", "leds.ready"),
        ('[leds]\nrgb = [1, "2", 3]', "leds.rgb"), ("[leds]\nrgb = 5", "leds.rgb"),
        ("[leds]\nrgb = [true, 2, 3]", "leds.rgb"),
    ])
    def test_wrong_type_names_the_key(self, tmp_path: Path, line: str, key: str) -> None:
        text = error_of(path=toml(tmp_path, line + "\n"))
        assert f"'{key}'" in text

    def test_wrong_type_in_override(self) -> None:
        assert "'frame_ms'" in error_of(overrides={"frame_ms": "40"})

    @pytest.mark.parametrize("ms", [30, 10, 60, 100, 0, -20])
    def test_frame_ms_refused(self, ms: int) -> None:
        text = error_of(overrides={"frame_ms": ms})
        assert "frame_ms" in text and "20, 40 or 50" in text

    @pytest.mark.parametrize("ms", [20, 40, 50])
    def test_frame_ms_allowed(self, ms: int) -> None:
        assert load(env={}, overrides={"frame_ms": ms}).frame_ms == ms

    @pytest.mark.parametrize("lang", ["fr", "ID", "", "id-ID"])
    def test_lang_refused(self, lang: str) -> None:
        text = error_of(overrides={"lang": lang})
        assert "lang" in text and "id" in text and "en" in text

    def test_lang_en(self) -> None:
        assert load(env={"SOCA_LANG": "en"}).lang == "en"

    @pytest.mark.parametrize("url", ["ws://api.soca.ai/voice-ws", "ws://10.0.0.5:8765/voice-ws",
                                     "ws://192.168.1.2", "ws://localhost.evil.example/",
                                     "ws://0.0.0.0:8765"])
    def test_plain_ws_to_a_remote_host_refused(self, url: str) -> None:
        text = error_of(overrides={"url": url})
        assert "allow_insecure" in text
        assert "wss://" in text

    @pytest.mark.parametrize("url", ["ws://api.soca.ai/voice-ws", "ws://10.0.0.5:8765/voice-ws"])
    def test_plain_ws_allowed_with_allow_insecure(self, url: str) -> None:
        cfg = load(env={"SOCA_ALLOW_INSECURE": "true"}, overrides={"url": url})
        assert cfg.url == url

    @pytest.mark.parametrize("url", ["ws://127.0.0.1:8765/voice-ws", "ws://localhost:8765",
                                     "ws://LOCALHOST/voice-ws", "ws://[::1]:8765/v1/voice-ws",
                                     "ws://127.0.0.2/"])
    def test_plain_ws_to_loopback_allowed(self, url: str) -> None:
        assert load(env={}, overrides={"url": url}).url == url

    @pytest.mark.parametrize("url", ["wss://api.soca.ai/voice-ws", "wss://staging.soca.ai/v1/voice-ws",
                                     "wss://10.0.0.5:443/voice-ws"])
    def test_wss_allowed(self, url: str) -> None:
        assert load(env={}, overrides={"url": url}).url == url

    @pytest.mark.parametrize("url", ["https://api.soca.ai/voice-ws", "api.soca.ai/voice-ws",
                                     "wss://", "", "ftp://x"])
    def test_not_a_websocket_url(self, url: str) -> None:
        assert "url" in error_of(overrides={"url": url})

    def test_check_url_and_is_loopback(self) -> None:
        check_url("ws://127.0.0.1", False)
        check_url("ws://example.com", True)
        with pytest.raises(ConfigError):
            check_url("ws://example.com", False)
        assert is_loopback("localhost")
        assert is_loopback("127.0.0.1")
        assert is_loopback("::1")
        assert not is_loopback("10.0.0.1")
        assert not is_loopback("example.com")

    @pytest.mark.parametrize("interval, timeout", [(5.0, 5.0), (4.0, 5.0), (10, 20)])
    def test_ping_interval_must_exceed_timeout(self, interval: float, timeout: float) -> None:
        text = error_of(overrides={"ping_interval": interval, "ping_timeout": timeout})
        assert "ping_interval" in text and "ping_timeout" in text

    def test_ping_interval_just_above_timeout(self) -> None:
        cfg = load(env={}, overrides={"ping_interval": 5.5, "ping_timeout": 5.0})
        assert cfg.ping_interval == 5.5

    @pytest.mark.parametrize("pins", [[5, 6], [5], [5, 6, 13, 19]])
    def test_rgb_needs_three_pins(self, tmp_path: Path, pins: list[int]) -> None:
        text = error_of(path=toml(tmp_path, f"[leds]\nrgb = {pins}\n"))
        assert "leds.rgb" in text and "three" in text

    def test_rgb_and_discrete_together_refused(self, tmp_path: Path) -> None:
        text = error_of(path=toml(tmp_path, "[leds]\nrgb = [5, 6, 13]\nready = 22\n"))
        assert "leds.rgb" in text and "not both" in text

    def test_rgb_from_file_and_discrete_from_env_refused(self, tmp_path: Path) -> None:
        path = toml(tmp_path, "[leds]\nrgb = [5, 6, 13]\n")
        assert "not both" in error_of(path=path, env={"SOCA_LEDS_ERROR": "25"})

    @pytest.mark.parametrize("key, value", [
        ("vad_aggressiveness", 4), ("vad_aggressiveness", -1), ("mic_gain", 0.0),
        ("mic_gain", 65.0), ("connect_timeout", 0.0), ("auth_retry", -1.0),
        ("mixer_buffer", 32), ("mixer_buffer", 16384), ("duplex", "both"), ("gpio", "on"),
        ("log_format", "xml"), ("log_level", "trace"), ("key_field", ""),
    ])
    def test_out_of_range(self, key: str, value: Any) -> None:
        assert key in error_of(overrides={key: value})

    @pytest.mark.parametrize("env, text", [({"SOCA_PING_INTERVAL": "nan"}, ""),
                                           ({"SOCA_SENTENCE_TIMEOUT": "nan"}, ""),
                                           ({}, "ping_interval = nan\n")],
                             ids=["env-ping_interval", "env-sentence_timeout", "toml"])
    def test_nan_refused(self, tmp_path: Path, env: dict[str, str], text: str) -> None:
        error_of(env=env, path=toml(tmp_path, text) if text else None)


# --- GPIO pins ----------------------------------------------------------------------------

class TestPins:
    @pytest.mark.parametrize("key, value", [
        ("button_pin", -1), ("button_pin", 999), ("button_pin", 28), ("leds.ready", -1),
        ("leds.error", 999), ("leds.speaking", 40),
    ])
    def test_pin_outside_the_header_refused(self, key: str, value: int) -> None:
        text = error_of(overrides={key: value})
        assert f"{key} = {value} is not a GPIO pin" in text and "0..27" in text

    @pytest.mark.parametrize("pins", [[5, 6, 999], [-1, 6, 13]])
    def test_rgb_pin_outside_the_header_refused(self, tmp_path: Path, pins: list[int]) -> None:
        text = error_of(path=toml(tmp_path, f"[leds]\nrgb = {pins}\n"))
        assert "leds.rgb[" in text and "is not a GPIO pin" in text

    def test_pin_from_the_environment_checked(self) -> None:
        assert "button_pin = -1 is not a GPIO pin" in error_of(env={"SOCA_BUTTON_PIN": "-1"})

    def test_button_on_an_led_pin_refused(self, tmp_path: Path) -> None:
        path = toml(tmp_path, "button_pin = 22\n[leds]\nready = 22\nerror = 25\n")
        text = error_of(path=path)
        assert "button_pin and leds.ready are both GPIO22" in text

    def test_two_leds_on_one_pin_refused(self) -> None:
        text = error_of(overrides={"leds.ready": 5, "leds.speaking": 5})
        assert "leds.ready and leds.speaking are both GPIO5" in text

    def test_rgb_pins_must_differ(self, tmp_path: Path) -> None:
        text = error_of(path=toml(tmp_path, "[leds]\nrgb = [5, 6, 5]\n"))
        assert "leds.rgb[0] and leds.rgb[2] are both GPIO5" in text

    def test_rgb_on_the_button_pin_refused(self, tmp_path: Path) -> None:
        text = error_of(path=toml(tmp_path, "[leds]\nrgb = [5, 17, 13]\n"))
        assert "button_pin and leds.rgb[1] are both GPIO17" in text

    def test_every_header_pin_accepted(self) -> None:
        assert load(env={}, overrides={"button_pin": 0, "leds.ready": 27}).leds.ready == 27
        roles = config.pin_roles(load(env={}, overrides={"leds.rgb": [5, 6, 13]}))
        assert roles == [("button_pin", 17), ("leds.rgb[0]", 5), ("leds.rgb[1]", 6),
                         ("leds.rgb[2]", 13)]


# --- the private key --------------------------------------------------------------------------

def key_file(tmp_path: Path, content: Any, mode: int = 0o600) -> Path:
    path = tmp_path / "key"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    os.chmod(path, mode)
    return path


def cfg_for(path: Path) -> Config:
    return Config(private_key_file=str(path))


def key_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config.read_private_key(cfg_for(path), env=env or {})
    text = str(info.value)
    assert KEY not in text, "an error message must never contain the key"
    assert KEY[:8] not in text
    return text


class TestPrivateKey:
    def test_from_env(self, tmp_path: Path) -> None:
        assert config.read_private_key(cfg_for(tmp_path / "absent"),
                                       env={"SOCA_PRIVATE_KEY": KEY}) == KEY

    def test_env_is_stripped_and_wins_over_the_file(self, tmp_path: Path) -> None:
        path = key_file(tmp_path, "file-key\n")
        assert config.read_private_key(cfg_for(path),
                                       env={"SOCA_PRIVATE_KEY": f" {KEY}\n"}) == KEY

    def test_empty_env_falls_back_to_the_file(self, tmp_path: Path) -> None:
        path = key_file(tmp_path, KEY + "\n")
        assert config.read_private_key(cfg_for(path), env={"SOCA_PRIVATE_KEY": ""}) == KEY

    @pytest.mark.parametrize("content", [KEY + "\n", KEY, KEY + "\r\n", f"  {KEY}  \n\n"])
    def test_from_a_0600_file(self, tmp_path: Path, content: str) -> None:
        path = key_file(tmp_path, content)
        assert config.read_private_key(cfg_for(path), env={}) == KEY

    def test_from_a_0400_file(self, tmp_path: Path) -> None:
        path = key_file(tmp_path, KEY, 0o400)
        assert config.read_private_key(cfg_for(path), env={}) == KEY

    def test_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "missing-key"
        text = key_error(path)
        assert "SOCA_PRIVATE_KEY" in text
        assert str(path) in text

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610, 0o601, 0o700 | 0o007])
    def test_file_open_to_group_or_others_refused(self, tmp_path: Path, mode: int) -> None:
        path = key_file(tmp_path, KEY + "\n", mode)
        text = key_error(path)
        assert "chmod 600" in text
        assert str(path) in text
        assert f"{mode:04o}" in text

    @pytest.mark.parametrize("content", ["", "\n", "  \n\t\n"])
    def test_empty_file_refused(self, tmp_path: Path, content: str) -> None:
        text = key_error(key_file(tmp_path, content))
        assert "empty" in text

    def test_file_not_utf8(self, tmp_path: Path) -> None:
        path = key_file(tmp_path, b"\xff\xfe" + KEY.encode())
        text = key_error(path)
        assert str(path) in text

    @pytest.mark.parametrize("kind", ["directory", "under-a-file"])
    def test_unusable_key_path_is_a_config_error(self, tmp_path: Path, kind: str) -> None:
        if kind == "directory":
            path = tmp_path / "keydir"
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)
        else:
            path = key_file(tmp_path, KEY) / "key"
        text = key_error(path)
        assert str(path) in text

    def test_config_errors_do_not_leak_a_key_given_in_the_environment(self) -> None:
        text = error_of(env={"SOCA_PRIVATE_KEY": KEY, "SOCA_FRAME_MS": "30"})
        assert KEY not in text

    def test_whitespace_only_env_key_is_not_an_empty_key(self, tmp_path: Path) -> None:
        path = key_file(tmp_path, KEY + "\n")
        try:
            key = config.read_private_key(cfg_for(path), env={"SOCA_PRIVATE_KEY": " \n"})
        except ConfigError:
            return
        assert key == KEY


# --- the shipped example -------------------------------------------------------------------

def test_example_config_loads() -> None:
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE} does not exist yet")
    cfg = load(EXAMPLE, env={})
    assert cfg.url.startswith("wss://")
    assert cfg.frame_ms in (20, 40, 50)
    assert cfg.lang in ("id", "en")


def test_the_button_mode_flag_overrides_the_file(tmp_path: Path) -> None:
    from soca_appliance.cli import _overrides, build_parser
    path = tmp_path / "soca.toml"
    path.write_text('agent_id = "a"\nbutton_mode = "barge"\n')
    args = build_parser().parse_args(["run", "--config", str(path),
                                      "--button-mode", "push_to_talk"])
    assert config.load(args.config, overrides=_overrides(args)).button_mode == "push_to_talk"
    args = build_parser().parse_args(["run", "--config", str(path)])
    assert config.load(args.config, overrides=_overrides(args)).button_mode == "barge"

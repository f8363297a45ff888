"""``GET /metrics``: the appliance in Prometheus text format, with ``prometheus_client``.

A collector of our own on a :class:`~prometheus_client.CollectorRegistry` of our own
(never the process-global one): at every scrape it reads ``Appliance.status()`` once, the
event-derived :class:`~soca_appliance.web.feed.Telemetry`, the mic meter and two sysfs
files of the Pi, and turns them into metric families. Nothing is counted twice: the
counters are the appliance's own (``status()["counters"]``), exported under the same names
``soca-appliance ctl status`` shows (``frames_sent`` -> ``soca_frames_sent_total``).

``prometheus_client`` is imported on the first scrape only (memory: a kiosk that nobody
scrapes never loads it).
"""
from __future__ import annotations

import glob
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

STATES = ("connecting", "ready", "listening", "thinking", "speaking", "error")
FAULTS = ("auth", "mic", "speaker")
PREFIX = "soca_"
THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")
# The Pi's firmware voltage monitor (kernel driver raspberrypi-hwmon, hwmon name rpi_volt).
HWMON_GLOB = "/sys/class/hwmon/hwmon*"

# Counters of status()["counters"] with their help text; any other integer counter the
# appliance adds later is exported too, as soca_<name>_total, with a generic help.
COUNTER_HELP = {
    "frames_captured": "Audio frames delivered by the microphone (or input file).",
    "frames_muted": "Captured frames not sent because the mic was muted.",
    "frames_silenced": "Frames replaced by silence while the agent spoke (half duplex).",
    "frames_sent": "Uplink audio frames sent to the server.",
    "frames_dropped_not_ready": "Uplink frames dropped before stt.ready.",
    "frames_dropped_full": "Uplink frames dropped because the outbox was full (stalled link).",
    "utterances": "Speech onsets detected by the local VAD.",
    "barges_server": "Barges announced by the server.",
    "barges_button": "Local barges (button, control socket or screen).",
    "sentences_played": "Agent sentences that started playing.",
    "sentences_stopped": "Agent sentences stopped before their end.",
    "sentences_dropped": "Agent sentences dropped unplayed (broken, oversize, expired).",
    "chunks_dropped": "Sentence chunks dropped.",
    "bad_messages": "Malformed messages from the server.",
    "server_errors": "Error messages from the server.",
    "connects": "Successful connections (handshake done).",
    "connect_attempts": "Connection attempts.",
}


def read_temperature(path: Path = THERMAL) -> Optional[float]:
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def find_under_voltage_file(pattern: str = HWMON_GLOB) -> Optional[Path]:
    for hwmon in sorted(glob.glob(pattern)):
        try:
            if Path(hwmon, "name").read_text().strip() == "rpi_volt":
                alarm = Path(hwmon, "in0_lcrit_alarm")
                if alarm.exists():
                    return alarm
        except OSError:
            continue
    return None


def read_flag(path: Optional[Path]) -> Optional[int]:
    if path is None:
        return None
    try:
        return 1 if int(path.read_text().strip()) else 0
    except (OSError, ValueError):
        return None


class Metrics:
    """Renders the text exposition; built lazily by the server on the first scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]], telemetry: Any,
                 meter: Any = None, version: str = "",
                 temperature: Callable[[], Optional[float]] = read_temperature,
                 under_voltage_file: Optional[Path] = None) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client import exposition

        self._generate = exposition.generate_latest
        # The classic text format every Prometheus (2.x and 3.x) reads; our names are plain.
        self.content_type = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4",
                                    exposition.CONTENT_TYPE_LATEST)
        self.status, self.telemetry, self.meter, self.version = status, telemetry, meter, version
        self.temperature = temperature
        self.under_voltage_file = under_voltage_file or find_under_voltage_file()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        return self._generate(self.registry)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            InfoMetricFamily)

        def gauge(name: str, doc: str, value: Optional[float]) -> Iterator[Any]:
            if value is not None:
                yield GaugeMetricFamily(PREFIX + name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> Any:
            return CounterMetricFamily(PREFIX + name, doc, value=value)

        status = self.status()
        counters = status.get("counters") or {}
        tel = self.telemetry
        yield InfoMetricFamily(PREFIX + "build", "Build of the appliance software.",
                               value={"version": self.version})
        state = GaugeMetricFamily(PREFIX + "state", "1 for the current state of the "
                                  "appliance.", labels=["state"])
        current = str(status.get("state", ""))
        for name in STATES + (() if current in STATES else (current,)):
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state
        yield from gauge("connected", "1 while the voice link streams (handshake done).",
                         1.0 if status.get("connected") else 0.0)
        yield from gauge("muted", "1 while the mic is muted.", 1.0 if status.get("muted") else 0.0)
        faults = GaugeMetricFamily(PREFIX + "fault", "1 while a fault holds the appliance in "
                                   "the error state.", labels=["fault"])
        active = set(status.get("faults") or [])
        for name in sorted(set(FAULTS) | active):
            faults.add_metric([name], 1.0 if name in active else 0.0)
        yield faults
        for name, value in counters.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield counter(name, COUNTER_HELP.get(name, f"The appliance's {name} counter."),
                              value)
        connects = counters.get("connects", 0)
        yield counter("reconnects", "Connections after the first one.", max(0, connects - 1))
        yield counter("disconnects", "Links lost or closed.", tel.disconnects)
        yield counter("auth_failures", "Connections refused for authentication.",
                      tel.auth_failures)
        yield counter("errors", "Error events (see the event log).", tel.errors)
        barges = CounterMetricFamily(PREFIX + "barges", "Barges by source: server, button, "
                                     "ctl (control socket), screen.", labels=["source"])
        for source, value in sorted(dict(tel.barges).items()):   # a copy: events go on
            barges.add_metric([source], value)
        yield barges
        yield from gauge("last_error_timestamp_seconds", "Unix time of the last error "
                         "event (0: none since start).", tel.last_error_ts)
        yield from gauge("start_time_seconds", "Unix time the appliance started.", tel.started)
        yield from gauge("uptime_seconds", "Seconds since the appliance started.",
                         max(0.0, time.time() - tel.started))
        if self.meter is not None:
            rms, peak = self.meter.levels()
            yield from gauge("mic_rms_dbfs", "Microphone RMS level over the last minute, "
                             "dBFS (-Inf: silence or no audio).", rms)
            yield from gauge("mic_peak_dbfs", "Microphone peak over the last minute, dBFS.",
                             peak)
        celsius = self.temperature()
        yield from gauge("pi_temperature_celsius", "CPU temperature (thermal_zone0).",
                         celsius if celsius is None or math.isfinite(celsius) else None)
        yield from gauge("pi_under_voltage", "1 while the Pi's firmware reports "
                         "under-voltage (hwmon rpi_volt in0_lcrit_alarm).",
                         read_flag(self.under_voltage_file))

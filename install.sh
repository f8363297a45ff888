#!/usr/bin/env bash
# Install soca-appliance on a Raspberry Pi (Raspberry Pi OS / Debian 12) as a boot service.
#
# Idempotent: run it again to upgrade; it never overwrites the config and keeps the key
# unless a new one is given. Non-interactive unless stdin is a terminal and no key is known.
# Run ./install.sh --help for the options.
set -euo pipefail

PROG=install.sh
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP=soca-appliance

PREFIX=/opt/soca-appliance
ETC=/etc/soca-appliance
UNIT_DIR=/etc/systemd/system
BIN_DIR=/usr/local/bin
SERVICE_USER=soca
PYTHON=python3
PIP_ARGS=""
KEY_FILE=""
DO_APT=1
DO_USER=1
DO_SERVICE=1
SYSTEM_SITE=0
UNINSTALL=0
PURGE=0
DEPS=auto
SELF_CHECK=1

# Always: the venv, ALSA's tools, PortAudio's runtime and libglib (pygame's wheel loads
# libgthread-2.0.so.0 for its bundled fluidsynth: without it pygame.mixer is "not available").
APT_BASE=(python3-venv alsa-utils libportaudio2 libglib2.0-0)
# deps=wheels: everything from PyPI; PyAudio has no wheel there and compiles against these.
APT_WHEELS=(python3-dev gcc portaudio19-dev)
# deps=debian-packages: Debian's own builds of what PyPI has no wheel for (armhf, ...), plus
# the tools to build the small rest (webrtcvad-wheels in C, soxr in C++).
APT_DEBIAN=(python3-numpy python3-pygame python3-pyaudio python3-dev gcc g++ portaudio19-dev)
# The Python distributions that come from those Debian packages in that mode.
DEBIAN_DISTS=(numpy pygame pyaudio)
# Raspberry Pi OS only (its own archive): gpiozero 2 and lgpio, gpiozero's pin factory on
# Bookworm and the only one that works on the Pi 5.
APT_PI=(python3-gpiozero python3-lgpio)
APT_PACKAGES=()
SERVICE_GROUPS=(audio gpio)
# Paths as they are written in etc/soca-appliance.service and etc/config.example.toml.
DEFAULT_PREFIX=/opt/soca-appliance
DEFAULT_ETC=/etc/soca-appliance

usage() {
    cat <<EOF
Usage: ./install.sh [OPTIONS]

Install soca-appliance: system packages, the '$SERVICE_USER' user, a virtualenv with the
project, the config and key under $ETC, and the boot service. Safe to run again (upgrade).

Options:
  --key-file FILE        read the private key from FILE (or set SOCA_PRIVATE_KEY in the
                         environment; the key is asked for only when stdin is a terminal)
  --prefix DIR           virtualenv location (default $PREFIX)
  --etc DIR              config and key directory (default $ETC)
  --unit-dir DIR         where the systemd unit goes (default $UNIT_DIR)
  --bin-dir DIR          where soca-diag and soca-appliance are linked (default $BIN_DIR;
                         '' for none)
  --python PATH          Python 3.11+ used to create the virtualenv (default $PYTHON)
  --pip-args "ARGS"      extra arguments for pip install (e.g. "--no-deps --no-build-isolation",
                         "--find-links DIR --no-index" to reuse a wheel cache)
  --system-site-packages give the virtualenv access to the system's site-packages
  --deps auto|wheels|debian
                         where the Python dependencies come from: 'wheels' (PyPI; PyAudio
                         compiles), 'debian' (Debian's python3-numpy, -pygame, -pyaudio, and on
                         Raspberry Pi OS -gpiozero and -lgpio, in a virtualenv with system
                         site-packages; PyPI for the rest), 'auto' (default): wheels on amd64
                         and arm64, debian elsewhere (armhf: PyPI has no wheels there).
                         The choice is written to PREFIX/INSTALL_PATH.
  --user NAME            the service user to create and run as (default $SERVICE_USER)
  --no-self-check        skip the check that pygame decodes MP3 and queues sound
  --no-apt               do not install system packages with apt-get
  --no-user              do not create the '$SERVICE_USER' user; run as the current user
  --no-service           do not install or enable the systemd unit
  --uninstall            remove the unit, links, virtualenv and user; keep config and key
                         (handed to root first, so no later user inherits them by uid)
  --purge                with --uninstall: also delete the config and the key
  -h, --help             this text

The key is never accepted on the command line (it would show in 'ps' and shell history).
EOF
}

step() { printf '==> %s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

need_value() {
    [ "$#" -ge 2 ] || die "$1 needs a value (see --help)"
}

parse_args() {
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
            --prefix=*) PREFIX=${1#*=}; shift ;;
            --etc) need_value "$@"; ETC=$2; shift 2 ;;
            --etc=*) ETC=${1#*=}; shift ;;
            --unit-dir) need_value "$@"; UNIT_DIR=$2; shift 2 ;;
            --unit-dir=*) UNIT_DIR=${1#*=}; shift ;;
            --bin-dir) need_value "$@"; BIN_DIR=$2; shift 2 ;;
            --bin-dir=*) BIN_DIR=${1#*=}; shift ;;
            --python) need_value "$@"; PYTHON=$2; shift 2 ;;
            --python=*) PYTHON=${1#*=}; shift ;;
            --pip-args) need_value "$@"; PIP_ARGS=$2; shift 2 ;;
            --pip-args=*) PIP_ARGS=${1#*=}; shift ;;
            --key-file) need_value "$@"; KEY_FILE=$2; shift 2 ;;
            --key-file=*) KEY_FILE=${1#*=}; shift ;;
            --key|--key=*|--private-key|--private-key=*)
                die "the key is not accepted on the command line; use --key-file FILE or SOCA_PRIVATE_KEY" ;;
            --system-site-packages) SYSTEM_SITE=1; shift ;;
            --deps) need_value "$@"; DEPS=$2; shift 2 ;;
            --deps=*) DEPS=${1#*=}; shift ;;
            --user) need_value "$@"; SERVICE_USER=$2; shift 2 ;;
            --user=*) SERVICE_USER=${1#*=}; shift ;;
            --no-self-check) SELF_CHECK=0; shift ;;
            --no-apt) DO_APT=0; shift ;;
            --no-user) DO_USER=0; shift ;;
            --no-service) DO_SERVICE=0; shift ;;
            --uninstall) UNINSTALL=1; shift ;;
            --purge) PURGE=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option '$1' (see --help)" ;;
        esac
    done
    [ "$PURGE" -eq 0 ] || [ "$UNINSTALL" -eq 1 ] || die "--purge only goes with --uninstall"
    case "$DEPS" in
        auto|wheels) ;;
        debian|debian-packages) DEPS=debian-packages ;;
        *) die "--deps must be auto, wheels or debian, not '$DEPS'" ;;
    esac
    case "$SERVICE_USER" in
        [a-z_]*) ;;
        *) die "--user: '$SERVICE_USER' is not a valid user name" ;;
    esac
    case "$SERVICE_USER" in
        *[!a-z0-9_-]*) die "--user: '$SERVICE_USER' is not a valid user name" ;;
    esac
    for dir in "$PREFIX" "$ETC" "$UNIT_DIR"; do
        case "$dir" in
            /*) ;;
            *) die "paths must be absolute: '$dir'" ;;
        esac
        [ "$dir" != / ] || die "refusing to use / as an install directory"
    done
    case "$PREFIX$ETC$UNIT_DIR$BIN_DIR" in
        *$'\n'*|*'#'*|*'"'*|*\\*) die "paths must not contain newlines, '#', '\"' or '\\'" ;;
    esac
}

systemd_running() {
    # sd_booted(): systemd is PID 1 exactly when this directory exists.
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

service_owner() {
    if [ "$DO_USER" -eq 1 ]; then
        printf '%s:%s' "$SERVICE_USER" "$SERVICE_USER"
    else
        printf '%s:%s' "$(id -un)" "$(id -gn)"
    fi
}

sed_escape() {
    # For the replacement side of s#...#...#: escape backslash, ampersand and the delimiter.
    printf '%s' "$1" | sed -e 's/[\\&#]/\\&/g'
}

is_venv() {
    [ -f "$1/pyvenv.cfg" ]
}

# --- install steps -----------------------------------------------------------------------

check_privileges() {
    if [ "$(id -u)" -ne 0 ]; then
        [ "$DO_APT" -eq 0 ] || die "apt-get needs root: run with sudo, or pass --no-apt"
        [ "$DO_USER" -eq 0 ] || die "creating the '$SERVICE_USER' user needs root: run with sudo, or pass --no-user"
    fi
}

deb_arch() {
    # The userland's architecture (a 32-bit Raspberry Pi OS often runs a 64-bit kernel, so
    # uname -m would say aarch64 there).
    if command -v dpkg >/dev/null 2>&1; then
        dpkg --print-architecture
        return
    fi
    case "$(uname -m)" in
        x86_64) echo amd64 ;;
        aarch64|arm64) echo arm64 ;;
        armv7l|armv6l) echo armhf ;;
        *) uname -m ;;
    esac
}

choose_deps() {
    ARCH=$(deb_arch)
    if [ "$DEPS" = auto ]; then
        case "$ARCH" in
            amd64|arm64)
                DEPS=wheels
                DEPS_REASON="auto: PyPI has wheels for $ARCH" ;;
            *)
                DEPS=debian-packages
                DEPS_REASON="auto: PyPI has no $ARCH wheels for numpy, pygame or PyAudio (building them takes over 20 minutes on a Pi); Debian's packages instead" ;;
        esac
    else
        DEPS_REASON="--deps $DEPS"
    fi
    APT_PACKAGES=("${APT_BASE[@]}")
    if [ "$DEPS" = wheels ]; then
        APT_PACKAGES+=("${APT_WHEELS[@]}")
    else
        APT_PACKAGES+=("${APT_DEBIAN[@]}")
        SYSTEM_SITE=1           # the venv sees Debian's python3-* packages
    fi
    step "dependencies: $DEPS on $ARCH ($DEPS_REASON)"
}

apt_has() {   # apt_has PACKAGE: the configured archives offer it (e.g. Raspberry Pi OS's)
    apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'
}

deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_packages() {
    if [ "$DO_APT" -eq 0 ]; then
        step "skipping system packages (--no-apt)"
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${APT_PACKAGES[*]} yourself and pass --no-apt"
    export DEBIAN_FRONTEND=noninteractive
    local missing=() pkg updated=0
    for pkg in "${APT_PACKAGES[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -q
        updated=1
    fi
    if [ "$DEPS" = debian-packages ] && apt_has python3-lgpio; then
        step "Raspberry Pi OS archive: gpiozero and lgpio from it (${APT_PI[*]})"
        for pkg in "${APT_PI[@]}"; do
            deb_installed "$pkg" || missing+=("$pkg")
        done
    fi
    if [ "${#missing[@]}" -eq 0 ]; then
        step "system packages already installed: ${APT_PACKAGES[*]}"
        return
    fi
    step "installing system packages: ${missing[*]}"
    [ "$updated" -eq 1 ] || apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

create_user() {
    if [ "$DO_USER" -eq 0 ]; then
        step "skipping the service user (--no-user): running as $(id -un)"
        return
    fi
    local group
    for group in "${SERVICE_GROUPS[@]}"; do
        if ! getent group "$group" >/dev/null; then
            step "creating group $group"
            groupadd --system "$group"
        fi
    done
    local joined
    joined=$(IFS=,; printf '%s' "${SERVICE_GROUPS[*]}")
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        step "user $SERVICE_USER exists; making sure it is in groups $joined"
        usermod -a -G "$joined" "$SERVICE_USER"
    else
        step "creating system user $SERVICE_USER (groups $joined)"
        useradd --system --user-group --groups "$joined" --home-dir /nonexistent \
            --no-create-home --shell /usr/sbin/nologin --comment "soca-appliance service" \
            "$SERVICE_USER"
    fi
}

create_venv() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$PYTHON is not Python 3.11 or newer (use --python PATH)"
    if [ -e "$PREFIX" ] && ! is_venv "$PREFIX"; then
        if [ -n "$(ls -A "$PREFIX" 2>/dev/null)" ]; then
            die "$PREFIX exists and is not a virtualenv; choose another --prefix"
        fi
    fi
    if is_venv "$PREFIX" && ! "$PREFIX/bin/python" -c 'import sys' >/dev/null 2>&1; then
        step "virtualenv $PREFIX is broken (Python upgraded?): recreating it"
        rm -rf -- "$PREFIX"
    fi
    local site=false
    [ "$SYSTEM_SITE" -eq 0 ] || site=true
    if is_venv "$PREFIX"; then
        step "virtualenv $PREFIX exists (system site-packages: $site)"
        sed -i -e "s/^include-system-site-packages = .*/include-system-site-packages = $site/" \
            "$PREFIX/pyvenv.cfg"
    else
        step "creating virtualenv $PREFIX (system site-packages: $site)"
        local venv_args=()
        [ "$SYSTEM_SITE" -eq 0 ] || venv_args+=(--system-site-packages)
        "$PYTHON" -m venv "${venv_args[@]}" "$PREFIX"
    fi
}

install_project() {
    local pip_extra=()
    [ -z "$PIP_ARGS" ] || read -r -a pip_extra <<<"$PIP_ARGS"
    # Build from a clean copy: the checkout stays untouched (no build/ or egg-info in it) and
    # may belong to another user.
    local src
    src=$(mktemp -d "${TMPDIR:-/tmp}/soca-install.XXXXXX")
    # shellcheck disable=SC2064  # expand now: $src is local
    trap "rm -rf -- '$src'" EXIT
    tar -C "$SRC_DIR" --exclude=.git --exclude=build --exclude=dist --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.venv --exclude=.pytest_cache --exclude=.hypothesis \
        -cf - . | tar -C "$src" -xf -
    local pip=("$PREFIX/bin/python" -m pip install --disable-pip-version-check --no-input)
    if [ "$DEPS" = wheels ]; then
        step "installing $APP from $SRC_DIR into $PREFIX${PIP_ARGS:+ (pip args: $PIP_ARGS)}"
        "${pip[@]}" "${pip_extra[@]}" "$src"
    else
        step "installing $APP from $SRC_DIR into $PREFIX without its dependencies${PIP_ARGS:+ (pip args: $PIP_ARGS)}"
        "${pip[@]}" "${pip_extra[@]}" --no-deps "$src"
        case " $PIP_ARGS " in
            *" --no-deps "*) step "not installing dependencies (--no-deps in --pip-args)" ;;
            *) install_rest_from_pypi ;;
        esac
    fi
    rm -rf -- "$src"
    trap - EXIT
    if "$PREFIX/bin/python" -c 'import lgpio' >/dev/null 2>&1; then
        step "lgpio is there (gpiozero's pin factory on Bookworm and the Pi 5)"
    elif grep -qa "Raspberry Pi" /proc/device-tree/model 2>/dev/null; then
        step "Raspberry Pi: installing lgpio (gpiozero's pin factory on Bookworm and the Pi 5)"
        "$PREFIX/bin/python" -m pip install --disable-pip-version-check --no-input \
            "${pip_extra[@]}" lgpio \
            || warn "lgpio did not install: gpiozero falls back to another pin factory, or none"
    fi
    install -m 0644 "$SRC_DIR/README.md" "$PREFIX/README.md"
    "$PREFIX/bin/soca-appliance" --version >/dev/null || die "the installed soca-appliance does not run"
    write_install_path
    self_check
}

install_rest_from_pypi() {
    # The project's requirements less those Debian's packages provide (taken as they are:
    # Debian's pygame is older than setup.py asks, and the self-check below proves that it
    # does what the appliance needs); pip skips whatever is already satisfied.
    local reqs=()
    mapfile -t reqs < <(DEBIAN_DISTS="${DEBIAN_DISTS[*]}" "$PREFIX/bin/python" - <<'PY'
import importlib.metadata as md
import os
import re

debian = set(os.environ["DEBIAN_DISTS"].split())
missing = []
for req in md.requires("soca-appliance") or []:
    if "extra ==" in req:
        continue
    name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")
    if name in debian:
        try:
            md.version(name)
        except md.PackageNotFoundError:
            missing.append(name)
        continue
    print(req)                          # markers kept: pip evaluates them
if missing:
    print("MISSING " + " ".join(missing))
PY
    )
    case " ${reqs[*]} " in
        *" MISSING "*) die "Debian's python3-numpy, python3-pygame and python3-pyaudio are needed for --deps debian (${reqs[*]##* MISSING }): install them, or drop --no-apt" ;;
    esac
    [ "${#reqs[@]}" -gt 0 ] || return 0
    step "installing from PyPI what Debian does not provide: ${reqs[*]}"
    "$PREFIX/bin/python" -m pip install --disable-pip-version-check --no-input \
        "${pip_extra[@]}" "${reqs[@]}"
}

write_install_path() {
    # One file that says where every dependency came from; soca-diag reads it.
    local target="$PREFIX/INSTALL_PATH"
    step "writing $target"
    INSTALL_DEPS=$DEPS INSTALL_REASON=$DEPS_REASON INSTALL_ARCH=$ARCH \
        "$PREFIX/bin/python" - "$target" <<'PY' || die "could not write $target"
import importlib.metadata as md
import os
import re
import subprocess
import sys
import time


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root):
    seen, todo = {}, [root]
    while todo:
        req = todo.pop()
        name = norm(re.match(r"[A-Za-z0-9._-]+", req).group(0))
        if name in seen:
            continue
        try:
            seen[name] = md.distribution(name)
        except md.PackageNotFoundError:
            if ";" not in req:          # not merely left out by a marker (python_version...)
                seen[name] = None
            continue
        todo += [r for r in seen[name].requires or [] if "extra ==" not in r]
    return seen


def debian_owner(dist):
    # Debian ships .egg-info metadata without a file list: ask dpkg who owns the metadata.
    meta = getattr(dist, "_path", None)
    files = [f for f in (dist.files or []) if f.suffix in (".py", ".so")]
    target = str(meta) if meta is not None else (str(dist.locate_file(files[0])) if files else "")
    if not target:
        return ""
    try:
        out = subprocess.run(["dpkg", "-S", target], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.split(":", 1)[0].strip() if out else ""


def origin(name, dist):
    if dist is None:
        return "missing"
    where = os.path.realpath(str(dist.locate_file("")))
    if not where.startswith(os.path.realpath(sys.prefix) + os.sep):
        owner = debian_owner(dist) if where.startswith("/usr/lib/python3") else ""
        kind = "debian-packages" if owner else "system"
        return f"{kind} {dist.version} {owner or where}"
    if name == "soca-appliance":
        return f"source {dist.version} this checkout"
    wheel = dist.read_text("WHEEL")
    if wheel is None:                   # pip's legacy "setup.py install": built from source
        return f"source {dist.version} built here"
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines()
            if line.startswith("Tag:")]
    built_here = any(t.rsplit("-", 1)[-1].startswith("linux_") for t in tags)
    return f"source {dist.version} built here" if built_here else f"wheels {dist.version}"


deps = closure("soca-appliance")
try:
    deps.setdefault("lgpio", md.distribution("lgpio"))
except md.PackageNotFoundError:
    pass
lines = [
    "# Where soca-appliance's Python dependencies came from (written by install.sh).",
    "# path= wheels | debian-packages; then NAME=ORIGIN VERSION [DETAIL] per distribution,",
    "# ORIGIN one of wheels, debian-packages, source, system.",
    f"path={os.environ['INSTALL_DEPS']}",
    f"reason={os.environ['INSTALL_REASON']}",
    f"arch={os.environ['INSTALL_ARCH']}",
    f"python={sys.version.split()[0]} {getattr(sys, '_base_executable', sys.executable)}",
    f"date={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
]
lines += [f"{name}={origin(name, deps[name])}" for name in sorted(deps)]
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
os.chmod(tmp, 0o644)
os.replace(tmp, sys.argv[1])
print("\n".join("    " + line for line in lines[3:]))
PY
}

self_check() {
    # The features the appliance needs, on whatever pygame this path gave: MP3 decoding
    # from memory, raw PCM sounds and a channel's gapless queue (SDL's silent dummy driver,
    # so it needs no sound card and plays nothing).
    if [ "$SELF_CHECK" -eq 0 ]; then
        step "skipping the self-check (--no-self-check)"
        return
    fi
    step "self-check: every module imports; pygame decodes MP3 and queues sound (SDL dummy driver)"
    SDL_AUDIODRIVER=dummy PYGAME_HIDE_SUPPORT_PROMPT=1 "$PREFIX/bin/python" - <<'PY' \
        || die "the self-check failed: the appliance would not play sound (see above)"
import importlib
import io
import sys
import time
from importlib import resources

failed = []
for module in ("numpy", "pyaudio", "webrtcvad", "soxr", "gpiozero", "websocket",
               "websockets", "pygame", "soca_appliance.cli"):
    try:
        importlib.import_module(module)
    except Exception as exc:          # report every broken module, not only the first
        failed.append(f"{module}: {type(exc).__name__}: {exc}")
if failed:
    sys.exit("    cannot import " + "; ".join(failed))

import pygame

try:
    pygame.mixer.init(frequency=22050, size=-16, channels=1, buffer=512)
except (pygame.error, NotImplementedError) as exc:
    sys.exit(f"    pygame.mixer does not work: {type(exc).__name__}: {exc}"
             " (is libglib2.0-0 installed? pygame's wheel needs libgthread-2.0.so.0)")
freq, _size, channels = pygame.mixer.get_init()
assets = resources.files("soca_appliance") / "assets"
mp3s = sorted(p.name for p in assets.iterdir() if p.name.endswith(".mp3"))[:2]
if len(mp3s) < 2:
    sys.exit("    fewer than two bundled MP3s to decode")
decoded = []
for name in mp3s:
    try:
        sound = pygame.mixer.Sound(file=io.BytesIO((assets / name).read_bytes()))
    except pygame.error as exc:
        sys.exit(f"    pygame cannot decode MP3 ({name}): {exc}")
    raw = sound.get_raw()
    if len(raw) < freq * 2 * channels // 10:
        sys.exit(f"    {name} decoded to only {len(raw)} bytes")
    decoded.append(raw)
channel = pygame.mixer.Channel(0)
channel.play(pygame.mixer.Sound(buffer=decoded[0]))
channel.queue(pygame.mixer.Sound(buffer=decoded[1]))
if channel.get_queue() is None:
    sys.exit("    the mixer channel did not take a queued sound")
deadline = time.monotonic() + 60          # the dummy driver plays in real time
while channel.get_queue() is not None and time.monotonic() < deadline:
    time.sleep(0.05)
if channel.get_queue() is not None:
    sys.exit("    the queued sound never started")
channel.stop()
pygame.mixer.quit()
secs = [len(r) / (2 * channels * freq) for r in decoded]
sdl = ".".join(map(str, pygame.get_sdl_version()))
print(f"    pygame {pygame.version.ver} (SDL {sdl}): {mp3s[0]} and {mp3s[1]} decoded"
      f" ({secs[0]:.1f} s, {secs[1]:.1f} s), queued on one channel, the second started"
      " after the first")
PY
}

link_commands() {
    if [ -z "$BIN_DIR" ]; then
        step "not linking commands (--bin-dir '')"
        return
    fi
    step "linking soca-diag and soca-appliance into $BIN_DIR"
    mkdir -p "$BIN_DIR"
    ln -sfn "$PREFIX/bin/soca-diag" "$BIN_DIR/soca-diag"
    ln -sfn "$PREFIX/bin/soca-appliance" "$BIN_DIR/soca-appliance"
}

write_config() {
    mkdir -p "$ETC"
    chmod 0755 "$ETC"
    local target="$ETC/config.toml"
    if [ -e "$target" ]; then
        step "keeping existing $target"
        return
    fi
    step "writing $target from etc/config.example.toml (edit agent_id before starting)"
    local tmp
    tmp=$(mktemp "$ETC/.config.toml.XXXXXX")
    sed -e "s#$DEFAULT_ETC/#$(sed_escape "$ETC")/#g" "$SRC_DIR/etc/config.example.toml" >"$tmp"
    chmod 0644 "$tmp"
    mv -f -- "$tmp" "$target"
}

trim() {
    local text=$1
    text=${text//$'\r'/}
    text=${text//$'\n'/}
    text=${text#"${text%%[![:space:]]*}"}
    text=${text%"${text##*[![:space:]]}"}
    printf '%s' "$text"
}

write_key() {
    local target="$ETC/key" key="" owner
    owner=$(service_owner)
    if [ -n "$KEY_FILE" ]; then
        [ -r "$KEY_FILE" ] || die "cannot read key file $KEY_FILE"
        key=$(trim "$(<"$KEY_FILE")")
        [ -n "$key" ] || die "key file $KEY_FILE is empty"
        step "writing the key from $KEY_FILE to $target"
    elif [ -n "${SOCA_PRIVATE_KEY:-}" ]; then
        key=$(trim "$SOCA_PRIVATE_KEY")
        step "writing the key from SOCA_PRIVATE_KEY to $target"
    elif [ -e "$target" ]; then
        step "keeping existing key $target (owner $owner, mode 0600)"
        chown "$owner" "$target"
        chmod 0600 "$target"
        return
    elif [ -t 0 ]; then
        printf 'Soca AI private key (input hidden; empty to skip): ' >&2
        IFS= read -r -s key || key=""
        printf '\n' >&2
        key=$(trim "$key")
        if [ -z "$key" ]; then
            warn "no key entered: write it to $target later (mode 0600, owner $owner)"
            return
        fi
        step "writing the key to $target"
    else
        warn "no key given (--key-file or SOCA_PRIVATE_KEY): write it to $target later (mode 0600, owner $owner)"
        return
    fi
    local tmp
    tmp=$(mktemp "$ETC/.key.XXXXXX")        # created 0600
    printf '%s\n' "$key" >"$tmp"
    chown "$owner" "$tmp"
    chmod 0600 "$tmp"
    mv -f -- "$tmp" "$target"
}

render_unit() {
    local user group groups=() g
    if [ "$DO_USER" -eq 1 ]; then
        user=$SERVICE_USER
        group=$SERVICE_USER
    else
        user=$(id -un)
        group=$(id -gn)
    fi
    for g in "${SERVICE_GROUPS[@]}"; do
        if getent group "$g" >/dev/null; then groups+=("$g"); fi
    done
    sed -e "s#$DEFAULT_PREFIX#$(sed_escape "$PREFIX")#g" \
        -e "s#$DEFAULT_ETC#$(sed_escape "$ETC")#g" \
        -e "s#^User=.*#User=$(sed_escape "$user")#" \
        -e "s#^Group=.*#Group=$(sed_escape "$group")#" \
        -e "s#^SupplementaryGroups=.*#SupplementaryGroups=${groups[*]}#" \
        "$SRC_DIR/etc/$APP.service" | sed -e '/^SupplementaryGroups=$/d'
}

install_service() {
    if [ "$DO_SERVICE" -eq 0 ]; then
        step "skipping the systemd unit (--no-service)"
        return
    fi
    local target="$UNIT_DIR/$APP.service" tmp
    step "installing $target"
    mkdir -p "$UNIT_DIR"
    tmp=$(mktemp "$UNIT_DIR/.$APP.service.XXXXXX")
    render_unit >"$tmp"
    chmod 0644 "$tmp"
    mv -f -- "$tmp" "$target"
    if ! systemd_running; then
        step "systemd is not running (not PID 1): unit installed, not enabled"
        return
    fi
    systemctl daemon-reload
    step "enabling $APP.service (starts at boot)"
    systemctl enable "$APP.service" >/dev/null
    if systemctl is-active --quiet "$APP.service"; then
        step "restarting the running service on the new version"
        systemctl restart "$APP.service"
    fi
}

finish() {
    step "done"
    cat <<EOF
Next:
  1. set agent_id (and the url if not the default) in $ETC/config.toml
  2. put the private key in $ETC/key if it is not there yet (mode 0600, owner $(service_owner))
  3. check the kiosk:   sudo $PREFIX/bin/soca-diag
  4. start it:          sudo systemctl start $APP    (it also starts at every boot)
EOF
}

# --- uninstall ---------------------------------------------------------------------------

uninstall() {
    local unit="$UNIT_DIR/$APP.service"
    if systemd_running && [ "$DO_SERVICE" -eq 1 ]; then
        if systemctl list-unit-files "$APP.service" >/dev/null 2>&1; then
            step "stopping and disabling $APP.service"
            systemctl disable --now "$APP.service" >/dev/null 2>&1 || true
        fi
    fi
    if [ -e "$unit" ]; then
        step "removing $unit"
        rm -f -- "$unit"
        if systemd_running; then systemctl daemon-reload; fi
    else
        step "no unit at $unit"
    fi
    local name
    if [ -n "$BIN_DIR" ]; then
        for name in soca-diag soca-appliance; do
            if [ -L "$BIN_DIR/$name" ] && [ "$(readlink "$BIN_DIR/$name")" = "$PREFIX/bin/$name" ]; then
                step "removing link $BIN_DIR/$name"
                rm -f -- "$BIN_DIR/$name"
            fi
        done
    fi
    if is_venv "$PREFIX"; then
        step "removing virtualenv $PREFIX"
        rm -rf -- "$PREFIX"
    elif [ -e "$PREFIX" ]; then
        warn "$PREFIX is not a virtualenv: left alone"
    else
        step "no virtualenv at $PREFIX"
    fi
    if [ "$DO_USER" -eq 1 ] && id -u "$SERVICE_USER" >/dev/null 2>&1; then
        # userdel frees the uid and the next system user created gets it: nothing may stay
        # owned by it. The kept key (and anything else of the user's under $ETC) goes to root.
        if [ "$PURGE" -eq 0 ] && [ -d "$ETC" ]; then
            local owned
            owned=$(find "$ETC" -xdev \( -user "$SERVICE_USER" -o -group "$SERVICE_USER" \) -print)
            if [ -n "$owned" ]; then
                step "handing $ETC's files of $SERVICE_USER to root (the key stays mode 0600)"
                find "$ETC" -xdev \( -user "$SERVICE_USER" -o -group "$SERVICE_USER" \) \
                    -exec chown -h root:root {} +
            fi
        fi
        step "removing user $SERVICE_USER"
        userdel "$SERVICE_USER"
    fi
    if [ "$PURGE" -eq 1 ]; then
        step "purging $ETC/config.toml and $ETC/key"
        rm -f -- "$ETC/config.toml" "$ETC/key"
        rmdir -- "$ETC" 2>/dev/null || true
    else
        step "keeping $ETC/config.toml and $ETC/key (--purge deletes them)"
    fi
    step "uninstalled"
}

main() {
    parse_args "$@"
    if [ "$UNINSTALL" -eq 1 ]; then
        if [ "$(id -u)" -ne 0 ] && [ "$DO_USER" -eq 1 ]; then
            die "removing the '$SERVICE_USER' user needs root: run with sudo, or pass --no-user"
        fi
        uninstall
        return
    fi
    check_privileges
    choose_deps
    install_packages
    create_user
    create_venv
    install_project
    link_commands
    write_config
    write_key
    install_service
    finish
}

main "$@"
